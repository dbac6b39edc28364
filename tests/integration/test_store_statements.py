"""The relay's statements (src/relay/db/store.c), run directly against a migrated database with
the text the relay sends (printed by contrib/bench/print_sql.c): result shapes that the engine
reads by position, the scan's two ways of finding partitions, and the complete statement's
re-read signal after a requeue."""

import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import run_relay_command, uuid7, wait_until
from relay_util import NotifyLockHeld

SOURCE_ROOT = Path(os.environ.get("OBR_SOURCE_ROOT", Path(__file__).resolve().parents[2]))
LOCK_ID = "20000000-0000-4000-8000-000000000001"
OTHER_LOCK_ID = "20000000-0000-4000-8000-000000000002"
BUDGET = 16 << 20  # OUTBOX_FETCH_BYTES
DESTS = '[{"url": "http://127.0.0.1:9/x"}]'


def statement(name: str) -> str:
    binary = os.environ.get("OBR_PRINT_SQL_BIN")
    if not binary:
        pytest.skip("OBR_PRINT_SQL_BIN is not set (run through meson test)")
    return subprocess.run([binary, name], check=True, capture_output=True, text=True).stdout


class Statements:
    """Prepared copies of the relay's statements on one autocommit connection of db."""

    def __init__(self, db):
        self.conn = db.conn(autocommit=True)
        self.prepared = set()

    def run(self, name: str, *params):
        """EXECUTE the statement with params; returns (column names, rows)."""
        with self.conn.cursor() as cur:
            if name not in self.prepared:
                cur.execute(f"PREPARE {name} AS {statement(name)}")
                self.prepared.add(name)
            # as the relay sends them: text, arrays as literals ('{a,b}'), typed by the statement
            params = tuple("{" + ",".join(str(v) for v in p) + "}" if isinstance(p, list) else p for p in params)
            args = ", ".join(["%s"] * len(params))
            cur.execute(f"EXECUTE {name}({args})" if params else f"EXECUTE {name}", params)
            return [d[0] for d in cur.description], (cur.fetchall() if cur.description else [])


def enum_members(enum: str) -> list[str]:
    """The members of `enum obr_..._col` in src/relay/db/store.h, without the *_COLUMNS count."""
    text = (SOURCE_ROOT / "src" / "relay" / "db" / "store.h").read_text()
    body = re.search(r"enum " + enum + r" \{(.*?)\};", text, re.S).group(1)
    names = re.findall(r"^\s*(OBR_[A-Z_]+)", body, re.M)
    assert names and names[-1].endswith("_COLUMNS"), names
    return names[:-1]


def insert(db, part, *, process_after="now()", dead=False, created_at="now()"):
    key = str(uuid7())
    db.execute("INSERT INTO outbox (idempotent_key, partition_key, destinations, payload, created_at,"
               f" process_after, dead_at, last_error) VALUES (%s, %s, %s::jsonb, 'x', {created_at}, {process_after},"
               f" {'now()' if dead else 'NULL'}, {'%s' if dead else 'NULL'})",
               (key, part, DESTS, "parked by the test") if dead else (key, part, DESTS))
    return key


def test_every_result_column_the_engine_reads_is_named_in_store_h(db):
    """Each statement returns exactly the columns its enum in store.h names, in that order
    (the enums' member counts against the statements' results)."""
    st = Statements(db)
    part = str(uuid7())
    insert(db, part)
    heads = len(enum_members("obr_head_col"))
    assert heads == 11
    cols, _ = st.run("claim", LOCK_ID, [part], 4, 30000, BUDGET)
    assert len(cols) == heads
    cols, _ = st.run("advance", LOCK_ID, [part], 4, 30000, BUDGET)
    assert len(cols) == heads
    for name in ("complete", "complete_delete"):
        cols, _ = st.run(name, [], [], [], [], [], [], [], LOCK_ID, [part], 4, 30000, BUDGET, [])
        assert len(cols) == heads, name
    assert len(st.run("scan", 10, LOCK_ID)[0]) == len(enum_members("obr_scan_col"))
    assert len(st.run("renew", LOCK_ID, 30000)[0]) == len(enum_members("obr_renew_col"))
    assert len(st.run("sample")[0]) == len(enum_members("obr_sample_col"))
    assert len(st.run("retention", 3600000, 10)[0]) == len(enum_members("obr_retention_col"))


