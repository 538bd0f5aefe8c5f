#!/usr/bin/env bash
# Checks packaging/systemd: both units pass `systemd-analyze verify` (in a scratch root
# holding the binaries they start), and the server's sandbox rates 2.0 or better in
# `systemd-analyze security --offline=true`. A broken unit is checked to fail first, so
# the check is known to bite. Needs the debug binaries (cargo build) and systemd-analyze.
set -euo pipefail
cd "$(dirname "$0")/.."
max_exposure=2.0

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/local/bin" "$root/etc/systemd/system" "$root/etc/agentkeys" "$root/usr/lib/systemd" "$root/bin"
cp target/debug/agentkeys-server target/debug/agentkeys-daemon "$root/usr/local/bin/"
cp -r /usr/lib/systemd/system "$root/usr/lib/systemd/"
cp /bin/kill "$root/bin/kill"
touch "$root/etc/agentkeys/daemon.env"

# Control: a unit starting a program that is not there must fail verification.
printf '[Service]\nExecStart=/usr/local/bin/agentkeys-missing\n' >"$root/etc/systemd/system/broken.service"
if systemd-analyze verify --root="$root" broken.service >/dev/null 2>&1; then
  echo "check-units: a broken unit passed verification; the check proves nothing" >&2
  exit 1
fi
rm "$root/etc/systemd/system/broken.service"

cp packaging/systemd/*.service "$root/etc/systemd/system/"
systemd-analyze verify --root="$root" agentkeys-server.service agentkeys-daemon.service
echo "check-units: systemd-analyze verify: both units pass"

exposure=$(systemd-analyze security --offline=true packaging/systemd/agentkeys-server.service 2>/dev/null |
  sed -n 's/.*Overall exposure level for agentkeys-server.service: \([0-9.]*\).*/\1/p')
if [ -z "$exposure" ]; then
  echo "check-units: systemd-analyze security printed no exposure level" >&2
  exit 1
fi
if awk -v e="$exposure" -v m="$max_exposure" 'BEGIN { exit !(e > m) }'; then
  echo "check-units: agentkeys-server.service exposure $exposure is above $max_exposure" >&2
  exit 1
fi
daemon=$(systemd-analyze security --offline=true packaging/systemd/agentkeys-daemon.service 2>/dev/null |
  sed -n 's/.*Overall exposure level for agentkeys-daemon.service: \([0-9.]*\).*/\1/p')
echo "check-units: exposure: agentkeys-server.service $exposure (at most $max_exposure), agentkeys-daemon.service $daemon (its agents' commands need the filesystem)"
