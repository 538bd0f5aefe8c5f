#!/usr/bin/env bash
# The reviewer's checklist, automated: on a fresh server data dir, each item below is run
# against the real binaries and printed as PASS or FAIL; the script exits 1 if any failed.
#
#   1. daemon lifecycle: fetch -> deliver -> drop within milliseconds, memory scan clean
#   2. idle eviction: TTL 10 s; fetch, wait 15 s, fetch -> two backend reads
#   3. whoami shows the session's metadata and never its token
#   4. init twice -> "Already initialized"; --force -> a new session
#   5. high-value gate: read -> pending with a code -> approve -> read returns the value
set -uo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet -p agentkeys-server -p agentkeys-cli -p agentkeys-daemon -p agentkeys-memscan
bin=./target/debug
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; rm -rf "$work"; }
trap cleanup EXIT
failed=0
result() { if [ "$2" = 0 ]; then echo "PASS  $1"; else echo "FAIL  $1${3:+: $3}"; failed=1; fi; }

"$bin/agentkeys-server" --data-dir "$work/data" --listen 127.0.0.1:0 --auth dev 2>"$work/server.log" &
pids+=($!)
for _ in $(seq 1 200); do grep -q "listen=" "$work/server.log" && break; sleep 0.05; done
export AGENTKEYS_SERVER="http://$(grep -o 'listen=[0-9.:]*' "$work/server.log" | head -1 | cut -d= -f2)"
export AGENTKEYS_HOME="$work/master" AGENTKEYS_SESSION_STORE=file
ak() { "$bin/agentkeys" "$@"; }
canary="sk-checklist-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"

# 4. init twice, then --force
out1=$(AGENTKEYS_AUTH_TOKEN=checklist ak init 2>&1); out2=$(AGENTKEYS_AUTH_TOKEN=checklist ak init 2>&1)
s1=$(ak whoami --json); AGENTKEYS_AUTH_TOKEN=checklist ak init --force >/dev/null 2>&1; s2=$(ak whoami --json)
echo "$out2" | grep -q "Already initialized" && [ "$s1" != "$s2" ]
result "init twice says 'Already initialized'; --force mints a new session" $? "$out2"

# 3. whoami: metadata, never the token
who=$(ak whoami 2>&1); whojson=$(ak whoami --json 2>&1)
echo "$who" | grep -q "wallet" && echo "$who" | grep -q "expires" && ! echo "$who$whojson" | grep -q "akm_"
result "whoami shows wallet, scope and expiry, and no token (akm_...)" $?

# pair a daemon with a 10 s idle TTL for openai
printf %s "$canary" | ak store openai >/dev/null
export AGENTKEYS_SOCKET="$work/agent/daemon.sock"
AGENTKEYS_HOME="$work/agent" "$bin/agentkeys-daemon" serve --cache openai=10s 2>"$work/daemon.log" &
daemon=$!; pids+=($daemon)
for _ in $(seq 1 200); do grep -q "approve with" "$work/daemon.log" && break; sleep 0.05; done
code=$(grep -o "approve [A-Z0-9]*-[A-Z0-9]*" "$work/daemon.log" | head -1 | cut -d' ' -f2)
ak approve "$code" --scope openai,stripe --yes >/dev/null 2>&1
for _ in $(seq 1 200); do grep -q "serving agent" "$work/daemon.log" && break; sleep 0.05; done
agent=$(grep -o "serving agent 0x[0-9a-f]*" "$work/daemon.log" | cut -d' ' -f3)
printf %s "$canary" | ak store openai --agent "$agent" >/dev/null
fetch() {
  python3 - "$AGENTKEYS_SOCKET" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile("rwb")
def call(i, method, params):
    f.write((json.dumps({"jsonrpc": "2.0", "id": i, "method": method, "params": params}) + "\n").encode()); f.flush()
    while True:
        m = json.loads(f.readline())
        if m.get("id") == i: return m
call(1, "initialize", {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "checklist", "version": "0"}})
r = call(2, "tools/call", {"name": "get_credential", "arguments": {"service": "openai"}})
print("ok" if not r["result"].get("isError") else "error")
PY
}
reads() { ak usage --agent "$agent" --json --limit 1000 | python3 -c 'import json,sys
def n(v):
    if isinstance(v, list): return sum(n(x) for x in v)
    if isinstance(v, dict): return 1 if v.get("action") == "credential.read" and v.get("outcome") == "ok" else sum(n(x) for x in v.values())
    return 0
print(n(json.load(sys.stdin)))'; }

# 1. lifecycle and memory
[ "$(fetch)" = ok ]; fetched=$?
window=$(python3 - "$work/agent/daemon-audit.jsonl" <<'PY'
import json, sys
ev = [json.loads(l) for l in open(sys.argv[1])]
f = next(e for e in ev if e["event"] == "fetch"); d = next(e for e in ev if e["event"] == "drop" and e.get("request") == f.get("request"))
names = [e["event"] for e in ev if e.get("request") == f.get("request")]
print(names == ["fetch", "deliver", "drop"] and (d["mono_ns"] - f["mono_ns"]) < 50_000_000, (d["mono_ns"] - f["mono_ns"]) // 1000)
PY
)
hits=$("$bin/agentkeys-memscan" "$daemon" "$canary" --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["hits"]))')
[ "$fetched" = 0 ] && [ "${window%% *}" = True ] && [ "$hits" = 0 ]
result "daemon: fetch -> deliver -> drop in ${window##* } us, memory scan of the daemon: $hits copies" $?

# 2. idle eviction (TTL 10 s)
before=$(reads); sleep 15; fetch >/dev/null; after=$(reads)
grep -q '"event":"evict"' "$work/agent/daemon-audit.jsonl" && [ "$before" = 1 ] && [ "$after" = 2 ]
result "idle eviction: TTL 10 s, fetch, 15 s, fetch -> $after backend reads (evict in the trail)" $?

# 5. high-value gate
printf %s "$canary" | ak store stripe >/dev/null; ak policy stripe --high-value >/dev/null
ak read stripe >/dev/null 2>"$work/pending"; rc=$?
code=$(grep -o "approve [A-Z0-9]*-[A-Z0-9]*" "$work/pending" | head -1 | cut -d' ' -f2)
ak approve "$code" --yes >/dev/null 2>&1
value=$(ak read stripe --wait 10 2>/dev/null)
[ "$rc" = 5 ] && [ -n "$code" ] && [ "$value" = "$canary" ]
result "high-value: read -> pending (exit 5, code $code) -> approve -> read returns the value" $?

[ "$failed" = 0 ] && echo "checklist: all items PASS" || echo "checklist: FAILED"
exit $failed