def test_the_scan_reads_through_the_indexes(db):
    """The scan's plan reaches the due-time index (its predicate, process_after IS NOT NULL, is
    stated) and the partition index (candidates' heads and the skip scan); with sequential scans
    discouraged nothing reads the outbox table whole."""
    st = Statements(db)
    with st.conn.cursor() as cur:
        cur.execute("SET enable_seqscan = off")
    st.run("scan", 10, LOCK_ID)  # prepares it
    with st.conn.cursor() as cur:
        cur.execute(f"EXPLAIN (COSTS OFF) EXECUTE scan(10, '{LOCK_ID}')")
        plan = "\n".join(r[0] for r in cur.fetchall())
    assert "outbox_pending_due" in plan and "outbox_pending_by_partition" in plan, plan
    assert "Seq Scan on outbox " not in plan and not plan.rstrip().endswith("Seq Scan on outbox"), plan


def reference_scan(db, lock_id, limit):
    """What the scan must return: partitions whose head (first pending row in delivery order) is
    due and not under another instance's live lease, oldest head first (DISTINCT ON, the
    statement the scan replaced)."""
    return [r[0] for r in db.query(
        "SELECT k::text FROM (SELECT DISTINCT ON (partition_key) partition_key AS k, process_after, retry_after"
        "  FROM outbox WHERE processed_at IS NULL AND dead_at IS NULL"
        "  ORDER BY partition_key, process_after, created_at, idempotent_key) h"
        " WHERE greatest(process_after, coalesce(retry_after, process_after)) <= now()"
        "   AND NOT EXISTS (SELECT 1 FROM outbox_lock l WHERE l.partition_key = h.k AND l.processed_at IS NULL"
        "                     AND l.processing_until >= now() AND l.lock_id <> %s::uuid)"
        " ORDER BY process_after LIMIT %s", (lock_id, limit))]


@pytest.mark.parametrize("due_partitions", [5, 1100])
def test_scan_finds_exactly_the_due_unleased_partitions(db, due_partitions):
    """Up to 1024 due rows the scan takes its candidates from the due-time index, above that it
    walks every partition (skip scan): either way the result is the reference's. Around the
    due partitions: delayed partitions, a partition whose head is delayed behind a due row,
    one whose head waits for a retry, one leased by another instance, one leased by us (it
    counts: a release lost in a crash), parked rows, and a due partition with many rows."""
    db.execute("INSERT INTO outbox (idempotent_key, partition_key, destinations, payload, created_at, process_after)"
               " SELECT gen_random_uuid(), gen_random_uuid(), %s::jsonb, 'x', now(),"
               "        now() - (i || ' ms')::interval FROM generate_series(1, %s) i", (DESTS, due_partitions))
    db.execute("INSERT INTO outbox (idempotent_key, partition_key, destinations, payload, created_at, process_after)"
               " SELECT gen_random_uuid(), ('30000000-0000-4000-8000-' || lpad(to_hex(i %% 50), 12, '0'))::uuid,"
               "        %s::jsonb, 'x', now(), now() + interval '1 hour' + (i || ' ms')::interval"
               "   FROM generate_series(1, 2000) i", (DESTS,))
    busy = str(uuid7())
    for i in range(300):
        insert(db, busy, process_after=f"now() - interval '{i} seconds'")
    behind = str(uuid7())
    insert(db, behind, process_after="now() + interval '1 minute'")
    insert(db, behind, process_after="now() + interval '2 minutes'")
    retrying = str(uuid7())
    k = insert(db, retrying, process_after="now() - interval '1 minute'")
    db.execute("UPDATE outbox SET retry_after = now() + interval '1 minute', attempts = 1 WHERE idempotent_key = %s", (k,))
    insert(db, retrying)
    theirs, ours, parked = str(uuid7()), str(uuid7()), str(uuid7())
    insert(db, theirs)
    insert(db, ours)
    insert(db, parked, dead=True)
    db.execute("INSERT INTO outbox_lock (partition_key, lock_id, processing_until) VALUES"
               " (%s, %s, now() + interval '1 minute'), (%s, %s, now() + interval '1 minute')",
               (theirs, OTHER_LOCK_ID, ours, LOCK_ID))
    db.execute("ANALYZE outbox")

    st = Statements(db)
    for limit in (3, 5000):
        _, rows = st.run("scan", limit, LOCK_ID)
        found = [r[0] for r in rows if r[0] is not None]
        assert found == reference_scan(db, LOCK_ID, limit), limit
        assert rows[-1][0] is None and rows[-1][1] is not None, "the last row carries the next due time"
    assert busy in found and ours in found
    assert not {theirs, behind, retrying, parked} & set(found)


