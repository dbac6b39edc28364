#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: installs what is missing, builds with
# every warning an error, and runs the unit and integration suites (real PostgreSQL 15,
# real HTTP sink, fauxqs, pgbouncer; all on 127.0.0.1).
#
#   tests/run.sh [meson test arguments, e.g. --suite unit]
set -euo pipefail
cd "$(dirname "$0")/.."

contrib/install-deps.sh

build=build-test
if [ ! -d "$build" ]; then
  meson setup "$build" --werror --buildtype=debugoptimized
fi
ninja -C "$build"

status=0
meson test -C "$build" --print-errorlogs --num-processes 2 "$@" || status=$?

# one closing line that any CI reads: N passed, N failed
/usr/bin/python3 - "$build/meson-logs/testlog.json" <<'PY'
import json, sys
passed = failed = skipped = 0
for line in open(sys.argv[1]):
    r = json.loads(line).get("result")
    if r in ("OK", "EXPECTEDFAIL"):
        passed += 1
    elif r == "SKIP":
        skipped += 1
    else:
        failed += 1
print(f"{passed} passed, {failed} failed, {skipped} skipped")
PY
exit "$status"
