#!/usr/bin/env bash
# The relay on an embedded default: installs what is missing, builds, starts a throwaway
# PostgreSQL 15 (schema applied by `outbox-relay migrate`), a demo HTTP sink and the relay,
# then writes sample rows (some delayed, some failing once) and shows them arriving.
#
#   contrib/demo.sh [--seconds N]      (default: until Ctrl-C)
#
# Everything lives in a temporary directory and on 127.0.0.1; it is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

seconds=0
if [ "${1:-}" = "--seconds" ] && [ -n "${2:-}" ]; then seconds=$2; fi

contrib/install-deps.sh
build=build-demo
[ -d "$build" ] || meson setup "$build" --buildtype=debugoptimized >/dev/null
ninja -C "$build" >/dev/null
relay_bin=$root/$build/src/relay/outbox-relay
sink_bin=$root/$build/tests/sink/obr-test-sink

work=$(mktemp -d /tmp/outbox-relay-demo.XXXXXX)
chmod 755 "$work"
pids=()
pg_bin=/usr/lib/postgresql/15/bin
as_pg=()
if [ "$(id -u)" -eq 0 ]; then as_pg=(runuser -u postgres --); chown postgres "$work"; fi

cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -f "$work/pgdata/postmaster.pid" ] && "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$work/pgdata" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

pg_port=$(free_port)
echo "demo: starting PostgreSQL 15 on 127.0.0.1:$pg_port (in $work)"
"${as_pg[@]}" "$pg_bin/initdb" -D "$work/pgdata" -A trust -U postgres --nosync >/dev/null
"${as_pg[@]}" "$pg_bin/pg_ctl" -D "$work/pgdata" -l "$work/postgres.log" -w \
  -o "-c listen_addresses=127.0.0.1 -c port=$pg_port -c unix_socket_directories=$work" start >/dev/null
export DATABASE_URL="postgresql://postgres@127.0.0.1:$pg_port/postgres"
psql_() { psql "$DATABASE_URL" -X -q -v ON_ERROR_STOP=1 "$@"; }

"$relay_bin" migrate

"$sink_bin" --port 0 > "$work/sink.port" 2>"$work/sink.log" &
pids+=($!)
for _ in $(seq 100); do grep -q listening "$work/sink.port" 2>/dev/null && break; sleep 0.05; done
sink_port=$(awk '/listening/ {print $2}' "$work/sink.port")
sink="http://127.0.0.1:$sink_port"
# the first request to /flaky fails once: the row is retried and keeps its place
curl -fsS -X POST "$sink/_sink/rules" -d '[{"path":"/flaky","status":503,"times":1}]' >/dev/null
echo "demo: sink listening on $sink"

admin_port=$(free_port)
OUTBOX_RETRY_BASE_MS=500 OUTBOX_LISTEN_ADDR=127.0.0.1:$admin_port "$relay_bin" run > "$work/relay.log" 2>&1 &
pids+=($!)
for _ in $(seq 200); do grep -q "relay ready" "$work/relay.log" && break; sleep 0.05; done
sed 's/^/relay: /' "$work/relay.log"
tail -n0 -f "$work/relay.log" 2>/dev/null | sed -u 's/^/relay: /' &
pids+=($!)

# show what the sink receives
/usr/bin/python3 -u - "$sink" <<'PY' &
import json, sys, time, urllib.request
sink, since = sys.argv[1], 0
while True:
    try:
        with urllib.request.urlopen(f"{sink}/_sink/requests?since={since}") as r:
            for rec in json.load(r):
                since = rec["seq"]
                key = dict((k.lower(), v) for k, v in rec["headers"]).get("x-idempotent-key", "?")
                print(f"sink:  {rec['method']} {rec['path']} -> {rec['response']['status']}  key={key}  body={rec['body']}")
    except OSError:
        pass
    time.sleep(0.2)
PY
pids+=($!)

echo "demo: relay metrics at http://127.0.0.1:$admin_port/metrics, status with: DATABASE_URL=$DATABASE_URL $relay_bin status"
echo "demo: writing sample rows to three partitions (Ctrl-C to stop)"
partitions=(0190f5a2-0000-7000-8000-00000000000a 0190f5a2-0000-7000-8000-00000000000b 0190f5a2-0000-7000-8000-00000000000c)
start=$(date +%s)
n=0
while :; do
  n=$((n + 1))
  p=${partitions[$((n % 3))]}
  path=/orders
  [ $((n % 7)) -eq 0 ] && path=/flaky
  psql_ -c "BEGIN" \
        -c "SELECT outbox_enqueue_http('$p', '$sink$path', json_build_object('order', $n, 'partition', '${p: -1}')::text, headers => '{\"Content-Type\":\"application/json\"}')" \
        -c "COMMIT" >/dev/null
  if [ $((n % 5)) -eq 0 ]; then
    psql_ -c "SELECT outbox_enqueue_http('$p', '$sink/delayed', json_build_object('order', $n, 'delayed', '2s')::text, process_after => now() + interval '2 seconds')" >/dev/null
  fi
  sleep 1
  if [ "$seconds" -gt 0 ] && [ $(( $(date +%s) - start )) -ge "$seconds" ]; then break; fi
done
echo "demo: rows in the outbox:"
psql_ -c "SELECT count(*) FILTER (WHERE processed_at IS NOT NULL) AS delivered, count(*) FILTER (WHERE processed_at IS NULL) AS pending, count(*) FILTER (WHERE attempts > 1) AS retried FROM outbox"