def test_due_times_are_clamped_and_never_fail(db):
    """A head at 294276 AD, or (before 007's constraints) at 'infinity', is due in at most a day
    as far as the timers go; a '-infinity' head is due now; nothing fails."""
    db.execute("ALTER TABLE outbox DROP CONSTRAINT outbox_process_after_finite,"
               " DROP CONSTRAINT outbox_created_at_finite")
    st = Statements(db)
    far, inf, neg = str(uuid7()), str(uuid7()), str(uuid7())
    insert(db, far, process_after="'294276-12-31 23:59:59+00'", created_at="'4714-11-24 00:00:00+00 BC'")
    insert(db, inf, process_after="'infinity'", created_at="'-infinity'")
    insert(db, neg, process_after="'-infinity'", created_at="'infinity'")
    cols, rows = st.run("claim", LOCK_ID, sorted([far, inf, neg]), 4, 30000, BUDGET)
    by_part = {r[0]: dict(zip(cols, r)) for r in rows}
    day_ms = 86_400_000
    assert by_part[far]["due"] is False and by_part[far]["due_in_ms"] == day_ms
    assert by_part[inf]["due"] is False and by_part[inf]["due_in_ms"] == day_ms
    assert by_part[neg]["due"] is True and by_part[neg]["due_in_ms"] == 0
    _, rows = st.run("scan", 10, OTHER_LOCK_ID)
    assert rows == [(None, day_ms)], "nothing is due for another instance; the timer waits a day"
    cols, rows = st.run("sample")
    assert rows[0][0] == 1, "the '-infinity' row is due"


def test_sample_counts_sessions_waiting_for_the_notify_lock(db):
    """Issue 15 item 4: the sample's last column counts sessions waiting for the cluster-wide
    lock that a committing transaction which notified holds through its commit. Forced here: a
    synchronous standby that never comes makes session A wait at its commit (after NOTIFY and a
    write) with the lock held, so session B's commit after its NOTIFY waits for the lock."""
    st = Statements(db)
    _, rows = st.run("sample")
    assert rows[0][3] == 0
    with NotifyLockHeld(db) as held:
        held.waiter()
        wait_until(lambda: st.run("sample")[1][0][3] == 1, 10, "the sample to count the waiting writer")
    wait_until(lambda: st.run("sample")[1][0][3] == 0, 10, "no waiter once the commits went through")


