#!/usr/bin/env bash
# outbox-relay benchmark: one command, everything on 127.0.0.1 and a throwaway PostgreSQL 15.
#
#   contrib/bench/run.sh [--only W[,W...]] [--quick] [--reps N] [--results DIR]
#                        [--relay-env NAME=VALUE]... [--quiet-wait S]
#
#   workloads (default: all, in this order):
#                  limits latency drain drain_stale sustained cost writers helpers idle analysis
#   extra (never in the default set): callgrind
#   --quick        short runs, for smoke tests (numbers are not comparable)
#   --reps N       repetitions of every workload (default 3; analysis and callgrind run once)
#   --results DIR  keep results.tsv, summary.txt and the analysis output in DIR
#   --relay-env    extra environment for the relay, e.g. for an A/B run without rebuilding:
#                  --relay-env 'PGOPTIONS=-c synchronous_commit=off' or OUTBOX_BATCH_SIZE=128
#   --quiet-wait S before every repetition wait up to S seconds (default 10) for a moment when
#                  the machine is at most 15% busy (other tenants); 0: do not wait
#   env OBR_BUILD  a meson build dir with src/relay/outbox-relay (default: build-bench at the
#                  repository root, set up with -Dbuildtype=release if missing)
#
# Builds the bench tools (sink, producer, hammer) with cc and pkg-config into the temp dir,
# starts PostgreSQL (as the postgres user when run as root; fsync and synchronous_commit on),
# applies the schema with `outbox-relay migrate`, runs the workloads, prints the median and
# min-max of every figure and a PASS/FAIL table of the targets of issue 6, and removes
# everything it started, also on failure or Ctrl-C.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

all_workloads="limits latency drain drain_stale sustained cost writers helpers idle analysis"
only=$all_workloads
quick=0
reps=3
results_dir=
relay_env=()
quiet_wait=10
while [ $# -gt 0 ]; do
  case "$1" in
    --only) only=${2//,/ }; shift 2 ;;
    --quick) quick=1; shift ;;
    --reps) reps=$2; shift 2 ;;
    --results) results_dir=$2; shift 2 ;;
    --relay-env) relay_env+=("$2"); shift 2 ;;
    --quiet-wait) quiet_wait=$2; shift 2 ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
for w in $only; do
  case " $all_workloads callgrind " in *" $w "*) ;; *) echo "run.sh: unknown workload $w" >&2; exit 2 ;; esac
