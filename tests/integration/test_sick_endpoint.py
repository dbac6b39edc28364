"""One sick endpoint must not slow the healthy ones (issue 15 item 2); the per-host limit holds.

200 partitions whose endpoint never answers (3 s timeout) next to 50 partitions of a healthy
endpoint: the healthy rows keep arriving promptly (a host at OUTBOX_HOST_MAX_IN_FLIGHT takes no
slot of OUTBOX_MAX_IN_FLIGHT), and the circuit breaker keeps the sick rows from using up their
failure limit: once the host's circuit is open they wait without spending attempts, and one
probe at a time tests the host. Before, up to OUTBOX_MAX_IN_FLIGHT partitions all waited on the
sick host, the healthy rows waited behind them, and every sick row was parked within seconds.

The latency bound is generous (1 s where the issue's goal is 100 ms, measured by the printed
figures on a quiet machine): the suite runs under sanitizers on a shared machine; without the
fix the healthy rows waited 3 s and more."""

import threading
import time

from conftest import uuid7, wait_until
from relay_util import env, http_dest, insert, keys, metric, rows_by_key, wait_processed

SICK_PARTITIONS = 200
HEALTHY_PARTITIONS = 50
OUTAGE_S = 30
FAILURE_LIMIT = 3


def test_a_sick_endpoint_harms_no_one(db, sink, make_sink, relay):
    sick = make_sink()
    sick.rules([{"prefix": "/", "delay_ms": 600_000}])  # accepts, never answers
    r = relay(db, env=env(OUTBOX_HTTP_TIMEOUT_MS=3000, OUTBOX_FAILURE_LIMIT=FAILURE_LIMIT,
                          OUTBOX_RETRY_BASE_MS=200, OUTBOX_RETRY_MAX_MS=1000, OUTBOX_POLL_INTERVAL_MS=1000,
                          OUTBOX_CIRCUIT_FAILURES=5, OUTBOX_LOG_LEVEL="info"))
    t0 = time.monotonic()
    sick_rows = insert(db, [{"partition_key": str(uuid7()), "destinations": [http_dest(sick.url(f"/s/{i}"))],
                             "payload": str(i)} for i in range(SICK_PARTITIONS)])

    healthy_parts = [str(uuid7()) for _ in range(HEALTHY_PARTITIONS)]
    healthy_keys: list[str] = []
    stop = threading.Event()

    def write_healthy():
        i = 0
        while not stop.is_set():
            part = healthy_parts[i % HEALTHY_PARTITIONS]
            healthy_keys.extend(keys(insert(db, [{"partition_key": part, "payload": str(i),
                                                  "destinations": [http_dest(sink.url(f"/h/{i}"))]}])))
            i += 1
            stop.wait(0.04)  # about 25 rows a second

    writer = threading.Thread(target=write_healthy, daemon=True)
    writer.start()
    try:
        wait_until(lambda: metric(r, "outbox_relay_circuits_open") == 1, 20, "the sick host's circuit to open")
        wait_until(lambda: time.monotonic() - t0 >= OUTAGE_S, OUTAGE_S + 5, "the outage to last", interval=0.5)
    finally:
        stop.set()
        writer.join(timeout=10)
    done = wait_processed(db, healthy_keys, timeout=30)

    # healthy rows: created_at (the database's clock) to arrival at the sink (the same host's clock)
    arrived = {rec["path"]: rec["time_us"] / 1e6 for rec in sink.requests()}
    lat = sorted(arrived[f"/h/{row['payload']}"] - row["created_at"].timestamp() for row in done.values())
    p50, p99 = lat[len(lat) // 2], lat[int(len(lat) * 0.99) - 1]
    print(f"healthy rows: {len(lat)}, latency p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
    assert len(lat) >= 300
    assert p99 < 1.0, f"healthy p99 {p99:.3f} s next to a sick endpoint"

    # sick rows: none parked, none near its failure limit, although the host never answered
    sick_state = rows_by_key(db, keys(sick_rows)).values()
    assert not [s for s in sick_state if s["dead_at"] is not None], "sick rows were parked"
    attempts = sorted(s["attempts"] for s in sick_state)
    print(f"sick rows: attempts max {attempts[-1]}, spent by {sum(1 for a in attempts if a)} rows")
    assert attempts[-1] < FAILURE_LIMIT
    assert metric(r, "outbox_relay_circuit_deferred_total") > 0
    assert "circuit open for host" in r.log()


def _max_overlap(records):
    """The most requests a sink held at once ([time_us, answered_us) spans)."""
    events = sorted([(x["time_us"], 1) for x in records] + [(x["answered_us"], -1) for x in records],
                    key=lambda e: (e[0], e[1]))
    most = now = 0
    for _, d in events:
        now += d
        most = max(most, now)
    return most


def test_host_max_in_flight(db, sink, make_sink, relay):
    """A slow host (1 s per answer) with 16 partitions, OUTBOX_MAX_IN_FLIGHT=8 and
    OUTBOX_HOST_MAX_IN_FLIGHT=3: the slow host never holds more than 3 requests at once, and the
    healthy host's 16 rows are all delivered while the slow host's are still going out."""
    slow = make_sink()
    slow.rules([{"status": 200, "delay_ms": 1000}])
    n = 16
    relay(db, env=env(OUTBOX_MAX_IN_FLIGHT=8, OUTBOX_HOST_MAX_IN_FLIGHT=3))
    slow_rows = insert(db, [{"partition_key": str(uuid7()), "payload": "s",
                             "destinations": [http_dest(slow.url(f"/s{i}"))]} for i in range(n)])
    healthy_rows = insert(db, [{"partition_key": str(uuid7()), "payload": "h",
                                "destinations": [http_dest(sink.url(f"/h{i}"))]} for i in range(n)])
    wait_processed(db, keys(healthy_rows), timeout=20)
    done = [x for x in rows_by_key(db, keys(slow_rows)).values() if x["processed_at"] is not None]
    # 16 answers of 1 s, 3 at a time, take over 5 s; the healthy rows need well under that
    assert len(done) < n, "the healthy rows waited for the slow host"
    wait_processed(db, keys(slow_rows), timeout=30)
    records = slow.requests()
    assert len(records) == n
    assert _max_overlap(records) <= 3, f"{_max_overlap(records)} requests at once at the slow host"
