"""LISTEN that checks itself (issue 15 item 3). Behind PgBouncer in transaction pooling, LISTEN
succeeds on whichever server session ran it and the relay then hears nothing: rows would wait
for the fallback poll. The relay notifies itself after every LISTEN and, when it hears nothing,
says so (log, /ready, metric) and polls every second until a later self-test passes."""

import time

from conftest import wait_until
from relay_util import (LISTEN_APP, WORK_APP, NotifyLockHeld, assert_not_within, env, http_dest, insert, keys,
                        metric, ready_code, ready_text, wait_processed)

HOUR_MS = 3_600_000


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


NOTIFY_LOCK_WAIT_BY_APP = ("SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
                           " WHERE l.locktype = 'object' AND l.classid = 'pg_database'::regclass"
                           " AND l.objid = 0 AND NOT l.granted AND a.application_name = %s")


def test_selftest_deadline_runs_from_its_commit(db, sink, relay):
    """The relay's own NOTIFY can wait at its commit for the notify commit lock (busy writers)
    longer than the self-test's 5 s. That says nothing about LISTEN: the relay stays ready and
    does not declare LISTEN deaf; once the lock is free its notification commits and is heard."""
    r = relay(db, env=env(OUTBOX_POLL_INTERVAL_MS=HOUR_MS, OUTBOX_LOG_LEVEL="info"))
    wait_until(lambda: metric(r, "outbox_relay_listen_selftest_ok") == 1, 15, "the self-test to pass")
    with NotifyLockHeld(db):
        # a new LISTEN: the relay tests itself again; its NOTIFY's commit waits for the lock
        db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                   " WHERE datname = %s AND application_name = %s", (db.name, LISTEN_APP))
        wait_until(lambda: db.scalar(NOTIFY_LOCK_WAIT_BY_APP, (WORK_APP,)) == 1, 20,
                   "the relay's self-test NOTIFY to wait for the notify commit lock")
        # longer than the 5 s deadline, which must not have started
        assert_not_within(lambda: ready_code(r) != 200 or "LISTEN heard nothing" in r.log(), 8,
                          "a verdict on LISTEN while its own NOTIFY waited to commit")
    wait_until(lambda: db.scalar(NOTIFY_LOCK_WAIT_BY_APP, (WORK_APP,)) == 0, 10, "the relay's NOTIFY to commit")
    assert ready_code(r) == 200 and metric(r, "outbox_relay_listen_selftest_ok") == 1
    assert "LISTEN heard nothing" not in r.log()


def test_notify_lock_waiters_on_metrics(db, relay):
    """End to end: the relay's /metrics shows a writer waiting for the notify commit lock (poll
    mode: the relay never notifies, so its own sampling never waits for that lock)."""
    r = relay(db, env=env(OUTBOX_MODE="poll", OUTBOX_POLL_INTERVAL_MS=100))
    wait_until(lambda: metric(r, "outbox_relay_notify_lock_waiters") == 0, 20, "the gauge to read 0")
    with NotifyLockHeld(db) as held:
        held.waiter()  # a second writer: its commit waits for the lock
        wait_until(lambda: (metric(r, "outbox_relay_notify_lock_waiters") or 0) >= 1, 20,
                   "the gauge to count the waiting writer")