done
wants() { case " $only " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# durations (seconds) and sizes
if [ "$quick" = 1 ]; then
  lat_secs=3; sus_secs=5; cost_secs=1.5; hammer_secs=1.5; idle_secs=6; drain_rows=5000; history_rows=20000; writers_secs=2
else
  lat_secs=10; sus_secs=20; cost_secs=3; hammer_secs=4; idle_secs=11; drain_rows=20000; history_rows=200000; writers_secs=4
fi
drain_parts=100

# ---- tools ----------------------------------------------------------------------------------
for tool in pkg-config cc python3 curl psql; do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool is required" >&2; exit 1; }
done
me=run.sh
. "$here/setup.sh"

cflags="-O2 -Wall -Wextra -Werror"
cc $cflags -o "$work/bench-sink" "$here/sink.c" $(pkg-config --cflags --libs libevent)
cc $cflags -o "$work/bench-hammer" "$here/hammer.c" $(pkg-config --cflags --libs libcurl)
cc $cflags -o "$work/bench-wake" "$here/wake.c"
cc $cflags -pthread -o "$work/bench-producer" "$here/producer.c" $(pkg-config --cflags --libs libpq)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now_us() { python3 -c 'import time; print(time.time_ns()//1000)'; }
results=$work/results.tsv
: > "$results"
rec() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$results"; }
# kv KEY "k=v k=v ..." -> v
kv() { tr ' ' '\n' <<< "$2" | awk -F= -v k="$1" '$1 == k { print $2 }'; }

echo "== outbox-relay benchmark"
echo "machine: $(nproc) cores, $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p'), $(uname -r)"
echo "date:    $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "relay:   $relay_bin, built $(date -u -r "$relay_bin" '+%Y-%m-%d %H:%M UTC'); repository now at $(cd "$root" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$root" && git diff --quiet HEAD -- src sql 2>/dev/null || echo ' with uncommitted changes in src/ or sql/')"
echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min) at start"
[ ${#relay_env[@]} -gt 0 ] && echo "relay environment: ${relay_env[*]}"

# ---- PostgreSQL ------------------------------------------------------------------------------
pg_port=$(free_port)
pg_opts="-c listen_addresses=127.0.0.1 -c port=$pg_port -c unix_socket_directories=$work -c shared_buffers=256MB -c max_wal_size=4GB -c fsync=on -c synchronous_commit=on"
pg_start() {
  "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$work/pgdata" -l "$work/postgres.log" -w -o "$pg_opts $*" start >/dev/null
}
pg_stop() { "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$work/pgdata" -m fast -w stop >/dev/null; }
"${as_pg[@]}" "$pg_bin/initdb" -D "$work/pgdata" -A trust -U postgres >/dev/null
pg_start
db="postgresql://postgres@127.0.0.1:$pg_port/postgres"
psql_() { psql "$db" -X -q -At -v ON_ERROR_STOP=1 "$@"; }
echo "postgres: $(psql_ -c 'SHOW server_version') on 127.0.0.1:$pg_port, fsync=$(psql_ -c 'SHOW fsync'), synchronous_commit=$(psql_ -c 'SHOW synchronous_commit'), shared_buffers=$(psql_ -c 'SHOW shared_buffers')"
DATABASE_URL=$db "$relay_bin" migrate 2>&1 | tail -1
psql_ <<'SQL'
CREATE TABLE bench_plain (LIKE outbox INCLUDING DEFAULTS);
ALTER TABLE bench_plain ADD PRIMARY KEY (idempotent_key);
CREATE TABLE bench_clone (LIKE outbox INCLUDING ALL);
-- (d) the per-row alternative to the outbox's statement-level trigger
CREATE TABLE bench_rowtrig (LIKE outbox INCLUDING ALL);
CREATE FUNCTION bench_rowtrig_notify() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN PERFORM pg_notify('bench', NEW.partition_key::text); RETURN NULL; END $$;
CREATE TRIGGER bench_rowtrig_notify AFTER INSERT ON bench_rowtrig
  FOR EACH ROW EXECUTE FUNCTION bench_rowtrig_notify();
SQL
truncate_all() { psql_ -c "TRUNCATE outbox, outbox_lock, bench_plain, bench_clone, bench_rowtrig"; }

# ---- sink ------------------------------------------------------------------------------------
"$work/bench-sink" --port 0 > "$work/sink.port" 2> "$work/sink.log" &
pids+=($!)
for _ in $(seq 100); do grep -q listening "$work/sink.port" 2>/dev/null && break; sleep 0.05; done
sink_port=$(awk '/listening/ {print $2}' "$work/sink.port")
sink="http://127.0.0.1:$sink_port"
hook="$sink/hook"
sink_reset() { curl -fsS "$sink/_ctl/reset" >/dev/null; }
sink_count() { curl -fsS "$sink/_ctl/count"; }
sink_dump() { curl -fsS "$sink/_ctl/dump?file=$1" >/dev/null; }
# waits until the sink has at least $1 records or $2 seconds passed
sink_wait() {
  local want=$1 deadline=$(( $(date +%s) + $2 ))
  while [ "$(sink_count)" -lt "$want" ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.02; done
}

# ---- relay -----------------------------------------------------------------------------------
relay_start() {
  env DATABASE_URL="$db" OUTBOX_LOG_LEVEL=info "${relay_env[@]}" "$@" "$relay_bin" run > "$work/relay.log" 2>&1 &
  relay_pid=$!
  for _ in $(seq 3000); do
    if grep -q "relay ready" "$work/relay.log"; then
      # profiling hook: OBR_BENCH_ATTACH='perf record -g -o /tmp/p.data -p' gets the relay's pid appended
      if [ -n "${OBR_BENCH_ATTACH:-}" ]; then $OBR_BENCH_ATTACH "$relay_pid" >/dev/null 2>&1 & fi
      return 0
    fi
    sleep 0.01
  done
  echo "run.sh: relay did not become ready:" >&2; cat "$work/relay.log" >&2; exit 1
}
relay_stop() {
  [ -n "$relay_pid" ] || return 0
  kill -TERM "$relay_pid" 2>/dev/null || true
  wait "$relay_pid" 2>/dev/null || true
  relay_pid=
  if grep -E ' (warning|error):' "$work/relay.log" | grep -v 'shutting down' | head -3 | grep -q .; then
    echo "   relay warnings:"; grep -E ' (warning|error):' "$work/relay.log" | head -3 | sed 's/^/     /'
  fi
}
# CPU seconds (utime+stime) of a pid, in milliseconds
cpu_ms() { awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print ($12 + $13) * 1000 / hz }' "/proc/$1/stat"; }
# CPU milliseconds of every PostgreSQL process: the postmaster's own and that of the children it
# reaped (cutime + cstime), plus its live children's. Backends that exit move from the second
# sum into the first, so the total only grows.
pg_cpu_ms() {
  local pm
  pm=$(head -1 "$work/pgdata/postmaster.pid")
  {
    awk '{ sub(/^.*\) /, ""); print $12 + $13 + $14 + $15 }' "/proc/$pm/stat"
    for c in $(pgrep -P "$pm"); do
      awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$c/stat" 2>/dev/null || true
    done
  } | awk -v hz="$(getconf CLK_TCK)" '{ t += $1 } END { print t * 1000 / hz }'
}
# PostgreSQL's children now; pg_settle N waits (up to 2 s) until at most N are left, so the
# backends of writers that just disconnected have been reaped into the postmaster's cutime
# (read before that, an exited backend's CPU is in neither sum)
pg_children() { pgrep -P "$(head -1 "$work/pgdata/postmaster.pid")" | wc -l; }
pg_settle() { for _ in $(seq 100); do [ "$(pg_children)" -le "$1" ] && return 0; sleep 0.02; done; }
# microseconds per row from two pg_cpu_ms readings
us_per_row() { awk -v a="$1" -v b="$2" -v n="$3" 'BEGIN { printf "%.1f", n ? (b - a) * 1000 / n : 0 }'; }
# context switches (voluntary + involuntary) of a pid: its wake-ups, near enough
ctx_switches() { awk '/^(nonvoluntary_|voluntary_)ctxt_switches/ { n += $2 } END { print n }' "/proc/$1/status"; }
peak_rss_mb() { awk '/^VmHWM:/ { printf "%.2f", $2 / 1024 }' "/proc/$1/status"; }

fmt() { printf '%-11s %s\n' "$1" "$2"; }

# machine-wide CPU busy percentage over 0.5 s (everything: other tenants included)
busy_pct() {
  local a b
  a=$(awk '/^cpu / { print $2+$3+$4+$5+$6+$7+$8+$9, $5+$6 }' /proc/stat)
  sleep 0.5
  b=$(awk '/^cpu / { print $2+$3+$4+$5+$6+$7+$8+$9, $5+$6 }' /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " "); t = y[1] - x[1]; i = y[2] - x[2]; printf "%d", (t > 0) ? 100 * (t - i) / t : 0 }'
}
# before a repetition (nothing of ours running): wait for the other tenants to calm down
quiet() {
  [ "$quiet_wait" = 0 ] && return 0
  local b deadline=$(( $(date +%s) + quiet_wait ))
  while b=$(busy_pct); [ "$b" -gt 15 ] && [ "$(date +%s)" -lt "$deadline" ]; do :; done
  rec machine busy_pct_before_rep "$b"
  [ "$b" -gt 15 ] && echo "   (machine still ${b}% busy after waiting ${quiet_wait}s: this repetition is disturbed)"
  return 0
}

# ---- limits: the sink's ceiling and PostgreSQL's INSERT+COMMIT rate --------------------------
run_limits() {
  echo "== limits: sink ceiling (libcurl multi, 64 keep-alive connections) and plain INSERT+COMMIT"
  for rep in $(seq "$reps"); do
    sink_reset
    quiet
    local h hf p1 p4 p4b
    h=$("$work/bench-hammer" --url "$hook" --conns 64 --seconds "$hammer_secs")
    hf=$("$work/bench-hammer" --url "$hook" --conns 64 --seconds "$hammer_secs" --fresh)
    sink_reset
    truncate_all
    p1=$("$work/bench-producer" cost --db "$db" --table plain --clients 1 --seconds "$cost_secs")
    truncate_all
    p4=$("$work/bench-producer" cost --db "$db" --table plain --clients 4 --seconds "$cost_secs")
    truncate_all
    p4b=$("$work/bench-producer" cost --db "$db" --table plain --clients 4 --rows-per-tx 100 --tx-partitions 10 --seconds "$cost_secs")
    local wk2 wk10
    wk2=$("$work/bench-wake" --rate 200 --seconds "$cost_secs")
    wk10=$("$work/bench-wake" --rate 1000 --seconds "$cost_secs")
    rec limits sink_rps "$(kv rps "$h")"
    rec limits sink_rps_fresh_handle "$(kv rps "$hf")"
    rec limits pg_commit_tps_1client "$(kv tps "$p1")"
    rec limits pg_commit_tps_4clients "$(kv tps "$p4")"
    rec limits pg_insert_rows_per_s_4x100 "$(kv rows_per_s "$p4b")"
    rec limits wake_cpu_us_200 "$(kv child_cpu_us_per_wake "$wk2")"
    rec limits wake_cpu_us_1000 "$(kv child_cpu_us_per_wake "$wk10")"
    fmt "  rep $rep" "sink $(kv rps "$h") req/s (fresh handle per request: $(kv rps "$hf")); INSERT+COMMIT 1 client $(kv tps "$p1")/s, 4 clients $(kv tps "$p4")/s; 100-row tx $(kv rows_per_s "$p4b") rows/s; one wake-up costs $(kv child_cpu_us_per_wake "$wk2") us CPU at 200/s, $(kv child_cpu_us_per_wake "$wk10") at 1000/s"
  done
}

# ---- latency: open-loop single-row transactions ----------------------------------------------
run_latency() {
  local rate via conns w
  for rate in 200 1000; do
   for via in insert enqueue_http; do
    if [ "$via" = insert ]; then conns=4; w=latency$rate; else conns=2; w=latency${rate}_http; fi
    echo "== latency at $rate rows/s ($lat_secs s, $conns connections writing with $via, 1000 partitions, open loop)"
    for rep in $(seq "$reps"); do
      relay_stop; truncate_all; sink_reset
      quiet
      # the same writers without a relay: what PostgreSQL spends on them alone
      local p0 p1 p2 p3 wout n0
      n0=$(pg_children)
      p0=$(pg_cpu_ms)
      wout=$("$work/bench-producer" latency --db "$db" --url "$hook" --rate "$rate" --seconds "$lat_secs" \
               --conns "$conns" --via "$via" --partitions 1000)
      pg_settle "$n0"
      p1=$(pg_cpu_ms)
      truncate_all
      relay_start
      sleep 0.3
      local c0 out j delivered c1 v0 v1
      c0=$(cpu_ms "$relay_pid")
      v0=$(ctx_switches "$relay_pid")
      n0=$(pg_children)
      p2=$(pg_cpu_ms)
      out=$("$work/bench-producer" latency --db "$db" --url "$hook" --rate "$rate" --seconds "$lat_secs" \
              --conns "$conns" --via "$via" --partitions 1000 --out "$work/commits.txt")
      sink_wait "$(kv rows "$out")" 15
      pg_settle "$n0"
      p3=$(pg_cpu_ms)
      c1=$(cpu_ms "$relay_pid")
      v1=$(ctx_switches "$relay_pid")
      rec rss relay_peak_rss_mb "$(peak_rss_mb "$relay_pid")"
      relay_stop
      sink_dump "$work/sink.txt"
      j=$(python3 "$here/stats.py" join "$work/commits.txt" "$work/sink.txt")
      delivered=$(kv delivered "$j")
      for f in p50_ms p90_ms p99_ms max_ms missing duplicates; do rec "$w" "$f" "$(kv "$f" "$j")"; done
      rec "$w" producer_behind_max_ms "$(kv behind_max_ms "$out")"
      local cpu_per_k
      cpu_per_k=$(awk -v a="$c0" -v b="$c1" -v n="$delivered" 'BEGIN { printf "%.1f", n ? (b - a) * 1000 / n : 0 }')
      rec "$w" relay_cpu_ms_per_1000 "$cpu_per_k"
      local wakes
      wakes=$(awk -v a="$v0" -v b="$v1" -v n="$delivered" 'BEGIN { printf "%.2f", n ? (b - a) / n : 0 }')
      rec "$w" relay_wakeups_per_delivery "$wakes"
      local dbw dbt
      dbw=$(us_per_row "$p0" "$p1" "$(kv rows "$wout")")
      dbt=$(us_per_row "$p2" "$p3" "$delivered")
      rec "$w" db_cpu_us_per_row_writers "$dbw"
      rec "$w" db_cpu_us_per_row_relay "$(awk -v a="$dbw" -v b="$dbt" 'BEGIN { printf "%.1f", b - a }')"
      fmt "  rep $rep" "committed $(kv committed "$j") delivered $delivered dup $(kv duplicates "$j"); p50 $(kv p50_ms "$j") p90 $(kv p90_ms "$j") p99 $(kv p99_ms "$j") max $(kv max_ms "$j") ms; relay CPU $cpu_per_k ms/1000, $wakes wake-ups per row; producer max lag $(kv behind_max_ms "$out") ms; PostgreSQL CPU per row: writers alone $dbw us, with the relay $dbt us"
    done
   done
  done
}

# ---- drain: a backlog written while the relay is stopped -------------------------------------
# $1 = drain: fresh statistics (VACUUM ANALYZE after the backlog is written);
#      drain_stale: the production case: the table has history (processed rows) and was last
#      analyzed before the backlog appeared, so the planner believes nothing is pending.
drain_common() {
  local w=$1
  if [ "$w" = drain ]; then
    echo "== drain: $drain_rows rows over $drain_parts partitions written with the relay stopped, then started (statistics fresh)"
  else
    echo "== drain_stale: the same backlog on a table with $history_rows processed rows, statistics from before the backlog"
  fi
  for rep in $(seq "$reps"); do
    relay_stop; truncate_all; sink_reset
    if [ "$w" = drain_stale ]; then
      psql_ <<SQL
INSERT INTO outbox (idempotent_key, partition_key, destinations, payload, created_at, process_after, processed_at, attempts)
SELECT gen_random_uuid(), ('b0b0b0b0-0000-7000-8000-' || lpad(to_hex(10000 + g % 10000), 12, '0'))::uuid,
       '[{"url": "$hook"}]', '{}', now() - interval '1 hour', now() - interval '1 hour', now() - interval '59 minutes', 1
  FROM generate_series(1, $history_rows) g;
VACUUM ANALYZE outbox;
SQL
    fi
    "$work/bench-producer" fill --db "$db" --url "$hook" --rows "$drain_rows" --partitions "$drain_parts" \
      --batch "$drain_parts" --out "$work/commits.txt" >/dev/null
    [ "$w" = drain ] && psql_ -c "VACUUM ANALYZE outbox"
    quiet
    local t0 j c1 p0 p1
    p0=$(pg_cpu_ms)
    t0=$(now_us)
    relay_start
    sink_wait "$drain_rows" 120
    p1=$(pg_cpu_ms)
    c1=$(cpu_ms "$relay_pid")
    rec rss relay_peak_rss_mb "$(peak_rss_mb "$relay_pid")"
    relay_stop
    sink_dump "$work/sink.txt"
    j=$(python3 "$here/stats.py" join "$work/commits.txt" "$work/sink.txt" --start-us "$t0")
    local first_rate cpu_k
    first_rate=$(awk -v n="$(kv delivered "$j")" -v a="$(kv first_arrival_us "$j")" -v b="$(kv last_arrival_us "$j")" \
                 'BEGIN { printf "%.0f", (b > a) ? n / ((b - a) / 1e6) : 0 }')
    cpu_k=$(awk -v c="$c1" -v n="$(kv delivered "$j")" 'BEGIN { printf "%.1f", n ? c * 1000 / n : 0 }')
    rec "$w" rows_per_s "$(kv rows_per_s "$j")"
    rec "$w" rows_per_s_first_to_last "$first_rate"
    rec "$w" missing "$(kv missing "$j")"
    rec "$w" duplicates "$(kv duplicates "$j")"
    rec "$w" order_violations "$(kv order_violations "$j")"
    rec "$w" relay_cpu_ms_per_1000 "$cpu_k"
    rec "$w" db_cpu_us_per_row_relay "$(us_per_row "$p0" "$p1" "$(kv delivered "$j")")"
    fmt "  rep $rep" "$(kv delivered "$j") rows in $(kv seconds "$j") s from relay start: $(kv rows_per_s "$j") rows/s (first to last arrival: $first_rate/s); missing $(kv missing "$j"), order violations $(kv order_violations "$j"); relay CPU $cpu_k ms/1000 (startup included); PostgreSQL CPU $(us_per_row "$p0" "$p1" "$(kv delivered "$j")") us per row"
  done
}
run_drain() { drain_common drain; }
run_drain_stale() { drain_common drain_stale; }

# ---- sustained: 4 closed-loop writers with the relay running ---------------------------------
run_sustained() {
  echo "== sustained: 4 writers as fast as they can for $sus_secs s, relay running (100 partitions)"
  for rep in $(seq "$reps"); do
    relay_stop; truncate_all; sink_reset
    quiet
    relay_start
    sleep 0.3
    local c0 c1 out t_end j committed backlog t_drained p0 p1
    c0=$(cpu_ms "$relay_pid")
    local n0
    n0=$(pg_children)
    p0=$(pg_cpu_ms)
    out=$("$work/bench-producer" sustained --db "$db" --url "$hook" --writers 4 --seconds "$sus_secs" \
            --partitions 100 --out "$work/commits.txt")
    t_end=$(now_us)
    committed=$(kv rows "$out")
    sink_wait "$committed" 120
    t_drained=$(now_us)
    pg_settle "$n0"
    p1=$(pg_cpu_ms)
    c1=$(cpu_ms "$relay_pid")
    rec rss relay_peak_rss_mb "$(peak_rss_mb "$relay_pid")"
    relay_stop
    sink_dump "$work/sink.txt"
    j=$(python3 "$here/stats.py" join "$work/commits.txt" "$work/sink.txt" --end-us "$t_end")
    backlog=$(( committed - $(kv delivered_by_end "$j") ))
    local secs deliv_rate
    secs=$(kv seconds "$out")
    deliv_rate=$(awk -v n="$(kv delivered_by_end "$j")" -v s="$secs" 'BEGIN { printf "%.0f", n / s }')
    rec sustained enqueue_rows_per_s "$(kv rows_per_s "$out")"
    rec sustained delivery_rows_per_s "$deliv_rate"
    rec sustained backlog_at_end "$backlog"
    rec sustained drain_after_end_s "$(awk -v a="$t_end" -v b="$(kv last_arrival_us "$j")" 'BEGIN { d = (b - a) / 1e6; printf "%.3f", (d > 0) ? d : 0 }')"
    rec sustained p50_ms "$(kv p50_ms "$j")"
    rec sustained p99_ms "$(kv p99_ms "$j")"
    rec sustained missing "$(kv missing "$j")"
    rec sustained order_violations "$(kv order_violations "$j")"
    rec sustained db_cpu_us_per_row_total "$(us_per_row "$p0" "$p1" "$committed")"
    rec sustained relay_cpu_ms_per_1000 "$(awk -v a="$c0" -v b="$c1" -v n="$(kv delivered "$j")" 'BEGIN { printf "%.1f", n ? (b - a) * 1000 / n : 0 }')"
    fmt "  rep $rep" "enqueued $(kv rows_per_s "$out") rows/s, delivered $deliv_rate rows/s, backlog at end $backlog; latency p50 $(kv p50_ms "$j") p99 $(kv p99_ms "$j") ms; missing $(kv missing "$j"), order violations $(kv order_violations "$j")"
  done
}

# ---- writer cost: what the trigger costs the application ---------------------------------------
run_cost() {
  echo "== writer cost: INSERT+COMMIT with (a) plain table, (b) + bare pg_notify, (b') outbox clone + pg_notify, (c) outbox + trigger, (d) outbox clone + per-row trigger"
  echo "   (relay stopped; a listener counts notifications; 100-row transactions span 10 partitions)"
  relay_stop
  for rep in $(seq "$reps"); do
    quiet
    local line=""
    for clients in 1 4; do
      for rows in 1 100; do
        local tp=1
        [ "$rows" = 100 ] && tp=10
        local tag="${clients}x${rows}" notify_tps=0 outbox_tps=0
        for table in plain notify clone_notify rowtrig outbox; do
          truncate_all
          local out
          out=$("$work/bench-producer" cost --db "$db" --url "$hook" --table "$table" --clients "$clients" \
                  --rows-per-tx "$rows" --tx-partitions "$tp" --partitions 1000 --seconds "$cost_secs")
          rec cost "${table}_tps_$tag" "$(kv tps "$out")"
          [ "$table" = notify ] && notify_tps=$(kv tps "$out")
          [ "$table" = rowtrig ] && rec cost "rowtrig_notifies_per_tx_$tag" "$(kv notifies_per_tx "$out")"
          if [ "$table" = outbox ]; then
            outbox_tps=$(kv tps "$out")
            rec cost "notifies_per_tx_$tag" "$(kv notifies_per_tx "$out")"
            rec cost "notifies_per_partition_$tag" "$(awk -v n="$(kv notifies_per_tx "$out")" -v p="$(kv partitions_per_tx "$out")" 'BEGIN { printf "%.3f", n / p }')"
          fi
        done
        rec cost "outbox_vs_notify_$tag" "$(awk -v a="$outbox_tps" -v b="$notify_tps" 'BEGIN { printf "%.3f", b ? a / b : 0 }')"
        line="$line $tag: c/b $(awk -v a="$outbox_tps" -v b="$notify_tps" 'BEGIN { printf "%.2f", b ? a / b : 0 }');"
      done
    done
    fmt "  rep $rep" "$line"
  done
  python3 - "$results" <<'PY'
import statistics, sys
d = {}
for line in open(sys.argv[1]):
    w, f, v = line.rstrip("\n").split("\t")
    if w == "cost":
        d.setdefault(f, []).append(float(v))
m = lambda k: statistics.median(d[k]) if k in d else float("nan")
print("   median tx/s          (a) plain   (b) +notify  (b') clone+notify  (d) per-row trigger  (c) outbox   c/b    c/d  NOTIFYs/tx (c) (d)")
for tag in ("1x1", "4x1", "1x100", "4x100"):
    print(f"   {tag:<6} ({'rows/tx ' + tag.split('x')[1]:<11}) {m('plain_tps_'+tag):>9.0f} {m('notify_tps_'+tag):>12.0f} {m('clone_notify_tps_'+tag):>17.0f} {m('rowtrig_tps_'+tag):>20.0f} {m('outbox_tps_'+tag):>12.0f} {m('outbox_vs_notify_'+tag):>6.2f} {m('outbox_tps_'+tag) / m('rowtrig_tps_'+tag):>6.2f} {m('notifies_per_tx_'+tag):>7.2f} {m('rowtrig_notifies_per_tx_'+tag):>5.2f}")
PY
}

# ---- writers: the application's commit rate with the relay running (issue 14) ----------------
# clone: the outbox's columns and indexes without a trigger; before: the outbox with the trigger
# of sql/002 (one NOTIFY per partition per transaction); after: the trigger of sql/010 (no NOTIFY
# while a relay holds the partition). One relay runs through a repetition; the three alternate
# in a rotating order, so they share the machine's state.
trigger_before() {
  psql_ <<'SQL'
CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox', k::text) FROM (SELECT DISTINCT partition_key AS k FROM outbox_new_rows) s;
    RETURN NULL;
END
$$;
SQL
}
trigger_after() { psql_ -f "$root/sql/010_notify_skip.sql"; }
run_writers() {
  echo "== writers: 4 clients x 1-row INSERT+COMMIT for $writers_secs s over 100 partitions, relay running"
  echo "   (clone) outbox's shape, no trigger; (before) outbox + sql/002 trigger; (after) outbox + sql/010"
  echo "   trigger, relay with OUTBOX_LINGER_MS=0; (linger) sql/010 trigger, relay with its default linger;"
  echo "   (linger_http) the same through outbox_enqueue_http() instead of a plain INSERT"
  for rep in $(seq "$reps"); do
    relay_stop; truncate_all; sink_reset
    quiet
    local line="" sent=0 order v
    case $(( rep % 5 )) in
      1) order="clone before after linger linger_http" ;; 2) order="before after linger linger_http clone" ;;
      3) order="after linger linger_http clone before" ;; 4) order="linger linger_http clone before after" ;;
      *) order="linger_http clone before after linger" ;;
    esac
    for v in $order; do
      local table=outbox via=insert out c0 c1 rows
      relay_stop
      case $v in
        linger_http) via=enqueue_http; trigger_after; relay_start ;;
        clone) table=clone; relay_start ;;
        before) trigger_before; relay_start OUTBOX_LINGER_MS=0 ;;
        after) trigger_after; relay_start OUTBOX_LINGER_MS=0 ;;
        linger) trigger_after; relay_start ;;
      esac
      sleep 0.3
      c0=$(cpu_ms "$relay_pid")
      local p0 p1 n0
      n0=$(pg_children)
      p0=$(pg_cpu_ms)
      out=$("$work/bench-producer" cost --db "$db" --url "$hook" --table "$table" --via "$via" --clients 4 \
              --partitions 100 --seconds "$writers_secs")
      rows=$(kv rows "$out")
      if [ "$table" = outbox ]; then
        sent=$(( sent + rows ))
        sink_wait "$sent" 60
        pg_settle "$n0"
        p1=$(pg_cpu_ms)
        rec writers "${v}_db_cpu_us_per_row_total" "$(us_per_row "$p0" "$p1" "$rows")"
        c1=$(cpu_ms "$relay_pid")
        rec writers "${v}_notifies_per_tx" "$(kv notifies_per_tx "$out")"
        rec writers "${v}_relay_cpu_ms_per_1000" "$(awk -v a="$c0" -v b="$c1" -v n="$rows" 'BEGIN { printf "%.1f", n ? (b - a) * 1000 / n : 0 }')"
        rec writers "${v}_undelivered_after_60s" "$(( sent - $(sink_count) ))"
      fi
      rec writers "${v}_rows_per_s" "$(kv rows_per_s "$out")"
      line="$line $v $(kv rows_per_s "$out") rows/s;"
    done
    relay_stop
    # the lever's ceiling: every partition leased by another (fake) instance, so no writer
    # notifies and the relay has nothing to do; the rows wait (they are truncated next)
    trigger_after
    psql_ -c "INSERT INTO outbox_lock (partition_key, lock_id, processing_until)
              SELECT ('b0b0b0b0-0000-7000-8000-' || lpad(to_hex(i), 12, '0'))::uuid, gen_random_uuid(),
                     now() + interval '1 hour' FROM generate_series(0, 99) i"
    out=$("$work/bench-producer" cost --db "$db" --url "$hook" --table outbox --clients 4 \
            --partitions 100 --seconds "$writers_secs")
    psql_ -c "DELETE FROM outbox_lock"
    rec writers held_rows_per_s "$(kv rows_per_s "$out")"
    rec writers held_notifies_per_tx "$(kv notifies_per_tx "$out")"
    line="$line all held $(kv rows_per_s "$out") rows/s;"
    fmt "  rep $rep" "$line"
  done
  trigger_after
  python3 - "$results" <<'PY'
