"""Order per partition and exactly-once-when-nothing-crashes, under concurrency: several relay
instances, concurrent writers, late commits, and poll-only mode through PgBouncer."""

import json
import random
import threading

import psycopg2.errors
import pytest

from conftest import body_bytes, uuid7, wait_until
from relay_util import (LISTEN_APP, assert_each_once, assert_not_within, env, http_dest,
                        insert, insert_on, keys, relay_backends, wait_claim_blocked_or_done,
                        wait_no_leases, wait_processed, wait_scanned)


def assert_partition_order(records, expected_counts):
    """records: sink records whose JSON bodies carry {"p": partition, "s": sequence}. For every
    partition the sequences arrive strictly increasing (by the sink's arrival seq) and complete."""
    seen = {}
    for rec in sorted(records, key=lambda r: r["seq"]):
        body = json.loads(rec["body"])
        seen.setdefault(body["p"], []).append(body["s"])
    assert set(seen) == set(expected_counts), "partitions at the sink differ from those written"
    bad = {p: s for p, s in seen.items() if s != list(range(expected_counts[p]))}
    assert not bad, (f"{len(bad)} partitions out of order or incomplete, e.g. "
                     + "; ".join(f"{p}: {s}" for p, s in list(bad.items())[:3]))


def concurrent_writers(db, sink_url, parts, rows_per_part, nthreads, path_prefix):
    """nthreads writers; each owns a slice of parts and commits transactions of 1-4 rows of
    distinct partitions (each the partition's next sequence number) until all are written.
    Returns every written row."""
    written = []
    lock = threading.Lock()
    errors = []

    def writer(my_parts, seed):
        rng = random.Random(seed)
        conn = db.conn(autocommit=False)
        try:
            nxt = {p: 0 for p in my_parts}
            while nxt:
                batch = rng.sample(list(nxt), min(len(nxt), rng.randint(1, 4)))
                rows = [{"partition_key": p, "destinations": [http_dest(f"{sink_url}{path_prefix}{p}")],
                         "payload": json.dumps({"p": p, "s": nxt[p]})} for p in batch]
                made = insert_on(conn, rows)
                with lock:
                    written.extend(made)
                for p in batch:
                    nxt[p] += 1
                    if nxt[p] == rows_per_part:
                        del nxt[p]
        except Exception as e:  # reported by the main thread
            errors.append(e)
        finally:
            conn.close()

    threads = [threading.Thread(target=writer, args=(parts[i::nthreads], i)) for i in range(nthreads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a writer thread hung"
    assert not errors, errors
    return written


def test_late_commit_is_delivered_not_skipped(db, sink, relay):
    """Row X is inserted first (earlier created_at) but its transaction commits after row Y of
    the same partition was delivered: X goes out when it becomes visible."""
    relay(db, env=env())
    part = str(uuid7())
    dest = json.dumps([http_dest(sink.url("/late"))])
    slow = db.conn(autocommit=False)
    kx, ky = str(uuid7()), str(uuid7())
    with slow.cursor() as cur:
        cur.execute("INSERT INTO outbox (idempotent_key, partition_key, destinations, payload)"
                    " VALUES (%s, %s, %s::jsonb, 'X')", (kx, part, dest))
    db.execute("INSERT INTO outbox (idempotent_key, partition_key, destinations, payload)"
               " VALUES (%s, %s, %s::jsonb, 'Y')", (ky, part, dest))
    wait_processed(db, [ky])
    slow.commit()
    wait_processed(db, [kx])
    recs = sink.requests()
    assert [body_bytes(r) for r in recs] == [b"Y", b"X"]
    assert_each_once(recs, [kx, ky])


def test_poll_mode_through_pgbouncer_transaction_pooling(db, sink, pgbouncer, relay):
    """Two relays with OUTBOX_MODE=poll through a real PgBouncer in transaction pooling mode:
    every row exactly once, in order per partition, no LISTEN connection, no statement errors."""
    bouncer = pgbouncer(default_pool_size=3)
    url = bouncer.url(db.name)
    parts = [str(uuid7()) for _ in range(30)]
    per_part = 10
    # half written before the relays start, half while they run
    written = []
    for s in range(per_part // 2):
        written += insert(db, [{"partition_key": p, "destinations": [http_dest(sink.url(f"/pb/{p}"))],
                                "payload": json.dumps({"p": p, "s": s})} for p in parts])
    relays = [relay(url, env={"OUTBOX_MODE": "poll", "OUTBOX_POLL_INTERVAL_MS": 100,
                              "OUTBOX_LOG_LEVEL": "debug"}) for _ in range(2)]
    for s in range(per_part // 2, per_part):
        written += insert(db, [{"partition_key": p, "destinations": [http_dest(sink.url(f"/pb/{p}"))],
                                "payload": json.dumps({"p": p, "s": s})} for p in parts])
    wait_processed(db, keys(written), timeout=30)
    records = sink.requests()
    assert_each_once(records, keys(written))
    assert_partition_order(records, {p: per_part for p in parts})
    wait_no_leases(db)
    assert relay_backends(db, LISTEN_APP) == []
    for r in relays:
        assert r.alive()
        log = r.log()
        assert "relay ready: polling every 100 ms" in log
        assert "statement failed" not in log and "connection lost" not in log, log[-3000:]
    for r in relays:
        assert r.stop() == 0


def test_small_limits_in_flight_batch_and_claim(db, sink, relay):
    """OUTBOX_MAX_IN_FLIGHT=2, OUTBOX_BATCH_SIZE=1, OUTBOX_CLAIM_LIMIT=3 with 16 partitions,
    half written before the relay starts (the catch-up scan pages through them) and half while
    it runs: every row once, in order, and never more than two requests at a time."""
    delay_ms = 100
    sink.rules([{"prefix": "/lim/", "delay_ms": delay_ms}])
    parts = [str(uuid7()) for _ in range(16)]
    mk = lambda s: [{"partition_key": p, "destinations": [http_dest(sink.url(f"/lim/{p}"))],
                     "payload": json.dumps({"p": p, "s": s})} for p in parts]
    written = insert(db, mk(0)) + insert(db, mk(1))
    relay(db, env=env(OUTBOX_MAX_IN_FLIGHT=2, OUTBOX_BATCH_SIZE=1, OUTBOX_CLAIM_LIMIT=3))
    written += insert(db, mk(2))
    wait_processed(db, keys(written), timeout=30)
    records = sink.requests()
    assert_each_once(records, keys(written))
    assert_partition_order(records, {p: 3 for p in parts})
    # a slot sends its next request only after the answer to the last: the sink's
    # [arrival, answer) spans of one slot never overlap, so more than two overlapping spans
    # mean more than two requests in flight (the answers wait delay_ms, so they do overlap
    # when the limit is not kept)
    spans = sorted((r["time_us"], r["answered_us"]) for r in records)
    worst = max(sum(1 for a, b in spans if a <= t < b) for t, _ in spans)
    assert worst <= 2, f"{worst} requests at the sink at once: more than 2 in flight"
    wait_no_leases(db)


def test_claim_does_not_deadlock_with_a_lease_holder_releasing(db, sink, relay):
    """Another instance (simulated by a session) holds the leases of partitions P1 < P2 and, in
    one transaction, renews P2 and then releases P1 -- what a relay's advance statement does
    for its own leases, in whatever order the plan takes them. Meanwhile this relay, notified
    for both, claims them in one statement. The claim must not lock the live lease of P1 that
    it does not get: if it does, it then waits for P2 while the holder waits for P1, and
    PostgreSQL aborts one of them with "deadlock detected" after deadlock_timeout (1 s)."""
    r = relay(db, env=env())
    wait_scanned(r)
    p1, p2 = sorted(str(uuid7()) for _ in range(2))
    other = str(uuid7())
    db.execute("INSERT INTO outbox_lock (partition_key, lock_id, processing_until)"
               " VALUES (%s, %s, now() + interval '1 minute'), (%s, %s, now() + interval '1 minute')",
               (p1, other, p2, other))
    holder = db.conn(autocommit=False)
    with holder.cursor() as cur:
        cur.execute("SET lock_timeout = '5s'")
        cur.execute("UPDATE outbox_lock SET processing_until = now() + interval '1 minute'"
                    " WHERE partition_key = %s AND lock_id = %s", (p2, other))
    # two partitions with rows; the writer skips the NOTIFY for partitions with a live lease
    # (sql/010), so the notifications come in one transaction of their own: one claim
    insert(db, [{"partition_key": p, "destinations": [http_dest(sink.url("/dl"))], "payload": "x"}
                for p in (p1, p2)])
    db.execute("SELECT pg_notify('outbox', %s), pg_notify('outbox', %s)", (p1, p2))
    # the claim reaches P2 and waits for the holder's transaction (or, if it can do without
    # waiting, finishes: then no cycle is possible)
    wait_claim_blocked_or_done(db, r)
    with holder.cursor() as cur:
        # NOWAIT: the relay's claim must hold no lock on P1's live lease, or this fails at once
        # (a question to the lock manager, not to a clock)
        try:
            cur.execute("SELECT 1 FROM outbox_lock WHERE partition_key = %s AND lock_id = %s"
                        " FOR UPDATE NOWAIT", (p1, other))
        except psycopg2.errors.LockNotAvailable:
            raise AssertionError("the relay's claim locked P1's lease, which it did not get") from None
        cur.execute("DELETE FROM outbox_lock WHERE partition_key = %s AND lock_id = %s", (p1, other))
    holder.commit()
    # belt and braces after the NOWAIT check: PostgreSQL reports a deadlock to one of its
    # members after deadlock_timeout (1 s), and the claim was waiting before this window opened
    assert_not_within(lambda: "deadlock" in r.log(), 1.5, "a deadlock")
    assert r.alive()


def test_claim_after_a_lock_wait_does_not_resend_a_row_the_previous_holder_completed(db, sink, relay):
    """Instance A (simulated) holds partition P and is delivering row R. This relay's claim for
    {Q, P} (Q < P: leases are inserted in key order) has to wait on Q, whose lease another
    transaction is inserting. Meanwhile A records R as processed and releases P. When the
    claim goes on it leases P -- and must then read P's rows as they are now: R is done.
    Reading them with the snapshot the claim statement started with (READ COMMITTED: one
    snapshot per statement, not renewed by a lock wait) would send R a second time although
    nothing crashed."""
    q, p = sorted(str(uuid7()) for _ in range(2))
    a, c = str(uuid7()), str(uuid7())
    k = str(uuid7())
    db.execute("INSERT INTO outbox_lock (partition_key, lock_id, processing_until)"
               " VALUES (%s, %s, now() + interval '1 minute')", (p, a))
    db.execute("INSERT INTO outbox (idempotent_key, partition_key, destinations, payload)"
               " VALUES (%s, %s, %s::jsonb, 'R')", (k, p, json.dumps([http_dest(sink.url("/r"))])))
    r = relay(db, env=env())
    wait_scanned(r)  # P's lease is live: the catch-up scan leaves it alone
    other = db.conn(autocommit=False)
    with other.cursor() as cur:
        cur.execute("INSERT INTO outbox_lock (partition_key, lock_id, processing_until)"
                    " VALUES (%s, %s, now() + interval '1 minute')", (q, c))
    # both notifications in one transaction: the relay claims {Q, P} in one statement
    db.execute("SELECT pg_notify('outbox', %s), pg_notify('outbox', %s)", (q, p))
    # the claim waits on Q's lease (a claim that never waits cannot read a stale snapshot)
    wait_claim_blocked_or_done(db, r)
    # A finishes R and lets P go
    db.execute("UPDATE outbox SET processed_at = now(), attempts = attempts + 1 WHERE idempotent_key = %s", (k,))
    db.execute("DELETE FROM outbox_lock WHERE partition_key = %s AND lock_id = %s", (p, a))
    other.rollback()
    wait_until(lambda: not any(b["state"] == "active" for b in relay_backends(db)), 10,
               "the claim to finish")
    # a sentinel behind R in P, instead of a quiet window: a partition goes out in order, so
    # had the claim fetched R again, R would reach the sink before the sentinel
    (s,) = insert(db, [{"partition_key": p, "destinations": [http_dest(sink.url("/s"))], "payload": "S"}])
    wait_processed(db, [s["idempotent_key"]])
    assert [x["path"] for x in sink.requests()] == ["/s"], "R was sent a second time"
    assert db.scalar("SELECT attempts FROM outbox WHERE idempotent_key = %s", (k,)) == 1
    assert r.alive()


def test_order_under_concurrency_three_relays_four_writers(db, sink, relay):
    """3 relays, 4 concurrent writers, 120 partitions x 50 rows: every row arrives exactly once,
    and each partition's sequence is strictly increasing at the sink. The poll is at an hour:
    nothing may be stranded waiting for it."""
    nparts, per_part = 120, 50
    relays = [relay(db, env=env()) for _ in range(3)]
    parts = [str(uuid7()) for _ in range(nparts)]
    written = concurrent_writers(db, sink.url(""), parts, per_part, 4, "/o/")
    assert len(written) == nparts * per_part
    wait_processed(db, keys(written), timeout=60)
    records = sink.requests()
    assert_each_once(records, keys(written))
    assert_partition_order(records, {p: per_part for p in parts})
    rows = db.query("SELECT attempts, count(*) FROM outbox GROUP BY attempts")
    assert rows == [(1, nparts * per_part)], rows
    wait_no_leases(db)
    per_relay = []
    for r in relays:
        assert r.alive()
        log = r.log()
        assert "was lost to another instance" not in log and "taken over" not in log, log[-3000:]
        per_relay.append(log.count("delivered row "))
    # the instances shared the work, and together sent each row once
    assert sum(per_relay) == nparts * per_part, per_relay
    assert all(n > 0 for n in per_relay), per_relay
