#!/usr/bin/env bash
# Starts a throwaway PostgreSQL for the PostgreSQL engine's tests and prints the lines to
# eval: AGENTKEYS_TEST_DATABASE_URL (a superuser URL on 127.0.0.1, a free port),
# AGENTKEYS_TEST_PG_DIR, AGENTKEYS_TEST_PG_BIN, and AGENTKEYS_TEST_PG_CA (the CA of the
# server's TLS certificate, for sslmode=verify-full). 'pg-throwaway.sh stop DIR' stops it
# and deletes DIR.
#
# Debian's postgresql package (.ci/run installs it); initdb refuses root, so as root the
# cluster belongs to 'nobody'. It fails, never skips, when PostgreSQL cannot start.
set -euo pipefail

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
  echo "error: no PostgreSQL server binaries under /usr/lib/postgresql/*/bin" >&2
  echo "hint: apt-get install postgresql (the PostgreSQL engine's tests need a throwaway server)" >&2
  exit 1
fi
as_owner() {
  if [ "$(id -u)" = 0 ]; then setpriv --reuid=nobody --regid=nogroup --clear-groups -- "$@"; else "$@"; fi
}

if [ "${1:-}" = stop ]; then
  dir=${2:?usage: pg-throwaway.sh stop DIR}
  as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$dir"
  exit 0
fi

dir=$(mktemp -d /tmp/agentkeys-pg.XXXXXX)
chmod 0700 "$dir"
[ "$(id -u)" = 0 ] && chown nobody:nogroup "$dir"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
if ! as_owner "$bin/initdb" -D "$dir/data" -U agentkeys --auth=trust -E UTF8 --no-instructions >"$dir/initdb.log" 2>&1; then
  cat "$dir/initdb.log" >&2
  echo "error: initdb failed" >&2
  exit 1
fi
# TLS with a certificate for 127.0.0.1 from a CA of this cluster's own.
(
  cd "$dir"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=agentkeys test PostgreSQL CA" -keyout ca.key -out ca.crt 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=127.0.0.1" -keyout server.key -out server.csr 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >san.ext
  openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
    -extfile san.ext -out server.crt 2>/dev/null
  chmod 0600 server.key
  [ "$(id -u)" = 0 ] && chown nobody:nogroup server.key server.crt
  rm -f ca.key server.csr san.ext ca.srl
) || { echo "error: cannot make the test cluster's TLS certificate (openssl)" >&2; exit 1; }
# The settings go into the cluster's own config, so a test that stops and starts it gets
# the same server back. fsync off: a throwaway cluster need not survive the machine
# crashing; commits are still synchronous, so a PostgreSQL restart keeps every
# acknowledged write.
cat >>"$dir/data/postgresql.conf" <<CONF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
max_connections = 300
fsync = off
ssl = on
ssl_cert_file = '$dir/server.crt'
ssl_key_file = '$dir/server.key'
CONF
if ! as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null; then
  cat "$dir/server.log" >&2
  echo "error: PostgreSQL did not start" >&2
  exit 1
fi
echo "export AGENTKEYS_TEST_DATABASE_URL=postgres://agentkeys@127.0.0.1:$port/postgres"
echo "export AGENTKEYS_TEST_PG_DIR=$dir"
echo "export AGENTKEYS_TEST_PG_BIN=$bin"
echo "export AGENTKEYS_TEST_PG_CA=$dir/ca.crt"