def test_heads_fetch_at_most_the_byte_budget(db):
    """The claim, the advance and the results statement return a due row's data (destinations,
    headers, payload) only while the due rows before it in the result came to less than the
    budget: the first due row always unless the budget is 0, at most the budget plus one row;
    the rows past it keep their key and due columns, data NULL. The heads are still read
    through the partition index."""
    st = Statements(db)
    a, b = sorted([str(uuid7()), str(uuid7())])
    big = "x" * 100_000
    keys_a = [insert(db, a, process_after=f"now() - interval '{9 - i} seconds'") for i in range(3)]
    db.execute("UPDATE outbox SET payload = %s WHERE partition_key = %s", (big, a))
    (key_b,) = [insert(db, b)]

    def fetched(rows):
        return [(r[0], r[2], r[5] is not None) for r in rows]

    _, rows = st.run("claim", LOCK_ID, [a, b], 10, 30000, 150_000)
    assert [r[5] == big for r in rows[:2]] == [True, True]
    assert fetched(rows) == [(a, keys_a[0], True), (a, keys_a[1], True), (a, keys_a[2], False),
                             (b, key_b, False)]
    assert all(r[3] is None and r[4] is None for r in rows[2:]), "no data past the budget"
    assert all(r[8] for r in rows), "rows past the budget still say they are due"

    _, rows = st.run("advance", LOCK_ID, [a, b], 10, 30000, 1)
    assert fetched(rows) == [(a, keys_a[0], True), (a, keys_a[1], False), (a, keys_a[2], False),
                             (b, key_b, False)]
    assert [r[1] for r in rows] == ["held"] * 4
    _, rows = st.run("advance", LOCK_ID, [a, b], 10, 30000, 0)
    assert fetched(rows) == [(a, k, False) for k in keys_a] + [(b, key_b, False)]
    none = ([], [], [], [], [], [], [])
    _, rows = st.run("complete", *none, LOCK_ID, [b], 10, 30000, 10, [])
    assert fetched(rows) == [(b, key_b, True)]

    with st.conn.cursor() as cur:
        cur.execute("SET enable_seqscan = off")
        for name, args in (("claim", f"'{LOCK_ID}', '{{{a}}}', 10, 30000, 1000"),
                           ("advance", f"'{LOCK_ID}', '{{{a}}}', 10, 30000, 1000")):
            cur.execute(f"EXPLAIN (COSTS OFF) EXECUTE {name}({args})")
            plan = "\n".join(r[0] for r in cur.fetchall())
            assert "outbox_pending_by_partition" in plan, plan
            assert "Seq Scan on outbox " not in plan and not plan.rstrip().endswith("Seq Scan on outbox"), plan


@pytest.mark.parametrize("name", ["complete", "complete_delete"])
def test_complete_asks_for_a_reread_when_a_requeued_row_sorts_first(db, name):
    """A partition is held with rows 2..4 fetched; row 1 (parked) is requeued with `outbox-relay
    requeue` and keeps its place, before them. The results statement of row 2 then returns a
    'reread' row for the partition, so the relay re-reads its head (row 1) instead of sending
    rows 3 and 4 first; the advance returns row 1 first. Without a requeue, no such row."""
    st = Statements(db)
    part = str(uuid7())
    r1 = insert(db, part, process_after="now() - interval '4 seconds'", dead=True)
    r2 = insert(db, part, process_after="now() - interval '3 seconds'")
    r3 = insert(db, part, process_after="now() - interval '2 seconds'")
    r4 = insert(db, part, process_after="now() - interval '1 seconds'")
    cols, rows = st.run("claim", LOCK_ID, [part], 4, 30000, BUDGET)
    assert [r[2] for r in rows] == [r2, r3, r4]
    none = ([], [], [], [], [], [], [])

    # row 2 delivered, nothing requeued: no extra row
    _, rows = st.run(name, [r2], *none[1:], LOCK_ID, [], 4, 30000, BUDGET, [])
    assert rows == []

    res = run_relay_command(["requeue", "--key", r1], db.url)
    assert res.returncode == 0, res.stdout + res.stderr
    _, rows = st.run(name, [r3], *none[1:], LOCK_ID, [], 4, 30000, BUDGET, [])
    assert rows == [(part, "reread") + (None,) * 9]
    cols, rows = st.run("advance", LOCK_ID, [part], 4, 30000, BUDGET)
    assert [(r[1], r[2]) for r in rows] == [("held", r1), ("held", r4)]

    # a partition the statement advances anyway gets no reread row: the advance is the re-read
    db.execute("UPDATE outbox SET dead_at = now() WHERE idempotent_key = %s", (r1,))
    r0 = insert(db, part, process_after="now() - interval '10 seconds'")
    _, rows = st.run(name, [r4], *none[1:], LOCK_ID, [part], 4, 30000, BUDGET, [])
    assert [(r[1], r[2]) for r in rows] == [("held", r0)]


