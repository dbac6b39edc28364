#!/usr/bin/env bash
# scan.sh - what the relay's scan costs with many delayed rows (issue 13): the scan statement of
# a before revision and of the working tree, EXPLAIN (ANALYZE, BUFFERS) on the same table, and
# what an idle relay sends per minute (pg_stat_statements) in listen and in poll mode.
#
#   contrib/bench/scan.sh                              # 1,000,000 delayed rows over 10,000 partitions
#   contrib/bench/scan.sh --before c52e708 --rows 200000 --partitions 2000 --idle-secs 30
#   OBR_BUILD=build OBR_BUILD_BEFORE=/tmp/old/build contrib/bench/scan.sh   # idle figures of both
#   contrib/bench/scan.sh --no-idle                    # the scan times only
#
# The table: --rows delayed rows (process_after 1 to 2 hours ahead) spread over --partitions
# partitions, plus --due due rows in partitions of their own, VACUUM ANALYZEd. The scan runs with
# the relay's parameters ($1 = 256, OUTBOX_CLAIM_LIMIT's default; $2 = a lock id), --reps times
# each; the median execution time is printed, the plans are kept with --results DIR. For the idle
# figures the due rows are deleted first (nothing is due), then the relay runs --idle-secs with
# its default settings and with OUTBOX_MODE=poll (poll every second); the statements it sent and
# their execution time come from pg_stat_statements. Needs what run.sh needs.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
before=c52e708; rows=1000000; partitions=10000; due=50; reps=5; idle_secs=60; results_dir=; idle_too=1
while [ $# -gt 0 ]; do
  case $1 in
    --before) before=$2; shift 2 ;;
    --rows) rows=$2; shift 2 ;;
    --partitions) partitions=$2; shift 2 ;;
    --due) due=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --idle-secs) idle_secs=$2; shift 2 ;;
    --no-idle) idle_too=; shift ;;
    --results) results_dir=$(mkdir -p "$2" && cd "$2" && pwd); shift 2 ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "scan.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

relay_before=${OBR_BUILD_BEFORE:+$(cd "$OBR_BUILD_BEFORE" && pwd)/src/relay/outbox-relay}
me=scan.sh
. "$here/setup.sh"

# print_sql of both revisions: the statements exactly as each relay sends them
mkdir -p "$work/before/db"
(cd "$root" && git show "$before:src/relay/db/store.c" > "$work/before/db/store.c" \
              && git show "$before:src/relay/db/store.h" > "$work/before/db/store.h")
cc -O2 -Wall -Wextra -Werror -I"$work/before" -o "$work/print_sql_before" "$here/print_sql.c" "$work/before/db/store.c"
cc -O2 -Wall -Wextra -Werror -I"$root/src/relay" -o "$work/print_sql_after" "$here/print_sql.c" "$root/src/relay/db/store.c"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"${as_pg[@]}" "$pg_bin/initdb" -D "$work/pgdata" -A trust -U postgres >/dev/null
"${as_pg[@]}" "$pg_bin/pg_ctl" -D "$work/pgdata" -l "$work/postgres.log" -w -o "-c listen_addresses=127.0.0.1 -c port=$port \
  -c unix_socket_directories=$work -c shared_buffers=256MB -c max_wal_size=4GB \
  -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all" start >/dev/null
db="postgresql://postgres@127.0.0.1:$port/postgres"
psql_() { psql "$db" -X -q -At -v ON_ERROR_STOP=1 "$@"; }

echo "== scan benchmark: $rows delayed rows over $partitions partitions, $due due rows"
echo "machine: $(nproc) cores, $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p'); load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "date:    $(date -u '+%Y-%m-%d %H:%M:%S UTC'); before = $before, after = working tree at $(cd "$root" && git rev-parse --short HEAD)"
DATABASE_URL=$db "$relay_bin" migrate 2>&1 | tail -1
psql_ -c "CREATE EXTENSION pg_stat_statements"
t0=$(date +%s)
psql_ <<SQL
ALTER TABLE outbox DISABLE TRIGGER outbox_notify;
INSERT INTO outbox (idempotent_key, partition_key, destinations, payload, created_at, process_after)
SELECT gen_random_uuid(), ('00000000-0000-4000-8000-' || lpad(to_hex(i % $partitions), 12, '0'))::uuid,
       '[{"url":"http://127.0.0.1:9/never"}]', 'delayed', now(),
       now() + interval '1 hour' + (i::bigint * 3600000 / $rows || ' ms')::interval
  FROM generate_series(1, $rows) i;
