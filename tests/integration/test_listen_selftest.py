"""LISTEN that checks itself (issue 15 item 3). Behind PgBouncer in transaction pooling, LISTEN
succeeds on whichever server session ran it and the relay then hears nothing: rows would wait
for the fallback poll. The relay notifies itself after every LISTEN and, when it hears nothing,
says so (log, /ready, metric) and polls every second until a later self-test passes."""

import time
import urllib.error
import urllib.request

from conftest import wait_until
from relay_util import env, http_dest, insert, keys, metric, ready_code, wait_processed

HOUR_MS = 3_600_000


def ready_text(r) -> str:
    try:
        with urllib.request.urlopen(r.http_url("/ready"), timeout=2) as resp:
            return resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.read().decode()


def test_direct_connection_passes_the_selftest(db, sink, relay):
    r = relay(db, env=env(OUTBOX_POLL_INTERVAL_MS=HOUR_MS))
    wait_until(lambda: metric(r, "outbox_relay_listen_selftest_ok") == 1, 15, "the self-test to pass")
    assert ready_code(r) == 200
    rows = insert(db, [{"destinations": [http_dest(sink.url("/direct"))], "payload": "d"}])
    wait_processed(db, keys(rows), timeout=10)  # pushed: the poll is an hour away
    assert "LISTEN heard nothing" not in r.log()


def test_listen_through_a_transaction_pooler_falls_back_to_polling(db, sink, pgbouncer, relay):
    """Listen mode pointed at PgBouncer in transaction pooling, the fallback poll an hour away:
    rows are delivered within seconds anyway, and the operator is told why."""
    bouncer = pgbouncer()
    r = relay(bouncer.url(db.name), env=env(OUTBOX_POLL_INTERVAL_MS=HOUR_MS, OUTBOX_LOG_LEVEL="info"))
    wait_until(lambda: metric(r, "outbox_relay_listen_selftest_ok") == 0, 20, "the self-test to fail")
    assert "LISTEN heard nothing" in r.log() and "OUTBOX_MODE=poll" in r.log()
    assert ready_code(r) == 503 and "LISTEN hears no notifications" in ready_text(r)
    t0 = time.monotonic()
    rows = insert(db, [{"destinations": [http_dest(sink.url(f"/pooled/{i}"))], "payload": str(i)}
                       for i in range(20)])
    # the self-test failed: the relay polls every second (not every hour)
    wait_processed(db, keys(rows), timeout=30)
    assert time.monotonic() - t0 < 60, "delivered by the fallback poll, not by the relay's own polling"
    assert {rec["path"] for rec in sink.requests()} >= {f"/pooled/{i}" for i in range(20)}
