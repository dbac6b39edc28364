"""Memory stays bounded whatever arrives: floods of notifications (anyone may NOTIFY anything)
and large rows. Memory is read from /proc/<pid>/status (VmRSS, VmHWM); the relay runs with
AddressSanitizer's quarantine off, which would otherwise keep up to 256 MiB of freed memory and
hide what the relay itself holds."""

import os

from relay_util import assert_each_once, env, http_dest, insert, keys, metric, wait_no_leases, wait_processed
from conftest import uuid7, wait_until

MIB = 1 << 20
# the sanitizers' options from the test environment, with the quarantine off
ASAN_NO_QUARANTINE = ":".join(o for o in [os.environ.get("ASAN_OPTIONS", ""), "quarantine_size_mb=0",
                                          "thread_local_quarantine_size_kb=0"] if o)


def proc_status(pid: int, field: str) -> int:
    """A /proc/<pid>/status memory field (VmRSS, VmHWM) in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def flood(db, n: int, per_transaction: int = 25_000, malformed: int = 2_000) -> int:
    """n notifications for random partitions (no rows) in transactions of per_transaction, and
    malformed payloads, all distinct (PostgreSQL folds equal ones in a transaction); returns how
    many notifications were sent."""
    conn = db.conn(autocommit=False)
    try:
        for done in range(0, n, per_transaction):
            with conn.cursor() as cur:
                cur.execute("SELECT count(pg_notify('outbox', gen_random_uuid()::text)) "
                            "FROM generate_series(1, %s)", (min(per_transaction, n - done),))
            conn.commit()
        with conn.cursor() as cur:
            cur.execute("SELECT count(pg_notify('outbox', CASE g %% 3 WHEN 0 THEN 'junk-' || g "
                        "WHEN 1 THEN repeat('z', 7000) || g ELSE upper(gen_random_uuid()::text) || 'x' END)) "
                        "FROM generate_series(1, %s) g", (malformed,))
        conn.commit()
    finally:
        conn.close()
    return n + malformed


def test_notification_floods_leave_memory_flat(db, sink, relay):
    """Three floods of 100,000 notifications for random partitions plus malformed payloads:
    the relay's RSS after the third flood is within 2 MiB of its RSS after the first (a leak of
    one partition record per notification beyond the claim set grew it by about 4 MB a flood),
    and rows written during the floods are all delivered, once."""
    r = relay(db, env=env(OUTBOX_LOG_LEVEL="info", ASAN_OPTIONS=ASAN_NO_QUARANTINE))
    sent = 0
    written = []
    rss = []
    for i in range(3):
        sent += flood(db, 50_000)
        written += insert(db, [{"destinations": [http_dest(sink.url(f"/flood/{i}/{j}"))], "payload": f"r{j}"}
                               for j in range(5)])
        sent += flood(db, 50_000)
        wait_until(lambda: (metric(r, "outbox_relay_notifications_total") or 0) >= sent, 120,
                   f"{sent} notifications received")
        # a row notified after the flood is claimed after every partition notified before it
        # (or after they were forgotten): then the flood is behind the relay
        written += insert(db, [{"destinations": [http_dest(sink.url(f"/after/{i}"))], "payload": "after"}])
        wait_processed(db, keys(written), timeout=120)
        wait_no_leases(db, timeout=60)
        rss.append(proc_status(r.pid, "VmRSS"))
    assert r.alive()
    assert rss[2] - rss[0] <= 2 * MIB, f"RSS after each flood: {[f'{x / MIB:.1f} MiB' for x in rss]}"
    assert_each_once(sink.requests(), keys(written))
    print(f"RSS after each flood: {[f'{x / MIB:.1f} MiB' for x in rss]}")


def test_large_rows_bounded_peak_memory(db, make_sink, relay):
    """Rows of 20 MB and 1 MB among small ones, in a few partitions, committed at once: every
    row arrives, whole, once, and the relay's peak RSS (VmHWM) grows by at most
    5 x OUTBOX_FETCH_BYTES + 9 x the largest row over its RSS before (README, Operations).
    Without a byte budget one claim fetched every row (100 MB) and the relay copied it twice."""
    sink = make_sink("--max-body", str(24 * MIB), "--max-stored", "4096")
    budget = 4 * MIB
    r = relay(db, env=env(OUTBOX_LOG_LEVEL="info", OUTBOX_FETCH_BYTES=str(budget),
                          ASAN_OPTIONS=ASAN_NO_QUARANTINE))
    before = proc_status(r.pid, "VmRSS")
    parts = [uuid7() for _ in range(4)]
    sizes = [20 * MIB, 20 * MIB] + [MIB] * 60 + [100] * 40
    rows = []
    for i, size in enumerate(sizes):
        rows.append({"partition_key": parts[i % len(parts)],
                     "destinations": [http_dest(sink.url(f"/big/{i}"))],
                     "payload": chr(ord("a") + i % 26) * size})
    written = insert(db, rows)
    got = wait_processed(db, keys(written), timeout=120)
    assert all(g["dead_at"] is None for g in got.values())
    records = assert_each_once(sink.requests(), keys(written))
    for row in written:
        assert records[str(row["idempotent_key"])]["body_size"] == len(row["payload"])
    peak = proc_status(r.pid, "VmHWM")
    bound = 5 * budget + 9 * 20 * MIB
    print(f"RSS before {before / MIB:.1f} MiB, peak {peak / MIB:.1f} MiB, bound +{bound / MIB:.0f} MiB")
    assert peak - before <= bound, f"peak RSS grew by {(peak - before) / MIB:.1f} MiB"
