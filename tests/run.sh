#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: installs what is missing, builds with
# every warning an error, and runs the unit and integration suites (real PostgreSQL 15,
# real HTTP sink, fauxqs, pgbouncer; all on 127.0.0.1).
#
#   tests/run.sh [meson test arguments, e.g. --suite unit]
set -euo pipefail
cd "$(dirname "$0")/.."

contrib/install-deps.sh

# 1. the whole suite on a build with AddressSanitizer and UBSan: the first report stops the
#    process, and the harness fails any test whose relay printed one
build=build-test
if [ ! -d "$build" ]; then
  meson setup "$build" --werror --buildtype=debugoptimized -Db_sanitize=address,undefined -Db_lundef=false
fi
ninja -C "$build"
export ASAN_OPTIONS=halt_on_error=1:abort_on_error=0:detect_leaks=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1

status=0
meson test -C "$build" --print-errorlogs --num-processes 2 "$@" || status=$?
cp "$build/meson-logs/testlog.json" "$build/meson-logs/testlog-asan.json"

# 2. the unit suite under valgrind, on a build without sanitizers (they do not mix)
vbuild=build-valgrind
if [ ! -d "$vbuild" ]; then
  meson setup "$vbuild" --werror --buildtype=debug
fi
ninja -C "$vbuild"
meson test -C "$vbuild" --setup valgrind --suite unit --print-errorlogs || status=$?

# one closing line that any CI reads: N passed, N failed
/usr/bin/python3 - "$build/meson-logs/testlog-asan.json" "$vbuild/meson-logs/testlog-valgrind.json" <<'PY'
import json, sys
passed = failed = skipped = 0
lines = [l for f in sys.argv[1:] for l in open(f)]
for line in lines:
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
