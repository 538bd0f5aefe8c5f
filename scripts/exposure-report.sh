#!/usr/bin/env bash
# Where a credential lives, by delivery mode: runs the end-to-end tests that scan real
# process memory (/proc/<pid>/mem) for a random canary credential and prints their findings
# as the markdown table docs/daemon.md quotes. Needs the Python venv scripts/test.sh creates.
set -euo pipefail
cd "$(dirname "$0")/.."
export AGENTKEYS_TEST_PYTHON="${AGENTKEYS_TEST_PYTHON:-$PWD/target/pyenv/bin/python}"
[ -x "$AGENTKEYS_TEST_PYTHON" ] || { echo "error: run 'bash scripts/test.sh' once first (it creates target/pyenv)" >&2; exit 2; }
cargo build --quiet --workspace --all-targets
out=$(cargo test --quiet -p agentkeys-daemon --test daemon -- --nocapture --test-threads 1 \
  delivery:: run::the_cli_never hardening::a_running_daemon 2>&1) || { echo "$out" >&2; exit 1; }
echo "| finding (one line per scan, from the tests' own output) |"
echo "|---|"
echo "$out" | grep -o 'scan: .*' | sed -e 's/^scan: //' -e 's/; /\n/g' | sed -e 's/^/| /' -e 's/$/ |/'
