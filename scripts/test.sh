#!/usr/bin/env bash
# The whole test suite: the module layering check, the Python managed runtime's pytest
# suite, then every Rust test
# (unit tests and the end-to-end tests that start the real binaries), the server's
# integration suite a second time on PostgreSQL, the OpenAPI document through a validator,
# then the independent Python client
# written from docs/api.md. Extra arguments go to 'cargo test' (e.g. --locked, or a test
# name filter).
#
# A throwaway PostgreSQL (scripts/pg-throwaway.sh: Debian's postgresql package, a cluster
# in a temp dir on a free port) serves the PostgreSQL engine's tests and is stopped and
# deleted at the end, even when a test fails. Without PostgreSQL the run fails.
#
# scripts/setup.sh installs what the tests need, once: the Debian packages (PostgreSQL,
# Chromium, strace, checksec …), a private venv (target/pyenv) holding pytest, dbus-next (a
# stand-in desktop notification server for 'agentkeys watch'), the official MCP Python SDK,
# which the end-to-end tests drive the daemon with, and the official openai and anthropic
# SDKs, httpx, requests and websockets, which the egress proxy tests run unmodified; the MCP
# Inspector CLI in target/npm and playwright-core (for tests/browser, driving Debian's
# chromium) in target/browser. All pinned.
set -euo pipefail
cd "$(dirname "$0")/.."

# Everything the tests need (Debian packages, the venv, the npm packages), once.
bash scripts/setup.sh
export AGENTKEYS_TEST_PYTHON="$PWD/target/pyenv/bin/python"

echo "== module layers: no import circle in any crate (scripts/check-layers.py)" >&2
"$AGENTKEYS_TEST_PYTHON" scripts/check-layers.py

echo "== throwaway PostgreSQL (scripts/pg-throwaway.sh)" >&2
pg_env=$(bash scripts/pg-throwaway.sh)
eval "$pg_env"
trap 'bash scripts/pg-throwaway.sh stop "$AGENTKEYS_TEST_PG_DIR"' EXIT
echo "listening at ${AGENTKEYS_TEST_DATABASE_URL#*@}" >&2

echo "== Python managed runtime (pytest)" >&2
(cd clients/python && PYTHONDONTWRITEBYTECODE=1 "$AGENTKEYS_TEST_PYTHON" -m pytest -q -rs -p no:cacheprovider tests)

echo "== Rust workspace (cargo test --workspace)" >&2
cargo test --workspace "$@"

echo "== the server's integration suite again, on PostgreSQL" >&2
# (the replica and tool suites pick their engines themselves: once is enough). The binary
# the workspace run just built, run again: 'cargo test -p agentkeys-server' would resolve
# features for that package alone and rebuild most of the tree (~5 minutes on 2 cores).
server_suite=$(cargo test --workspace --no-run --message-format=json "$@" 2>/dev/null | "$AGENTKEYS_TEST_PYTHON" -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    t = m.get("target") or {}
    if m.get("reason") == "compiler-artifact" and t.get("kind") == ["test"] and t.get("name") == "server" and m.get("executable"):
        print(m["executable"])
')
[ -x "$server_suite" ] || { echo "error: the server's test binary was not found (cargo test --no-run)" >&2; exit 1; }
(cd crates/agentkeys-server && AGENTKEYS_TEST_ENGINE=postgres "$server_suite" --skip replicas --skip tools)

echo "== passkey approvals in a real browser (chromium, virtual authenticator)" >&2
node tests/browser/passkey-approval.mjs

echo "== the server's OpenAPI document (openapi-spec-validator)" >&2
target/debug/agentkeys-server openapi >target/openapi.json
"$AGENTKEYS_TEST_PYTHON" -m openapi_spec_validator target/openapi.json

# Written from docs/api.md alone, against the server binary cargo just built: proves the
# document is enough to write a client.
echo "== independent client (clients/independent, from docs/api.md)" >&2
AGENTKEYS_SERVER_BIN="$PWD/target/debug/agentkeys-server" PYTHONDONTWRITEBYTECODE=1 \
  "$AGENTKEYS_TEST_PYTHON" -m pytest -q -rs -p no:cacheprovider clients/independent
