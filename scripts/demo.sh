#!/usr/bin/env bash
# The main job end to end: build, start agentkeys-server in --dev mode on a free port,
# run the quickstart against it (session, store, read, pairing, scope, high-value
# approval, audit, revocation), then the same story through the master CLI `agentkeys`,
# then "give an agent a credential": a daemon in its own home pairs, the master approves,
# and an MCP client gets the credential through the daemon. Run as root, the daemon and the
# agent each get a system user of their own (created for the demo, removed at the end), as
# docs/daemon.md recommends. Then everything stops.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --demo   # the few Debian packages the demo uses, if missing
echo "building agentkeys-server, the agentkeys CLI and the quickstart (the first build takes a few minutes on 2 cores)..." >&2
cargo build -p agentkeys-server -p agentkeys-cli -p agentkeys-daemon -p agentkeys-core --example quickstart
log=$(mktemp)
./target/debug/agentkeys-server --dev --listen 127.0.0.1:0 >"$log.out" 2>"$log" &
server=$!
home=$(mktemp -d)
agent_home=$(mktemp -d)
daemon=
created_users=()
shared=
sock_dir=
cleanup() {
  [ -n "$daemon" ] && { kill $daemon 2>/dev/null; wait $daemon 2>/dev/null; }
  AGENTKEYS_HOME="$home" ./target/debug/agentkeys revoke >/dev/null 2>&1 || true
  kill $server 2>/dev/null; wait $server 2>/dev/null
  rm -rf "$log" "$log.out" "$log.daemon" "$home" "$agent_home" ${shared:+"$shared"} ${sock_dir:+"$sock_dir"}
  for u in "${created_users[@]}"; do userdel "$u" 2>/dev/null || true; done
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
# The deployment docs/daemon.md recommends: the daemon under a uid of its own, the agent
# under another, the master (this shell) under a third. Any process of the daemon's uid
# could open the session it keeps; any process of the master's uid, the master session.
as_daemon=()
as_agent=()
bin="$PWD/target/debug"
pydir="$PWD/clients/python"
demo_client="$PWD/scripts/mcp-demo-client.py"
daemon_home="$agent_home"
socket="$agent_home/run/daemon.sock"
serve_args=(--ephemeral)
if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null && command -v useradd >/dev/null; then
  for u in agentkeys-demo-daemon agentkeys-demo-agent; do
    if ! id "$u" >/dev/null 2>&1; then
      useradd --system --no-create-home --shell /usr/sbin/nologin "$u"
      created_users+=("$u")
    fi
  done
  # Copies both users can read (the checkout may sit under a private home).
  shared=$(mktemp -d); chmod 755 "$shared"
  cp target/debug/agentkeys target/debug/agentkeys-daemon scripts/mcp-demo-client.py "$shared/"
  cp -r clients/python "$shared/python"
  chmod -R a+rX "$shared"
  bin="$shared"; pydir="$shared/python"; demo_client="$shared/mcp-demo-client.py"
  chown agentkeys-demo-daemon: "$daemon_home"; chmod 700 "$daemon_home"
  sock_dir=$(mktemp -d); chown agentkeys-demo-daemon: "$sock_dir"
  socket="$sock_dir/daemon.sock"
  agent_uid=$(id -u agentkeys-demo-agent)
  as_daemon=(setpriv --reuid=agentkeys-demo-daemon --regid=agentkeys-demo-daemon --init-groups
             --inh-caps=+setuid,+setgid,+kill --ambient-caps=+setuid,+setgid,+kill)
  as_agent=(setpriv --reuid=agentkeys-demo-agent --regid=agentkeys-demo-agent --init-groups)
  serve_args=(--allow-uid "$agent_uid")
  echo "deployment: the daemon runs as system user agentkeys-demo-daemon (home $daemon_home, 0700;" \
       "CAP_SETUID, CAP_SETGID and CAP_KILL to run the agent's commands as the agent), the agent" \
       "as agentkeys-demo-agent (uid $agent_uid, let in with --allow-uid), the master as $(id -un)." \
       "${created_users[*]:+Created for this demo and removed at the end: ${created_users[*]}.}" >&2
else
  echo "deployment: not root, so the daemon and the agent run as $(id -un), like the master;" \
       "the daemon keeps the agent session in memory only (--ephemeral). See docs/daemon.md," \
       "'Deployment', for the separate uids to use outside a demo." >&2
fi
export AGENTKEYS_SOCKET="$socket"
step "1. a master initializes and stores a credential"
AGENTKEYS_AUTH_TOKEN=demo-agent-owner ak init
printf %s "sk-agent-$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')" | ak store openai
step "2. the daemon starts (its own home, its own uid where possible) and asks to pair"
"${as_daemon[@]}" env AGENTKEYS_HOME="$daemon_home" "$bin/agentkeys-daemon" serve \
  --server "$AGENTKEYS_SERVER" --socket "$socket" "${serve_args[@]}" 2>"$log.daemon" &
daemon=$!
for _ in $(seq 1 200); do grep -q "approve with" "$log.daemon" && break; sleep 0.05; done
cat "$log.daemon" >&2
code=$(grep -o "approve [A-Z0-9]*-[A-Z0-9]*" "$log.daemon" | head -1 | cut -d' ' -f2)
step "3. the master compares the OTP and approves, with scope openai"
ak approve "$code" --scope openai --yes
for _ in $(seq 1 200); do grep -q "serving agent" "$log.daemon" && break; sleep 0.05; done
grep "serving agent" "$log.daemon" >&2
step "4. an MCP client (the agent) connects through 'agentkeys-daemon mcp'"
echo "openai github" | "${as_agent[@]}" env AGENTKEYS_SOCKET="$socket" \
  python3 "$demo_client" "$bin/agentkeys-daemon" mcp
step "5. the agent runs a command through the daemon: 'agentkeys run' never holds the key"
echo "\$ agentkeys run --service openai -- sh -c 'echo \"uid \$(id -u); OPENAI_API_KEY: \${#OPENAI_API_KEY} characters\"; exit 3'" >&2
set +e
(cd / && "${as_agent[@]}" env AGENTKEYS_SOCKET="$socket" "$bin/agentkeys" run --service openai -- \
  sh -c 'echo "uid $(id -u); OPENAI_API_KEY: ${#OPENAI_API_KEY} characters"; exit 3')
rc=$?
set -e
[ "$rc" = 3 ] || { echo "expected the command's exit status 3, got $rc" >&2; exit 1; }
echo "(exit status $rc passed through; the command ran as the agent's uid)" >&2
step "6. with --proxy the command never holds the key: a placeholder, and the daemon's egress proxy"
(cd / && "${as_agent[@]}" env AGENTKEYS_SOCKET="$socket" "$bin/agentkeys" run --proxy --service openai -- sh -c '
  echo "OPENAI_API_KEY holds a placeholder shaped like the key: ${OPENAI_API_KEY%"${OPENAI_API_KEY#sk-agent-}"}... (${#OPENAI_API_KEY} characters)"
  echo "HTTPS_PROXY points at this run'"'"'s proxy in the daemon: ${HTTPS_PROXY##*@}; SSL_CERT_FILE holds the run'"'"'s CA"
  echo "the placeholder sent in a query string to api.openai.com (its binding: the Authorization header only):"
  curl -s "https://api.openai.com/v1/models?key=$OPENAI_API_KEY"; echo')
step "7. a Python agent gets it as a memfd_secret fd (clients/python, stdlib only), used in place and wiped"
"${as_agent[@]}" env AGENTKEYS_SOCKET="$socket" PYTHONPATH="$pydir" python3 - <<'PY'
from agentkeys_runtime import Client
with Client() as client:
    cred = client.get_credential("openai")
    print(f"received openai as a {cred.kind} fd, {cred.length} bytes")
    with cred as key:
        print(f"used in place: {len(key)} bytes, never copied into a Python string")
print("after the block: mapping zeroed, unmapped, fd closed")
PY
step "8. the daemon's status and its audit trail (fetch, deliver, drop, exfiltration; never the value)"
"${as_daemon[@]}" env AGENTKEYS_HOME="$daemon_home" "$bin/agentkeys-daemon" status --socket "$socket"
"${as_daemon[@]}" env AGENTKEYS_HOME="$daemon_home" "$bin/agentkeys-daemon" audit | tail -8
"${as_daemon[@]}" env AGENTKEYS_HOME="$daemon_home" "$bin/agentkeys-daemon" audit --verify --socket "$socket"
step "9. SIGTERM: the daemon wipes what it holds, anchors its trail, and stops"
kill -TERM $daemon; wait $daemon; daemon=
tail -1 "$log.daemon" >&2
echo "demo: OK" >&2
