"""Edge timestamps: no row's process_after or created_at can make a statement fail, so none can
hold up the partitions claimed with it or send the relay into a loop of failing statements.

Rows with an infinite timestamp are refused at INSERT since migration 007, which parks the ones
already pending (test_migrate.py). The relay's statements must still survive them, since a
database may hold such rows from before (or without) 007: these tests drop 007's constraints
to write them, as the crate could. Extreme finite values (4713 BC, 294276 AD) are valid rows."""

import json

from conftest import uuid7, wait_until
from relay_util import env, http_dest, key_of, metric, wait_scanned

# A partition of three rows per case: the middle row (by process_after) carries the edge value,
# the other two are ordinary. Infinite values sort first (-infinity) or last (infinity).
CASES = {  # name: (created_at, process_after) of the edge row, as SQL
    "pa_inf": ("now()", "'infinity'"),
    "pa_neg": ("now()", "'-infinity'"),
    "ca_inf": ("'infinity'", "now() - interval '2 seconds'"),
    "ca_neg": ("'-infinity'", "now() - interval '2 seconds'"),
    "pa_max": ("now()", "'294276-12-31 23:59:59+00'"),
    "pa_min": ("now()", "'4713-01-01 00:00:00+00 BC'"),
    "ca_max": ("'294276-12-31 23:59:59+00'", "now() - interval '2 seconds'"),
    "ca_min": ("'4714-11-24 00:00:00+00 BC'", "now() - interval '2 seconds'"),
}
NEVER_DUE = {"pa_inf", "pa_max"}  # stay pending, and sort after the partition's other rows


def write_wave(db, sink, cases, good_partitions=40):
    """One transaction (so one claim takes the edge partitions together with good ones): per
    case a partition of [ordinary, edge, ordinary] rows; plus good_partitions partitions of
    three ordinary rows. Returns ({name: partition}, {name: edge key}, [all keys expected
    at the sink, per partition in order])."""
    conn = db.conn(autocommit=False)
    parts, edge_keys, expected = {}, {}, []
    with conn.cursor() as cur:
        def row(part, path, created, after):
            key = str(uuid7())
            cur.execute("INSERT INTO outbox (idempotent_key, partition_key, destinations, payload, created_at,"
                        f" process_after) VALUES (%s, %s, %s::jsonb, %s, {created}, {after})",
                        (key, part, json.dumps([http_dest(sink.url(path))]), path))
            return key
        for name, (created, after) in cases.items():
            part = parts[name] = str(uuid7())
            first = row(part, f"/{name}/1", "now()", "now() - interval '3 seconds'")
            edge = edge_keys[name] = row(part, f"/{name}/edge", created, after)
            last = row(part, f"/{name}/3", "now()", "now() - interval '1 second'")
            if name in NEVER_DUE:
                expected.append([first, last])
            elif after.startswith("'-infinity'") or after.startswith("'4713"):
                expected.append([edge, first, last])
            else:
                expected.append([first, edge, last])
        for i in range(good_partitions):
            part = str(uuid7())
            expected.append([row(part, f"/good/{i}/{j}", "now()", f"now() - interval '{3 - j} seconds'")
                             for j in range(3)])
    conn.commit()
    conn.close()
    return parts, edge_keys, expected


def assert_delivered_in_order(sink, expected):
    want = sum(len(p) for p in expected)
    recs = sink.wait_for_count(want, timeout=30)
    got = [key_of(r) for r in recs]
    assert len(got) == len(set(got)) == want, "each row exactly once"
    pos = {k: i for i, k in enumerate(got)}
    for part in expected:
        assert all(k in pos for k in part), "a row did not arrive"
        assert [pos[k] for k in part] == sorted(pos[k] for k in part), "a partition out of order"


def assert_quiet(db, r, polls=5):
    """Over the next `polls` scans (a short poll interval) the relay claims nothing and no
    statement fails: counts, not durations."""
    claims = metric(r, "outbox_relay_claims_total")
    start = metric(r, "outbox_relay_polls_total")
    wait_scanned(r, int(start) + polls, timeout=30)
    assert metric(r, "outbox_relay_claims_total") == claims, "the relay kept claiming while idle"
    log = r.log()
    assert "statement failed" not in log, [l for l in log.splitlines() if "statement failed" in l][:5]
    assert "infinite" not in log


def test_infinite_timestamps_from_before_007_fail_no_statement(db, sink, relay):
    """Rows written before migration 007 (its constraints dropped here) with 'infinity' or
    '-infinity' next to 40 ordinary partitions in one transaction: every ordinary row arrives,
    in order; the edge rows are scheduled as their values say ('-infinity' is due, and an
    infinite created_at only sorts ties), except process_after = 'infinity', which is never
    due and stays pending without holding up the rows before it; no statement fails, and
    afterwards the relay is quiet (without 007's statement changes the claim failed with
    "cannot subtract infinite timestamps", again and again, for every partition claimed with
    the row's)."""
    db.execute("ALTER TABLE outbox DROP CONSTRAINT outbox_process_after_finite,"
               " DROP CONSTRAINT outbox_created_at_finite")
    r = relay(db, env=env(OUTBOX_POLL_INTERVAL_MS=100))
    parts, edge_keys, expected = write_wave(db, sink, CASES)
    assert_delivered_in_order(sink, expected)
    wait_until(lambda: db.scalar("SELECT count(*) FROM outbox WHERE processed_at IS NULL") == len(NEVER_DUE),
               20, "every due row to be marked processed")
    assert db.scalar("SELECT count(*) FROM outbox WHERE processed_at IS NULL AND dead_at IS NULL"
                     " AND idempotent_key = ANY(%s::uuid[])", ([edge_keys[n] for n in NEVER_DUE],)) == 2
    assert_quiet(db, r)
    assert r.stop() == 0


def test_extreme_finite_timestamps_work_and_infinite_ones_are_refused(db, sink, relay):
    """With 007's constraints: an infinite timestamp cannot be written; the extreme finite
    values are delivered in their place next to ordinary traffic (294276 AD is due in a while:
    it stays pending), and the relay is quiet afterwards."""
    for column in ("process_after", "created_at"):
        for value in ("infinity", "-infinity"):
            conn = db.conn(autocommit=True)
            try:
                with conn.cursor() as cur:
                    cur.execute(f"INSERT INTO outbox (idempotent_key, partition_key, destinations, payload, {column})"
                                " VALUES (%s, %s, '[]', 'x', %s)", (str(uuid7()), str(uuid7()), value))
                raise AssertionError(f"{column} = {value} was accepted")
            except Exception as e:  # psycopg2.errors.CheckViolation
                assert f"outbox_{column}_finite" in str(e), str(e)
            finally:
                conn.close()
    r = relay(db, env=env(OUTBOX_POLL_INTERVAL_MS=100))
    finite = {k: v for k, v in CASES.items() if k not in ("pa_inf", "pa_neg", "ca_inf", "ca_neg")}
    parts, edge_keys, expected = write_wave(db, sink, finite)
    assert_delivered_in_order(sink, expected)
    wait_until(lambda: db.scalar("SELECT count(*) FROM outbox WHERE processed_at IS NULL") == 1,
               20, "every due row to be marked processed")
    assert db.scalar("SELECT dead_at IS NULL FROM outbox WHERE idempotent_key = %s", (edge_keys["pa_max"],))
    assert_quiet(db, r)
    assert r.stop() == 0