INSERT INTO outbox (idempotent_key, partition_key, destinations, payload, created_at, process_after)
SELECT gen_random_uuid(), ('00000000-0000-4000-9000-' || lpad(to_hex(i), 12, '0'))::uuid,
       '[{"url":"http://127.0.0.1:9/never"}]', 'due', now(), now() - interval '1 minute'
  FROM generate_series(1, $due) i;
ALTER TABLE outbox ENABLE TRIGGER outbox_notify;
SQL
psql_ -c "VACUUM ANALYZE outbox"
echo "table:   filled in $(( $(date +%s) - t0 )) s; outbox $(psql_ -c "SELECT pg_size_pretty(pg_table_size('outbox'))"), indexes $(psql_ -c "SELECT pg_size_pretty(pg_indexes_size('outbox'))")"

# ---- scan time ------------------------------------------------------------------------------
echo "== scan: EXPLAIN (ANALYZE, BUFFERS), \$1 = 256, $reps runs each (median; the first run reads from disk)"
# after_walk: the working tree's scan forced onto its skip-scan path (taken above 1024 due rows)
for which in before after after_walk; do
  walk=; [ "$which" = after_walk ] && walk='s/1024/0/g;'
  sql=$("$work/print_sql_${which%_walk}" scan | sed "$walk s/\\\$1::int/256::int/g; s/\\\$2::uuid/'00000000-0000-4000-a000-000000000001'::uuid/g")
  times=()
  for rep in $(seq "$reps"); do
    psql_ -c "EXPLAIN (ANALYZE, BUFFERS) $sql" > "$work/plan-$which-$rep.txt"
    times+=("$(sed -n 's/^Execution Time: \([0-9.]*\) ms$/\1/p' "$work/plan-$which-$rep.txt")")
  done
  found=$(psql_ -c "$sql" | grep -c -v '^|' || true)
  median=$(printf '%s\n' "${times[@]}" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
  buffers=$(grep -m1 'Buffers:' "$work/plan-$which-$reps.txt" | sed 's/^ *Buffers: //')
  printf '  %-10s median %9.1f ms  (runs: %s)  partitions found %s; buffers %s\n' "$which" "$median" "${times[*]}" "$found" "$buffers"
  [ -n "$results_dir" ] && cp "$work/plan-$which-$reps.txt" "$results_dir/scan-plan-$which.txt"
done

# ---- idle -----------------------------------------------------------------------------------
[ -n "$idle_too" ] || exit 0
psql_ -c "DELETE FROM outbox WHERE payload = 'due'" -c "VACUUM ANALYZE outbox"
idle() {  # idle LABEL BINARY [NAME=VALUE...]
  local label=$1 bin=$2; shift 2
  env DATABASE_URL="$db" OUTBOX_LISTEN_ADDR=off OUTBOX_LOG_LEVEL=warning "$@" "$bin" run 2> "$work/relay.log" &
  relay_pid=$!
  for _ in $(seq 300); do
    [ "$(psql_ -c "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'outbox-relay%'")" -ge 2 ] && break
    sleep 0.1
  done
  sleep 2   # the catch-up scan at start is not idle
  psql_ -c "SELECT pg_stat_statements_reset()" >/dev/null
  sleep "$idle_secs"
  local stats
  stats=$(psql_ -F ' ' -c "SELECT coalesce(sum(calls), 0), round(coalesce(sum(total_exec_time), 0)::numeric, 1)
                              FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat_statements%'
                               AND query NOT LIKE '%pg_stat_activity%'")
  local top
  top=$(psql_ -F ' ' -c "SELECT calls, round(total_exec_time::numeric, 1), left(regexp_replace(query, '\s+', ' ', 'g'), 48)
                            FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat_statements%'
                             AND query NOT LIKE '%pg_stat_activity%' ORDER BY total_exec_time DESC LIMIT 3" |
        awk '{ c = $1; t = $2; $1 = ""; $2 = ""; printf "%sx %s ms:%s; ", c, t, $0 }')
  kill -TERM "$relay_pid"; wait "$relay_pid" || true; relay_pid=
  set -- $stats
  printf '  %-22s %6.1f statements/min, %9.1f ms of execution/min   (%s)\n' "$label" \
    "$(echo "$1 * 60 / $idle_secs" | bc -l)" "$(echo "$2 * 60 / $idle_secs" | bc -l)" "$top"
}
echo "== idle: nothing due, $rows delayed rows, ${idle_secs} s window (pg_stat_statements)"
for which in before after; do
  bin=$relay_bin; [ "$which" = before ] && bin=$relay_before
  [ -n "$bin" ] && [ -x "$bin" ] || { echo "  $which: no binary (set OBR_BUILD_BEFORE to a build of $before)"; continue; }
  idle "$which listen mode" "$bin"
  idle "$which poll mode" "$bin" OUTBOX_MODE=poll
done
