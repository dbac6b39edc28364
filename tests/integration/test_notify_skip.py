"""Issue 14: writers do not NOTIFY for a partition the relay holds (sql/010), and the relay's
last look after a release (src/relay/engine/lastlook.c) delivers the row of a writer that
skipped its NOTIFY and committed after the release. A busy partition lingers (stays held after
its last row, src/relay/engine/linger.c), so its writers skip their NOTIFY, and the relay finds
their rows by reading the lingering partitions. The relays here poll once an hour
(relay_util.PUSH_ENV), so a row that arrives did not wait for the fallback poll."""

import json
import random
import select
import threading
import time

import pytest

from conftest import uuid7, wait_until
from relay_util import env, http_dest, insert, instance_id, metric, wait_no_leases, wait_processed

HOLD_MS = 1500  # the sink answers the first row this late: its partition stays held meanwhile
# partitions linger whatever the rate (the tests' writers are slow), this long after a row
LINGER = {"OUTBOX_LINGER_MIN_RATE": "0", "OUTBOX_LINGER_MS": "1500"}
NO_LINGER = {"OUTBOX_LINGER_MS": "0"}


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
    relay(db, env=env(**NO_LINGER))
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
    relay(db, env=env(**NO_LINGER))
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


@pytest.mark.parametrize("linger", [NO_LINGER, {"OUTBOX_LINGER_MIN_RATE": "0", "OUTBOX_LINGER_MS": "20"}],
                         ids=["released-at-once", "lingering-20ms"])
def test_writers_hammering_releases_leave_nothing_to_the_poll(db, sink, relay, linger):
    """Four writers commit single-row transactions into 4 partitions, with an open transaction
    now and then and always at the end, while the relay claims and releases them all the time
    (at once, or after lingering 20 ms): every row arrives, none waits for the poll (an hour
    away)."""
    relay(db, env=env(**linger))
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


def lease_count(db, part: str) -> int:
    return db.scalar("SELECT count(*) FROM outbox_lock WHERE partition_key = %s::uuid AND processed_at IS NULL",
                     (part,))


def make_it_linger(db, sink, part: str) -> list[str]:
    """Writes rows into part, one at a time, until one is delivered and the partition stays
    held: a partition lingers once its previous row is recent (the first row of a partition
    is released at once; with several instances, the next row may go to another one)."""
    written = []
    for i in range(20):
        key = insert(db, [row(sink, "/linger", part, str(len(written)))])[0]["idempotent_key"]
        written.append(key)
        wait_processed(db, [key])
        if lease_count(db, part) == 1:
            return written
    raise AssertionError("the partition never lingered")


def test_a_lingering_partition_takes_rows_without_notifies_then_is_released(db, sink, relay):
    """After its row is delivered a busy partition stays held: the next rows' writers send no
    NOTIFY, the relay still delivers them in order, and once no row came for OUTBOX_LINGER_MS
    the partition is released (a row after that notifies again)."""
    proc = relay(db, env=env(**LINGER))
    listener = Listener(db)
    part = str(uuid7())
    # the first row: released at once (nothing says the partition is busy); the second, written
    # within OUTBOX_LINGER_MS of it: the partition lingers after it
    first = make_it_linger(db, sink, part)
    assert len(first) == 2, "a partition lingered after its first row, or not after its second"
    wait_until(lambda: listener.poll().get(part, 0) == 2, 10, "the two rows' NOTIFYs", interval=0.01)
    assert metric(proc, "outbox_relay_partitions_lingering") == 1

    later = []
    for i in range(2, 22):
        later += insert(db, [row(sink, "/linger", part, str(i))])
        wait_processed(db, [later[-1]["idempotent_key"]], timeout=10)
    assert listener.poll().get(part, 0) == 2, f"writers of the lingering partition notified: {listener.seen}"
    bodies = [r["body"] for r in sink.requests() if r["path"] == "/linger"]
    assert [b.decode() if isinstance(b, bytes) else b for b in bodies] == [str(i) for i in range(22)]

    # no row for OUTBOX_LINGER_MS: released, and the next writer notifies
    wait_until(lambda: lease_count(db, part) == 0, 10, "the partition's release after the linger",
               interval=0.02)
    assert metric(proc, "outbox_relay_partitions_lingering") == 0
    after = insert(db, [row(sink, "/linger", part, "after")])[0]["idempotent_key"]
    wait_processed(db, [after], timeout=10)
    wait_until(lambda: listener.poll().get(part, 0) == 3, 10, "a NOTIFY once released", interval=0.01)
    listener.close()


def test_writer_open_across_the_end_of_the_linger_is_delivered_promptly(db, sink, relay):
    """A writer inserts into a lingering partition (no NOTIFY) and stays open until the linger
    is over and the partition released: the last look delivers its row, not the poll."""
    relay(db, env=env(**LINGER))
    listener = Listener(db)
    part = str(uuid7())
    written = make_it_linger(db, sink, part)
    notified = len(written)  # each found the partition free
    wait_until(lambda: listener.poll().get(part, 0) == notified, 10, "the rows' NOTIFYs", interval=0.01)
    writer = db.conn(autocommit=False)
    late = insert_open(writer, sink, part, "late")   # trigger ran under the lingering lease
    wait_until(lambda: lease_count(db, part) == 0, 10, "the release after the linger", interval=0.02)
    writer.commit()
    wait_processed(db, [late], timeout=10)           # the poll would take an hour
    listener.poll()
    assert listener.seen.get(part, 0) == notified, f"the late writer notified: {listener.seen}"
    writer.close()
    listener.close()


def test_a_lingering_instance_stops_while_a_writer_is_open(db, sink, relay):
    """The instance a partition lingers on stops while a writer that skipped its NOTIFY is
    still open: the stop NOTIFYs the released partition, and the other instance delivers the
    writer's row once it commits."""
    relays = [relay(db, env=env(**LINGER)), relay(db, env=env(**LINGER))]
    part = str(uuid7())
    make_it_linger(db, sink, part)
    holder_id = db.scalar("SELECT lock_id::text FROM outbox_lock WHERE partition_key = %s::uuid"
                          " AND processed_at IS NULL", (part,))
    assert holder_id, "the partition does not linger"
    holder = next(r for r in relays if instance_id(r) == holder_id)
    other = next(r for r in relays if r is not holder)
    writer = db.conn(autocommit=False)
    late = insert_open(writer, sink, part, "late")
    assert holder.stop() == 0
    writer.commit()
    wait_processed(db, [late], timeout=10)
    assert other.alive()
    writer.close()
