#!/usr/bin/env bash
# Release hardening gate: every shipped binary must be PIE, have full RELRO (BIND_NOW),
# a non-executable stack (NX) and a stack canary. Uses Debian's checksec.
#
#   scripts/check-hardening.sh              build --release, check the shipped binaries
#   scripts/check-hardening.sh BIN...       check these binaries
#   scripts/check-hardening.sh --self-test  prove the gate fails on a deliberately weak
#                                           binary and passes on a hardened one (needs gcc)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v checksec >/dev/null || { echo "error: checksec is missing; install it with 'apt-get install checksec'" >&2; exit 2; }

# Prints one line per binary; returns 1 if any property is missing.
check() {
  local failed=0 bin report
  for bin in "$@"; do
    report=$(checksec --file="$bin" --output=json)
    if ! python3 - "$bin" "$report" <<'PY'
import json, sys
path, report = sys.argv[1], json.loads(sys.argv[2])
props = next(iter(report.values()))
want = {"pie": "yes", "relro": "full", "nx": "yes", "canary": "yes"}
missing = [f"{k}={props.get(k)} (want {v})" for k, v in want.items() if props.get(k) != v]
status = "ok" if not missing else "FAILED: " + ", ".join(missing)
print(f"{path}: pie={props.get('pie')} relro={props.get('relro')} nx={props.get('nx')} canary={props.get('canary')}  {status}")
sys.exit(1 if missing else 0)
PY
    then failed=1; fi
  done
  return $failed
}

if [ "${1:-}" = "--self-test" ]; then
  dir=$(mktemp -d); trap 'rm -rf "$dir"' EXIT
  printf '#include <stdio.h>\n#include <string.h>\nint main(int c, char **v) { char b[64]; strcpy(b, c > 1 ? v[1] : "x"); puts(b); return 0; }\n' >"$dir/t.c"
  gcc -O0 -fno-stack-protector -no-pie -Wl,-z,norelro -Wl,-z,execstack -o "$dir/weak" "$dir/t.c"
  gcc -O2 -fstack-protector-strong -fPIE -pie -Wl,-z,relro,-z,now -o "$dir/strong" "$dir/t.c"
  if check "$dir/weak"; then echo "self-test FAILED: the gate accepted a weak binary" >&2; exit 1; fi
  check "$dir/strong" || { echo "self-test FAILED: the gate refused a hardened binary" >&2; exit 1; }
  echo "self-test: the gate refuses a weak binary and accepts a hardened one"
  exit 0
fi

if [ $# -eq 0 ]; then
  echo "building the shipped binaries (--release)..." >&2
  cargo build --release --locked -p agentkeys-server -p agentkeys-cli -p agentkeys-daemon
  set -- target/release/agentkeys-server target/release/agentkeys target/release/agentkeys-daemon
fi
check "$@"
echo "hardening gate: all binaries pass"
