# setup.sh - sourced by run.sh and scan.sh, with $root and $me (the script's name) set:
# - $pg_bin: PostgreSQL 15's binaries (PG_BIN);
# - $relay_bin: the relay to measure, OBR_BUILD's or a release build in build-bench at the
#   repository root (made when missing);
# - $work: a temporary directory, the current directory from here on; as root, PostgreSQL runs
#   as postgres ($as_pg); the cluster in $work/pgdata, the relay ($relay_pid) and the processes
#   in $pids are stopped and $work removed on exit, failure or Ctrl-C.
pg_bin=${PG_BIN:-/usr/lib/postgresql/15/bin}
[ -x "$pg_bin/initdb" ] || { echo "$me: PostgreSQL 15 not found in $pg_bin (set PG_BIN)" >&2; exit 1; }

if [ -n "${OBR_BUILD:-}" ]; then
  build=$(cd "$OBR_BUILD" && pwd)
else
  build=$root/build-bench
  [ -d "$build" ] || meson setup "$build" "$root" -Dbuildtype=release -Dtests=false >/dev/null
  ninja -C "$build" src/relay/outbox-relay >/dev/null
fi
relay_bin=$build/src/relay/outbox-relay
[ -x "$relay_bin" ] || { echo "$me: no relay binary at $relay_bin" >&2; exit 1; }

work=$(mktemp -d "/tmp/obr-${me%.sh}.XXXXXX")
chmod 755 "$work"
cd "$work"   # nothing of ours lands in the caller's directory
pids=()
relay_pid=
as_pg=()
if [ "$(id -u)" -eq 0 ]; then as_pg=(runuser -u postgres --); chown postgres "$work"; fi

cleanup() {
  set +e
  [ -n "$relay_pid" ] && kill -TERM "$relay_pid" 2>/dev/null && wait "$relay_pid" 2>/dev/null
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
  wait 2>/dev/null
  [ -f "$work/pgdata/postmaster.pid" ] && "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$work/pgdata" -m immediate stop >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT
trap 'echo "$me: interrupted" >&2; exit 130' INT TERM