import statistics, sys
d = {}
for line in open(sys.argv[1]):
    w, f, v = line.rstrip("\n").split("\t")
    if w == "writers":
        d.setdefault(f, []).append(float(v))
m = lambda k: statistics.median(d[k]) if k in d else float("nan")
c = m("clone_rows_per_s")
parts = [f"clone {c:.0f}"]
for v in ("before", "after", "linger", "linger_http", "held"):
    parts.append(f"{v} {m(v + '_rows_per_s'):.0f} ({m(v + '_rows_per_s') / c:.2f} of clone, "
                 f"{m(v + '_notifies_per_tx'):.2f} NOTIFYs/tx)")
print("   median rows/s: " + "; ".join(parts))
PY
}

# ---- helpers: what the SQL helpers cost next to a plain INSERT of the same row (issue 14) --------
# No relay runs and the sql/010 trigger is in place (every commit notifies, the same for all).
# insert: INSERT of key, partition, destinations and payload; enqueue: the same row through
# outbox_enqueue(); enqueue_http: outbox_enqueue_http() with the same URL and header. "old_" are
# the helpers as sql/003, 006 and 009 left them (reapplied for that variant; sql/011 after it).
# Interleaved in a rotating order; 1 client (the cost of one call) and 4 clients.
helpers_sql() {
  if [ "$1" = old ]; then
    for f in 003_enqueue_functions 006_row_format 009_webhook_signatures; do psql_ -q -f "$root/sql/$f.sql"; done
  else
    psql_ -q -f "$root/sql/011_fast_helpers.sql"
  fi
}
run_helpers() {
  echo "== helpers: 1-row transactions for $writers_secs s over 100 partitions, no relay"
  relay_stop
  trigger_after
  local all="insert enqueue enqueue_http old_enqueue old_enqueue_http"
  for rep in $(seq "$reps"); do
    quiet
    local line="" order v c out n
    n=$(( rep % 5 ))
    order=$(echo $all $all | cut -d' ' -f$(( n + 1 ))-$(( n + 5 )))
    for c in 1 4; do
      for v in $order; do
        truncate_all
        case $v in old_*) helpers_sql old ;; esac
        out=$("$work/bench-producer" cost --db "$db" --url "$hook" --table outbox --via "${v#old_}" --clients "$c" \
                --partitions 100 --seconds "$writers_secs")
        case $v in old_*) helpers_sql new ;; esac
        rec helpers "${v}_${c}c_rows_per_s" "$(kv rows_per_s "$out")"
        line="$line $v/${c}c $(kv rows_per_s "$out");"
      done
    done
    fmt "  rep $rep" "$line"
  done
  python3 - "$results" <<'PY'
