"""Issue 14: writers do not NOTIFY for a partition the relay holds (sql/010), and the relay's
last look after a release (src/relay/engine/lastlook.c) delivers the row of a writer that
skipped its NOTIFY and committed after the release. The relays here poll once an hour
(relay_util.PUSH_ENV), so a row that arrives did not wait for the fallback poll."""

import json
import random
import select
import threading
import time

from conftest import uuid7, wait_until
from relay_util import env, http_dest, insert, instance_id, wait_no_leases, wait_processed

HOLD_MS = 1500  # the sink answers the first row this late: its partition stays held meanwhile


class Listener:
    """A session LISTENing on the relay's channel, counting notifications per payload."""

    def __init__(self, db) -> None:
        self.conn = db.conn(autocommit=True)
        with self.conn.cursor() as cur:
            cur.execute("LISTEN outbox")
        self.seen: dict[str, int] = {}

    def poll(self) -> dict[str, int]:
        if select.select([self.conn], [], [], 0)[0]:
            self.conn.poll()
        while self.conn.notifies:
            n = self.conn.notifies.pop(0)
            self.seen[n.payload] = self.seen.get(n.payload, 0) + 1
        return self.seen

    def close(self) -> None:
        self.conn.close()


def row(sink, path: str, part: str, payload: str) -> dict:
    return {"partition_key": part, "destinations": [http_dest(sink.url(path))], "payload": payload}


def hold_partition(db, sink, listener, part: str) -> str:
    """Writes a row the sink answers late and waits until the relay holds its partition; that
    row's own NOTIFY (the partition was free) is received and forgotten."""
    first = insert(db, [row(sink, "/held/first", part, "first")])[0]["idempotent_key"]
    wait_until(lambda: db.scalar("SELECT count(*) FROM outbox_lock WHERE partition_key = %s::uuid"
                                 " AND processed_at IS NULL", (part,)) == 1,
               10, "the relay to hold the partition", interval=0.01)
    wait_until(lambda: listener.poll().get(part, 0) == 1, 10, "the first row's NOTIFY", interval=0.01)
    listener.seen.clear()
    return first


def insert_open(conn, sink, part: str, payload: str) -> str:
    """INSERTs one row in conn's open transaction (its trigger runs now); returns its key."""
    key = str(uuid7())
    with conn.cursor() as cur:
        cur.execute("INSERT INTO outbox (idempotent_key, partition_key, destinations, payload)"
                    " VALUES (%s, %s, %s::jsonb, %s)",
                    (key, part, json.dumps([http_dest(sink.url("/held/next"))]), payload))
    return key


def test_writer_paused_across_the_release_is_delivered_promptly(db, sink, relay):
    """A writer inserts while the partition is held (so it skips its NOTIFY), the relay finishes
    the partition and releases it, then the writer commits: its row arrives without a poll."""
    sink.rules([{"prefix": "/held/first", "delay_ms": HOLD_MS}])
    relay(db, env=env())
    listener = Listener(db)
    part = str(uuid7())
    first = hold_partition(db, sink, listener, part)

    writer = db.conn(autocommit=False)
    late = insert_open(writer, sink, part, "late")   # trigger ran under the live lease
    wait_processed(db, [first])
    wait_no_leases(db)                               # released while the writer is still open
    writer.commit()
    wait_processed(db, [late], timeout=10)           # the poll would take an hour
    assert [r["body"] for r in sink.requests()][-1] in ("late", b"late")
    assert listener.poll().get(part, 0) == 0, "the writer notified for a held partition"
    writer.close()
    listener.close()


def test_no_notify_for_a_held_partition(db, sink, relay):
    """Writers of a held partition send no NOTIFY; writers of a free partition, and writers in
    REPEATABLE READ (whose snapshot may predate a release), still do."""
    sink.rules([{"prefix": "/held/first", "delay_ms": HOLD_MS}])
    relay(db, env=env())
    listener = Listener(db)
    held, free = str(uuid7()), str(uuid7())
    first = hold_partition(db, sink, listener, held)

    written = []
    for i in range(5):
        written += insert(db, [row(sink, "/held/next", held, f"held {i}")])
    written += insert(db, [row(sink, "/free", free, "free")])
    wait_until(lambda: listener.poll().get(free, 0) == 1, 10, "the free partition's NOTIFY",
               interval=0.01)
    rr = db.conn(autocommit=False)
    with rr.cursor() as cur:
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    rr_key = insert_open(rr, sink, held, "repeatable read")
    rr.commit()
    rr.close()
    wait_until(lambda: listener.poll().get(held, 0) == 1, 10, "the REPEATABLE READ writer's NOTIFY",
               interval=0.01)
    wait_processed(db, [first] + [r["idempotent_key"] for r in written] + [rr_key], timeout=20)
    # the five READ COMMITTED writers of the held partition sent nothing
    assert listener.poll().get(held, 0) == 1, listener.seen
    listener.close()


def test_writer_paused_across_a_shutdown_is_delivered_by_another_instance(db, sink, relay):
    """The instance holding the partition stops while a writer that skipped its NOTIFY is still
    open: the stopping instance NOTIFYs the partitions it releases, the other instance claims
    one, and its own last look after releasing delivers the writer's row once it commits."""
    sink.rules([{"prefix": "/held/first", "delay_ms": HOLD_MS}])
    relays = [relay(db, env=env()), relay(db, env=env())]
    listener = Listener(db)
    part = str(uuid7())
    first = hold_partition(db, sink, listener, part)
    holder_id = db.scalar("SELECT lock_id::text FROM outbox_lock WHERE partition_key = %s::uuid"
                          " AND processed_at IS NULL", (part,))
    holder = next(r for r in relays if instance_id(r) == holder_id)
    other = next(r for r in relays if r is not holder)

    writer = db.conn(autocommit=False)
    late = insert_open(writer, sink, part, "late")   # skipped: the partition is held
    assert holder.stop() == 0                        # finishes the first row, releases, exits
    wait_processed(db, [first])
    wait_until(lambda: listener.poll().get(part, 0) >= 1, 10, "the stopping instance's NOTIFY",
               interval=0.01)
    writer.commit()
    wait_processed(db, [late], timeout=10)           # the poll would take an hour
    assert other.alive()
    writer.close()
    listener.close()


def test_writers_hammering_releases_leave_nothing_to_the_poll(db, sink, relay):
    """Four writers commit single-row transactions into 4 partitions, with an open transaction
    now and then and always at the end, while the relay claims and releases them all the time:
    every row arrives, none waits for the poll (an hour away)."""
    relay(db, env=env())
    parts = [str(uuid7()) for _ in range(4)]
    written, errors = [], []
    lock = threading.Lock()

    def writer(seed):
        rng = random.Random(seed)
        conn = db.conn(autocommit=False)
        try:
            for i in range(60):
                part = rng.choice(parts)
                key = insert_open(conn, sink, part, f"{seed}.{i}")
                if i == 59:
                    time.sleep(0.1)   # the last one: no later writer's NOTIFY covers for it
                elif rng.random() < 0.2:
                    time.sleep(rng.uniform(0, 0.02))   # a writer between its trigger and commit
                conn.commit()
                with lock:
                    written.append(key)
        except Exception as e:  # reported below
            errors.append(e)
        finally:
            conn.close()

    threads = [threading.Thread(target=writer, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    wait_processed(db, written, timeout=20)
