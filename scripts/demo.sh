#!/usr/bin/env bash
# The main job end to end: build, start agentkeys-server in --dev mode on a free port,
# run the quickstart against it (session, store, read, pairing, scope, high-value
# approval, audit, revocation), then the same story through the master CLI `agentkeys`,
# then "give an agent a credential": a daemon in its own home pairs, the master approves,
# and an MCP client gets the credential through the daemon. Then everything stops.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "building agentkeys-server, the agentkeys CLI and the quickstart (the first build takes a few minutes on 2 cores)..." >&2
cargo build -p agentkeys-server -p agentkeys-cli -p agentkeys-daemon -p agentkeys-core --example quickstart
log=$(mktemp)
./target/debug/agentkeys-server --dev --listen 127.0.0.1:0 >"$log.out" 2>"$log" &
server=$!
home=$(mktemp -d)
agent_home=$(mktemp -d)
daemon=
cleanup() {
  [ -n "$daemon" ] && { kill $daemon 2>/dev/null; wait $daemon 2>/dev/null; }
  AGENTKEYS_HOME="$home" ./target/debug/agentkeys revoke >/dev/null 2>&1 || true
  kill $server 2>/dev/null; wait $server 2>/dev/null
  rm -rf "$log" "$log.out" "$log.daemon" "$home" "$agent_home"
}
trap cleanup EXIT
for _ in $(seq 1 200); do
  grep -q '^export AGENTKEYS_SERVER=' "$log.out" 2>/dev/null && break
  kill -0 $server 2>/dev/null || { cat "$log" >&2; exit 1; }
  sleep 0.05
done
line=$(grep '^export AGENTKEYS_SERVER=' "$log.out") || { echo "server did not start" >&2; cat "$log" >&2; exit 1; }
echo "$line"
eval "$line"
./target/debug/examples/quickstart

echo
echo "== the master CLI tour (AGENTKEYS_HOME=$home) =="
export AGENTKEYS_HOME="$home"
ak() { echo "\$ agentkeys $*" >&2; ./target/debug/agentkeys "$@"; }
AGENTKEYS_AUTH_TOKEN=demo-enrolment ak init
ak init
ak whoami
printf %s "sk-demo-$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')" | ak store openai
echo "\$ agentkeys read openai | wc -c" >&2
./target/debug/agentkeys read openai | wc -c
ak policy openai --high-value
set +e
ak read openai 2>"$log.approval"; rc=$?
set -e
cat "$log.approval" >&2
[ "$rc" = 5 ] || { echo "expected exit 5 (approval required), got $rc" >&2; exit 1; }
code=$(grep -o "approve [A-Z0-9]*-[A-Z0-9]*" "$log.approval" | head -1 | cut -d' ' -f2)
ak approve "$code" --yes
echo "\$ agentkeys read openai --wait 30 | wc -c" >&2
./target/debug/agentkeys read openai --wait 30 | wc -c
ak list
ak usage --limit 8
ak usage --verify
ak revoke
rm -f "$log.approval"

echo
echo "== give an agent a credential =="
step() { echo; echo "-- $*" >&2; }
step "1. a master initializes and stores a credential"
AGENTKEYS_AUTH_TOKEN=demo-agent-owner ak init
printf %s "sk-agent-$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')" | ak store openai
step "2. the daemon starts in the agent's sandbox (its own AGENTKEYS_HOME) and asks to pair"
export AGENTKEYS_SOCKET="$agent_home/run/daemon.sock"
AGENTKEYS_HOME="$agent_home" ./target/debug/agentkeys-daemon serve 2>"$log.daemon" &
daemon=$!
for _ in $(seq 1 200); do grep -q "approve with" "$log.daemon" && break; sleep 0.05; done
cat "$log.daemon" >&2
code=$(grep -o "approve [A-Z0-9]*-[A-Z0-9]*" "$log.daemon" | head -1 | cut -d' ' -f2)
step "3. the master compares the OTP and approves, with scope openai"
ak approve "$code" --scope openai --yes
for _ in $(seq 1 200); do grep -q "serving agent" "$log.daemon" && break; sleep 0.05; done
grep "serving agent" "$log.daemon" >&2
step "4. an MCP client (the agent) connects through 'agentkeys-daemon mcp'"
echo "openai github" | python3 scripts/mcp-demo-client.py ./target/debug/agentkeys-daemon mcp
step "5. the agent runs a command through the daemon: 'agentkeys run' never holds the key"
echo "\$ agentkeys run --service openai -- sh -c 'echo \"OPENAI_API_KEY: \${#OPENAI_API_KEY} characters\"; exit 3'" >&2
set +e
AGENTKEYS_HOME="$agent_home" ./target/debug/agentkeys run --service openai -- \
  sh -c 'echo "OPENAI_API_KEY: ${#OPENAI_API_KEY} characters"; exit 3'
rc=$?
set -e
[ "$rc" = 3 ] || { echo "expected the command's exit status 3, got $rc" >&2; exit 1; }
echo "(exit status $rc passed through)" >&2
step "6. a Python agent gets it as a memfd_secret fd (clients/python, stdlib only), used in place and wiped"
PYTHONPATH=clients/python python3 - <<'PY'
from agentkeys_runtime import Client
with Client() as client:
    cred = client.get_credential("openai")
    print(f"received openai as a {cred.kind} fd, {cred.length} bytes")
    with cred as key:
        print(f"used in place: {len(key)} bytes, never copied into a Python string")
print("after the block: mapping zeroed, unmapped, fd closed")
PY
step "7. the daemon's status and its audit trail (fetch, deliver, drop; never the value)"
AGENTKEYS_HOME="$agent_home" ./target/debug/agentkeys-daemon status
AGENTKEYS_HOME="$agent_home" ./target/debug/agentkeys-daemon audit | tail -8
AGENTKEYS_HOME="$agent_home" ./target/debug/agentkeys-daemon audit --verify
step "8. SIGTERM: the daemon wipes what it holds and stops"
kill -TERM $daemon; wait $daemon; daemon=
tail -1 "$log.daemon" >&2
echo "demo: OK" >&2