import statistics, sys
d = {}
for line in open(sys.argv[1]):
    w, f, v = line.rstrip("\n").split("\t")
    if w == "helpers":
        d.setdefault(f, []).append(float(v))
m = lambda k: statistics.median(d[k]) if k in d else float("nan")
for c in (1, 4):
    i = m(f"insert_{c}c_rows_per_s")
    parts = [f"insert {i:.0f}"]
    for v in ("enqueue", "enqueue_http", "old_enqueue", "old_enqueue_http"):
        parts.append(f"{v} {m(f'{v}_{c}c_rows_per_s'):.0f} ({m(f'{v}_{c}c_rows_per_s') / i:.2f})")
    print(f"   median rows/s, {c} client(s), (share of insert): " + "; ".join(parts))
PY
}

# ---- idle: what the relay does when nothing happens -------------------------------------------
run_idle() {
  echo "== idle: relay running, nothing written, $idle_secs s window (poll interval 30 s)"
  if ! command -v strace >/dev/null; then echo "   strace not installed: skipped"; return; fi
  for rep in $(seq "$reps"); do
    relay_stop; truncate_all
    quiet
    relay_start
    sleep 1
    local v0 v1 q
    v0=$(awk '/^voluntary_ctxt_switches/ { print $2 }' "/proc/$relay_pid/status")
    timeout "$idle_secs" strace -qq -f -s 80 -e trace=sendto,sendmsg,write -p "$relay_pid" -o "$work/idle.strace" 2>/dev/null || true
    v1=$(awk '/^voluntary_ctxt_switches/ { print $2 }' "/proc/$relay_pid/status")
    # libpq sends a query with one send(); log lines are write(2) to stderr
    q=$(grep -c -E '^[0-9]+ +(sendto|sendmsg)\(' "$work/idle.strace" || true)
    local what
    what=$(grep -o -E '(SELECT [^\\"]{0,40}|UPDATE [a-z_]+|DELETE FROM [a-z_]+|INSERT INTO [a-z_]+)' "$work/idle.strace" | sort | uniq -c | awk '{c=$1; $1=""; printf "%s x%d;", $0, c}' || true)
    rec idle relay_queries "$q"
    rec idle relay_wakeups "$(( v1 - v0 ))"
    fmt "  rep $rep" "$q statements sent in $idle_secs s (${what:-none}), $(( v1 - v0 )) wake-ups"
    relay_stop
  done
}