@pytest.mark.parametrize("name", ["complete", "complete_delete"])
def test_a_results_statement_applied_twice_counts_once(db, name):
    """Issue 12 item 6: a results statement that committed but whose answer was lost with its
    connection is sent again after the reconnect. Its failures carry the attempts each row was
    fetched with, so the second application changes nothing: a retry is counted once, a
    parking happens once (its dead_at and error stay the first's), a success stays done."""
    st = Statements(db)
    part, parked_part, done_part = str(uuid7()), str(uuid7()), str(uuid7())
    retried, parked, done = insert(db, part), insert(db, parked_part), insert(db, done_part)
    db.execute("UPDATE outbox SET attempts = 4 WHERE idempotent_key = %s", (parked,))
    st.run("claim", LOCK_ID, [part, parked_part, done_part], 4, 30000, BUDGET)
    for _ in range(2):
        st.run(name, [done], [retried, parked], '{"first error","parked error"}', [1000, 0], ["f", "t"],
               '{"{}","{}"}', ["t", "t"], LOCK_ID, [], 4, 30000, BUDGET, [0, 4])
    rows = {r["idempotent_key"]: r for r in db.query_dicts(
        "SELECT idempotent_key::text, attempts, dead_at, last_error, processed_at FROM outbox")}
    assert rows[retried]["attempts"] == 1 and rows[retried]["dead_at"] is None
    assert rows[parked]["attempts"] == 5 and rows[parked]["dead_at"] is not None
    if name == "complete":
        assert rows[done]["processed_at"] is not None and rows[done]["attempts"] == 1
    else:
        assert done not in rows
    # the relay's next attempt of the retried row (fetched again with attempts 1) counts
    st.run(name, [], [retried], '{"second error"}', [1000], ["f"], '{"{}"}', ["t"], LOCK_ID, [], 4, 30000,
           BUDGET, [1])
    assert db.scalar("SELECT attempts FROM outbox WHERE idempotent_key = %s", (retried,)) == 2
    assert db.scalar("SELECT last_error FROM outbox WHERE idempotent_key = %s", (retried,)) == "second error"


def test_a_row_requeued_while_its_partition_is_held_keeps_its_place(db, sink, relay):
    """End to end: row 1 is parked, rows 2..4 are fetched by the relay, row 2 is in flight (its
    answer is delayed) when row 1 is requeued. Row 1 must go next, before rows 3 and 4 (README:
    a requeued row keeps its place); only the row in flight may precede it."""
    from relay_util import env, http_dest, key_of

    sink.rules([{"path": "/p/2", "delay_ms": 1500}])
    r = relay(db, env=env())
    part = str(uuid7())
    conn = db.conn(autocommit=False)
    keys = []
    with conn.cursor() as cur:
        for i in range(1, 5):
            keys.append(str(uuid7()))
            cur.execute("INSERT INTO outbox (idempotent_key, partition_key, destinations, payload, process_after,"
                        " dead_at, last_error) VALUES (%s, %s, %s::jsonb, %s, now() - %s * interval '1 second', "
                        + ("now(), 'parked by the test')" if i == 1 else "NULL, NULL)"),
                        (keys[-1], part, f'[{{"url": "{sink.url(f"/p/{i}")}"}}]', str(i), 10 - i))
    conn.commit()
    conn.close()
    wait_until(lambda: db.scalar("SELECT count(*) FROM outbox_lock WHERE partition_key = %s"
                                 " AND processed_at IS NULL", (part,)) == 1, 10, "the partition to be held")
    res = run_relay_command(["requeue", "--key", keys[0]], db.url)
    assert res.returncode == 0, res.stdout + res.stderr
    assert db.scalar("SELECT processed_at IS NULL FROM outbox WHERE idempotent_key = %s", (keys[1],)), \
        "row 2 was done before the requeue: too slow a machine"
    recs = sink.wait_for_count(4, timeout=20)
    assert [key_of(x) for x in recs] == [keys[1], keys[0], keys[2], keys[3]]
    assert r.stop() == 0
