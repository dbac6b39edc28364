"""The LISTEN self-test (issue 15, section 3): behind PgBouncer in transaction pooling LISTEN
succeeds and then hears nothing. The relay notifies itself after LISTEN, notices that its
notification never arrives, says so (log, /ready, /metrics) and polls every second instead of
leaving rows to the fallback poll. With a direct connection the self-test passes. And the
notify commit lock in sight (section 4): the gauge of writers waiting for it."""

import contextlib
import json
import threading
import urllib.error
import urllib.request

from conftest import uuid7, wait_until
from relay_util import env, http_dest, insert, keys, metric, wait_processed, wait_scanned

# The fallback poll is far away: a row delivered within DELIVERY_TIMEOUT_S was not found by it.
FALLBACK_POLL_MS = 60_000
SELFTEST_MS = 2000
# Generous (CI machines are slow), but well below the fallback poll: without the self-test the
# rows below wait the full 60 s.
DELIVERY_TIMEOUT_S = 20


def ready_answer(relay_proc) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(relay_proc.http_url("/ready"), timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def rows_for(sink, n: int) -> list[dict]:
    return [{"partition_key": str(uuid7()), "destinations": [http_dest(sink.url("/selftest"))],
             "payload": json.dumps({"i": i})} for i in range(n)]


def test_listen_through_transaction_pooler_falls_back_to_polling(db, sink, pgbouncer, relay):
    """Listen mode through PgBouncer pool_mode=transaction: the self-test fails, the relay says
    why (error log naming the pooler, /ready 503 with the reason, the metric 0) and rows written
    afterwards arrive within seconds, not at the 60 s fallback poll."""
    # One server connection: PgBouncer 1.18 does not carry protocol-level prepared statements
    # between server connections (1.21's max_prepared_statements does), and listen mode prepares
    # its statements once per connection. One server connection keeps them valid; the LISTEN it
    # ran still reaches no client, as with any pool size.
    bouncer = pgbouncer(default_pool_size=1)
    r = relay(bouncer.url(db.name), env=env(OUTBOX_POLL_INTERVAL_MS=FALLBACK_POLL_MS,
                                             OUTBOX_LISTEN_SELFTEST_MS=SELFTEST_MS))
    wait_scanned(r, 1)
    written = insert(db, rows_for(sink, 5))
    wait_processed(db, keys(written), timeout=DELIVERY_TIMEOUT_S)

    code, body = ready_answer(r)
    assert code == 503 and "self-test failed" in body.get("reason", ""), (code, body)
    assert metric(r, "outbox_relay_listen_selftest_ok") == 0
    # after the verdict the relay keeps polling every second: later rows arrive too
    more = insert(db, rows_for(sink, 5))
    wait_processed(db, keys(more), timeout=DELIVERY_TIMEOUT_S)
    log = r.log()
    assert "LISTEN self-test failed" in log and "pool_mode=transaction" in log, log[-3000:]
    assert r.alive()


def test_listen_direct_selftest_passes(db, sink, relay):
    """A direct connection: the relay's own notification comes back, the metric reads 1, /ready
    is 200 and nothing is logged as failed."""
    r = relay(db, env=env(OUTBOX_POLL_INTERVAL_MS=FALLBACK_POLL_MS, OUTBOX_LISTEN_SELFTEST_MS=SELFTEST_MS))
    wait_until(lambda: metric(r, "outbox_relay_listen_selftest_ok") == 1, 10, "the self-test to pass")
    assert ready_answer(r)[0] == 200
    # the self-test's notification is not taken for a partition
    log = r.log()
    assert "self-test failed" not in log and "is not a partition key" not in log, log[-3000:]
    assert metric(r, "outbox_relay_notifications_total") == 0
    # and notifications still deliver
    written = insert(db, rows_for(sink, 3))
    wait_processed(db, keys(written), timeout=DELIVERY_TIMEOUT_S)


def test_poll_mode_has_no_selftest(db, relay):
    """Poll mode neither tests LISTEN nor shows the metric."""
    r = relay(db, env=env(OUTBOX_MODE="poll", OUTBOX_POLL_INTERVAL_MS=100))
    wait_scanned(r, 1)
    assert metric(r, "outbox_relay_listen_selftest_ok") is None
    assert ready_answer(r)[0] == 200


NOTIFY_LOCK_WAITERS_SQL = ("SELECT count(*) FILTER (WHERE granted), count(*) FILTER (WHERE NOT granted)"
                           " FROM pg_locks WHERE locktype = 'object'"
                           " AND classid = 'pg_database'::regclass AND objid = 0")


def test_notify_lock_waiters_gauge(db, pg_cluster, relay):
    """outbox_relay_notify_lock_waiters reads 0 when no writer waits, and counts a writer whose
    NOTIFY waits for the commit lock another notifying transaction holds. The holder is kept in
    its commit by synchronous replication to a standby that does not exist (the notify lock is
    held until the commit ends); resetting synchronous_standby_names releases it."""
    # poll mode: the relay itself never notifies, so its sampling never waits for the lock
    r = relay(db, env=env(OUTBOX_MODE="poll", OUTBOX_POLL_INTERVAL_MS=100))
    wait_until(lambda: metric(r, "outbox_relay_notify_lock_waiters") == 0, 20, "the gauge to read 0")

    def system(*settings: str) -> None:
        with contextlib.closing(pg_cluster.connect()) as c, c.cursor() as cur:
            for s in settings:
                cur.execute(s)
            cur.execute("SELECT pg_reload_conf()")

    writers, threads, errors = [], [], []

    def notify_and_commit(conn):
        try:
            with conn.cursor() as cur:
                cur.execute("SET synchronous_commit = on")
                # a transaction that wrote nothing but its NOTIFY would not wait for the standby
                cur.execute("INSERT INTO obr_lock_scratch VALUES (1)")
                cur.execute("NOTIFY obr_lock_test")
            conn.commit()
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    def start_writer():
        conn = db.conn(autocommit=False)
        writers.append(conn)
        t = threading.Thread(target=notify_and_commit, args=(conn,), daemon=True)
        threads.append(t)
        t.start()

    db.execute("CREATE TABLE obr_lock_scratch (x int)")
    # everyone else keeps committing locally
    system("ALTER SYSTEM SET synchronous_commit = 'local'",
           "ALTER SYSTEM SET synchronous_standby_names = 'obr_no_such_standby'")
    try:
        start_writer()
        wait_until(lambda: db.query(NOTIFY_LOCK_WAITERS_SQL)[0] == (1, 0), 10,
                   "the first writer to hold the notify lock in its commit")
        start_writer()
        wait_until(lambda: db.query(NOTIFY_LOCK_WAITERS_SQL)[0] == (1, 1), 10,
                   "the second writer to wait for the notify lock")
        wait_until(lambda: (metric(r, "outbox_relay_notify_lock_waiters") or 0) >= 1, 20,
                   "the gauge to count the waiting writer")
    finally:
        system("ALTER SYSTEM RESET synchronous_standby_names", "ALTER SYSTEM RESET synchronous_commit")
        for t in threads:
            t.join(30)
        for c in writers:
            c.close()
    assert not errors, errors
    assert all(not t.is_alive() for t in threads)
