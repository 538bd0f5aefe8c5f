#!/usr/bin/env bash
# The main job end to end: build, start agentkeys-server in --dev mode on a free port,
# run the quickstart against it (session, store, read, pairing, scope, high-value
# approval, audit, revocation), then stop the server.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "building agentkeys-server and the quickstart (the first build takes a few minutes on 2 cores)..." >&2
cargo build -p agentkeys-server -p agentkeys-core --example quickstart
log=$(mktemp)
./target/debug/agentkeys-server --dev --listen 127.0.0.1:0 >"$log.out" 2>"$log" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -f "$log" "$log.out"' EXIT
for _ in $(seq 1 200); do
  grep -q '^export AGENTKEYS_SERVER=' "$log.out" 2>/dev/null && break
  kill -0 $server 2>/dev/null || { cat "$log" >&2; exit 1; }
  sleep 0.05
done
line=$(grep '^export AGENTKEYS_SERVER=' "$log.out") || { echo "server did not start" >&2; cat "$log" >&2; exit 1; }
echo "$line"
eval "$line"
./target/debug/examples/quickstart