# ---- analysis: pg_stat_statements and auto_explain of the relay's own statements ---------------
run_analysis() {
  echo "== analysis: the relay's statements (pg_stat_statements, auto_explain) over a realistic table"
  relay_stop
  pg_stop
  pg_start "-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all -c pg_stat_statements.track_planning=on"
  truncate_all
  local processed=500000
  [ "$quick" = 1 ] && processed=50000
  # history: processed rows over 10,000 partitions, as a busy table has between vacuums
  psql_ <<SQL
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
INSERT INTO outbox (idempotent_key, partition_key, destinations, payload, created_at, process_after, processed_at, attempts)
SELECT gen_random_uuid(), ('b0b0b0b0-0000-7000-8000-' || lpad(to_hex(10000 + g % 10000), 12, '0'))::uuid,
       '[{"url": "$hook"}]', '{}', now() - interval '1 hour', now() - interval '1 hour', now() - interval '59 minutes', 1
  FROM generate_series(1, $processed) g;
VACUUM ANALYZE outbox;
SELECT pg_stat_statements_reset();
SQL
  echo "   table: $(psql_ -c "SELECT count(*) FROM outbox") rows ($(psql_ -c "SELECT pg_size_pretty(pg_total_relation_size('outbox'))") with indexes), all processed"
  sink_reset
  export PGOPTIONS="-c session_preload_libraries=auto_explain -c auto_explain.log_min_duration=0 -c auto_explain.log_analyze=on -c auto_explain.log_buffers=on -c auto_explain.log_timing=on -c auto_explain.log_format=text"
  relay_start
  unset PGOPTIONS
  sleep 0.3
  local out
  out=$("$work/bench-producer" latency --db "$db" --url "$hook" --rate 1000 --seconds 3 --conns 4 --partitions 1000 --out "$work/commits.txt")
  sink_wait "$(kv rows "$out")" 20
  relay_stop
  sink_reset
  "$work/bench-producer" fill --db "$db" --url "$hook" --rows 5000 --partitions 100 --batch 100 --out "$work/commits.txt" >/dev/null
  relay_start
  sink_wait 5000 60
  relay_stop
  psql_ -F $'\t' <<'SQL' > "$work/pgss.tsv"
SELECT calls, plans, round((total_plan_time / calls)::numeric, 3), round(mean_exec_time::numeric, 3), round((rows::numeric / calls), 1),
       round((shared_blks_hit + shared_blks_read)::numeric / calls, 1), round(wal_bytes / calls), round((total_plan_time + total_exec_time)::numeric, 1),
       regexp_replace(left(regexp_replace(query, '\s+', ' ', 'g'), 90), '\t', ' ')
  FROM pg_stat_statements
 WHERE query ~* 'outbox_lock|FROM outbox|UPDATE outbox|DELETE FROM outbox|pg_notification_queue_usage|^SELECT \$1$'
 ORDER BY total_plan_time + total_exec_time DESC LIMIT 12;
SQL
  echo "   relay statements (pg_stat_statements, 3 s at 1000 rows/s + a 5,000-row drain):"
  echo "   (plans: how often it was planned; plan_ms: planning time per call, all plannings spread over all calls)"
  printf '   %7s %7s %8s %8s %9s %9s %10s %9s  %s\n' calls plans plan_ms exec_ms rows/call blks/call wal_B/call total_ms query
  awk -F'\t' '{ printf "   %7s %7s %8s %8s %9s %9s %10s %9s  %s\n", $1, $2, $3, $4, $5, $6, $7, $8, $9 }' "$work/pgss.tsv"
  # one auto_explain plan per statement kind: the one with the median duration
  python3 - "$work/postgres.log" "$work/plans.txt" <<'PY'
import re, statistics, sys
text = open(sys.argv[1], errors="replace").read()
entries = re.split(r"\n(?=\S.*LOG:  duration: )", text)
kinds = {"claim": "INSERT INTO outbox_lock", "advance": "DELETE FROM outbox_lock l USING f",
         "complete": "WITH done AS (UPDATE outbox", "scan": "SELECT DISTINCT ON (partition_key)"}
found = {k: [] for k in kinds}
for e in entries:
    m = re.search(r"LOG:  duration: ([0-9.]+) ms  plan:", e)
    if not m:
        continue
    for k, needle in kinds.items():
        if needle in e:
            found[k].append((float(m.group(1)), e))
            break
with open(sys.argv[2], "w") as out:
    for k, lst in found.items():
        if not lst:
            continue
        lst.sort(key=lambda x: x[0])
        durs = [d for d, _ in lst]
        med = lst[len(lst) // 2]
        print(f"   {k:<9} executions {len(lst):>6}  duration ms: median {statistics.median(durs):.3f}  p99 {durs[int(len(durs) * 0.99) - 1 if len(durs) > 1 else 0]:.3f}  max {durs[-1]:.3f}")
        plan = med[1]
        plan = plan[plan.find("Query Text:"):]
        out.write(f"==== {k}: median execution ({med[0]:.3f} ms) of {len(lst)}\n{plan}\n\n")
PY
  echo "   median plans (EXPLAIN ANALYZE, BUFFERS): $([ -n "$results_dir" ] && echo "$results_dir/plans.txt" || echo "use --results DIR to keep them")"
  grep -E '^(====|[ ]*(->|Insert|Update|Delete|Index|Seq|Limit|WindowAgg|Nested|Hash|Sort|Buffers|Planning|Execution|CTE|Aggregate|Unique|Function))' "$work/plans.txt" \
    | grep -E '^====|actual time' | sed -E 's/\(cost=[^)]*\) //; s/^/     /' | cut -c1-150 | head -60
  [ -n "$results_dir" ] && cp "$work/plans.txt" "$work/pgss.tsv" "$results_dir/"
  pg_stop
  pg_start
  return 0
}

# ---- callgrind: instructions per delivery (not in the default set) -----------------------------
run_callgrind() {
  echo "== callgrind: the relay under valgrind while draining 5,000 rows"
  command -v valgrind >/dev/null || { echo "   valgrind not installed: skipped"; return; }
  relay_stop; truncate_all; sink_reset
  "$work/bench-producer" fill --db "$db" --url "$hook" --rows 5000 --partitions 100 --batch 100 --out "$work/commits.txt" >/dev/null
  relay_start valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out"
  sink_wait 5000 300
  relay_stop
  local total
  total=$(callgrind_annotate "$work/callgrind.out" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
  echo "   instructions: $total in total, $(( total / 5000 )) per delivery (startup and shutdown included)"
  echo "   self cost (top 15):"
  callgrind_annotate "$work/callgrind.out" 2>/dev/null | sed -n '/file:function/,$p' | sed -n '3,17p' | cut -c1-140 | sed 's/^/   /'
  echo "   inclusive cost of the relay's own functions (top 15):"
  callgrind_annotate --inclusive=yes "$work/callgrind.out" 2>/dev/null | sed -n '/file:function/,$p' \
    | grep 'outbox-relay\]' | grep -vE '\((below main)\)|:main |:run ' | head -15 | cut -c1-140 | sed 's/^/   /'
  [ -n "$results_dir" ] && cp "$work/callgrind.out" "$results_dir/"
  return 0
}

[ -n "$results_dir" ] && mkdir -p "$results_dir"
for w in $all_workloads callgrind; do
  if wants "$w"; then "run_$w"; fi
done
relay_stop

echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min) at end"
echo
echo "== summary (median and min-max over $reps repetitions)"
status=0
python3 "$here/stats.py" summary "$results" | tee "$work/summary.txt" || status=$?
if [ -n "$results_dir" ]; then cp "$results" "$work/summary.txt" "$results_dir/"; fi
exit 0
