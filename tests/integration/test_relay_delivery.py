"""Delivery: what a request looks like, push by NOTIFY, the catch-up scan and the poll,
delays, the SQL enqueue helpers and delete mode."""

import json
import re

from conftest import body_bytes, header_values, uuid7, wait_until
from relay_util import (arrival_s, assert_each_once, assert_not_within, env, http_dest, insert,
                        keys, lock_rows, metric, rows_by_key, wait_no_leases,
                        wait_processed, wait_scanned)

# Headers curl adds by itself; everything else a request carries must come from the row.
TRANSPORT_HEADERS = {"host", "content-length", "accept", "user-agent", "accept-encoding"}


def row_headers(record):
    """(lower-case name, value) pairs of a request, without the transport headers."""
    return sorted((k.lower(), v) for k, v in record["headers"] if k.lower() not in TRANSPORT_HEADERS)


def test_push_delivers_exact_request(db, sink, relay):
    """One row, pushed by NOTIFY: method, path and query, body bytes, headers (destination's,
    row's, row wins once on a clash, {{ENV}} filled from the relay's environment, an unset
    variable left as it is, x-idempotent-key = the row key and not overridable), then the
    row is processed with attempts=1 and the lease is gone."""
    r = relay(db, env=env(HOOK_SECRET_TOKEN="s3cr3t-value"))
    part = uuid7()
    payload = '{"order": 42, "note": "caf\u00e9 \\" quoted"}'
    (row,) = insert(db, [{
        "partition_key": part,
        "destinations": [http_dest(sink.url("/hooks/order?x=1&y=two"), headers={
            "Content-Type": "application/json",
            "Authorization": "{{HOOK_SECRET_TOKEN}}",
            "X-Unset": "{{SURELY_NOT_SET_ANYWHERE}}",
            "X-Clash": "from-destination",
            "X-Dest-Only": "d",
        })],
        "headers": {"x-clash": "from-row", "X-Row-Only": "r", "X-Idempotent-Key": "forged",
                    "X-Row-Env": "{{HOOK_SECRET_TOKEN}}", "X-Empty": ""},
        "payload": payload,
    }])
    key = row["idempotent_key"]
    got = wait_processed(db, [key])[key]
    (rec,) = sink.requests()
    assert rec["method"] == "POST"
    assert rec["uri"] == "/hooks/order?x=1&y=two"
    assert body_bytes(rec) == payload.encode()
    assert header_values(rec, "x-idempotent-key") == [key]
    assert header_values(rec, "x-clash") == ["from-row"], rec["headers"]
    assert row_headers(rec) == sorted([
        ("content-type", "application/json"),
        ("authorization", "s3cr3t-value"),
        ("x-unset", "{{SURELY_NOT_SET_ANYWHERE}}"),
        ("x-clash", "from-row"),
        ("x-dest-only", "d"),
        ("x-row-only", "r"),
        ("x-row-env", "{{HOOK_SECRET_TOKEN}}"),  # only destination headers are substituted
        ("x-empty", ""),
        ("x-idempotent-key", key),
    ]), rec["headers"]
    assert int(header_values(rec, "content-length")[0]) == len(payload.encode())

    assert got["processed_at"] is not None
    assert got["attempts"] == 1
    assert got["last_error"] is None and got["dead_at"] is None and got["retry_after"] is None
    wait_no_leases(db)
    assert lock_rows(db) == []
    assert r.alive()


def test_push_methods_and_no_content_type_added(db, sink, relay):
    """PUT, PATCH (any case), explicit "POST" and null; a row without headers gets no
    Content-Type (curl's form type is suppressed) and an empty body is sent as such."""
    relay(db, env=env())
    rows = insert(db, [
        {"destinations": [http_dest(sink.url("/m/put"), method="PUT")], "payload": "p1"},
        {"destinations": [http_dest(sink.url("/m/patch"), method="patch")], "payload": "p2"},
        {"destinations": [http_dest(sink.url("/m/put-lower"), method="put")], "payload": "p3"},
        {"destinations": [http_dest(sink.url("/m/post"), method="POST")], "payload": "p4"},
        {"destinations": [http_dest(sink.url("/m/null"), method=None)], "payload": ""},
        {"destinations": [{"url": sink.url("/m/absent")}], "payload": "p6"},
    ])
    wait_processed(db, keys(rows))
    recs = assert_each_once(sink.requests(), keys(rows))
    expect = {"/m/put": ("PUT", b"p1"), "/m/patch": ("PATCH", b"p2"), "/m/put-lower": ("PUT", b"p3"),
              "/m/post": ("POST", b"p4"), "/m/null": ("POST", b""), "/m/absent": ("POST", b"p6")}
    for row in rows:
        rec = recs[row["idempotent_key"]]
        method, body = expect[rec["path"]]
        assert (rec["method"], body_bytes(rec)) == (method, body), rec
        assert header_values(rec, "content-type") == [], rec["headers"]
        assert header_values(rec, "expect") == []
        assert row_headers(rec) == [("x-idempotent-key", row["idempotent_key"])]
    assert all(r["attempts"] == 1 for r in rows_by_key(db, keys(rows)).values())


def test_sql_enqueue_helpers(db, sink, relay):
    """Rows made by outbox_enqueue_http / outbox_enqueue in one application transaction are
    pushed at commit, in call order within the partition, with their methods, headers and
    bodies; a row with two HTTP destinations calls each once."""
    relay(db, env=env())
    part = str(uuid7())
    conn = db.conn(autocommit=False)
    with conn.cursor() as cur:
        cur.execute("SELECT outbox_enqueue_http(%s::uuid, %s, %s, method => 'PUT',"
                    " headers => '{\"Content-Type\":\"application/json\",\"X-A\":\"1\"}')",
                    (part, sink.url("/sql/put"), '{"n":1}'))
        k1 = cur.fetchone()[0]
        cur.execute("SELECT outbox_enqueue_http(%s::uuid, %s, %s)", (part, sink.url("/sql/post"), "plain"))
        k2 = cur.fetchone()[0]
        cur.execute("SELECT outbox_enqueue(%s::uuid, jsonb_build_array("
                    "  outbox_http_destination(%s, 'PATCH', '{\"X-Dest\":\"d\",\"X-Both\":\"dest\"}'),"
                    "  outbox_http_destination(%s)),"
                    " %s, headers => '{\"X-Both\":\"row\"}')",
                    (part, sink.url("/sql/multi-a"), sink.url("/sql/multi-b"), "multi"))
        k3 = cur.fetchone()[0]
    # nothing goes out before the commit. A quiet window, kept short: it cannot fail by luck
    # (no session sees rows before COMMIT, and NOTIFY is sent at COMMIT), and what it guards
    # against, a helper that commits on its own, would be caught again below: the rows would
    # have gone out before the commit, and their order and count are checked
    assert_not_within(lambda: sink.count() > 0, 0.3, "a request before COMMIT")
    conn.commit()
    got = wait_processed(db, [k1, k2, k3])
    recs = sink.requests()
    assert [(r["method"], r["path"]) for r in recs[:2]] == [("PUT", "/sql/put"), ("POST", "/sql/post")]
    assert sorted((r["method"], r["path"]) for r in recs[2:]) == [("PATCH", "/sql/multi-a"),
                                                                  ("POST", "/sql/multi-b")]
    assert [header_values(r, "x-idempotent-key") for r in recs] == [[k1], [k2], [k3], [k3]]
    assert body_bytes(recs[0]) == b'{"n":1}' and body_bytes(recs[1]) == b"plain"
    assert row_headers(recs[0]) == [("content-type", "application/json"), ("x-a", "1"),
                                    ("x-idempotent-key", k1)]
    multi = {r["path"]: r for r in recs[2:]}
    assert row_headers(multi["/sql/multi-a"]) == [("x-both", "row"), ("x-dest", "d"), ("x-idempotent-key", k3)]
    assert row_headers(multi["/sql/multi-b"]) == [("x-both", "row"), ("x-idempotent-key", k3)]
    assert all(body_bytes(r) == b"multi" for r in recs[2:])
    assert all(r["attempts"] == 1 for r in got.values())


def test_only_notified_partitions_then_poll_finds_the_rest(db, sink, relay):
    """With the poll at an hour, a partition whose insert sent no NOTIFY stays put while a
    notified one is delivered; a relay with a 300 ms poll then finds it (catch-up scan at its
    start), and a later unannounced row is found by that relay's periodic poll alone."""
    r1 = relay(db, env=env())
    wait_scanned(r1)
    a, b = uuid7(), uuid7()
    db.execute("ALTER TABLE outbox DISABLE TRIGGER outbox_notify")
    rows_a = db.insert_http_rows(sink.url("/a"), 2, partition_key=a)
    db.execute("ALTER TABLE outbox ENABLE TRIGGER outbox_notify")
    rows_b = db.insert_http_rows(sink.url("/b"), 2, partition_key=b)
    wait_processed(db, keys(rows_b))
    # a quiet window: it cannot fail by luck (with the poll at an hour and the catch-up scan
    # done before the rows were written, nothing but a notification leads the relay to a), and
    # b's rows, processed above, show the relay claimed after a was written
    assert_not_within(lambda: sink.count() > 2, 1.0, "delivery of the unnotified partition")
    assert [r["path"] for r in sink.requests()] == ["/b", "/b"]
    assert all(r["processed_at"] is None and r["attempts"] == 0
               for r in rows_by_key(db, keys(rows_a)).values())

    r2 = relay(db, env=env(OUTBOX_POLL_INTERVAL_MS=300))
    wait_processed(db, keys(rows_a))
    assert [r["path"] for r in sink.requests()] == ["/b", "/b", "/a", "/a"]

    # the periodic poll: a row nobody announces (relay 2's start-up scan is long done: it
    # delivered A; relay 1 never scans; no row is waiting for a due time)
    db.execute("ALTER TABLE outbox DISABLE TRIGGER outbox_notify")
    (late,) = db.insert_http_rows(sink.url("/late"), 1)
    db.execute("ALTER TABLE outbox ENABLE TRIGGER outbox_notify")
    wait_processed(db, [late.idempotent_key], timeout=5)
    r2.wait_for_log(f"delivered row {late.idempotent_key}", timeout=5)
    assert f"delivered row {late.idempotent_key}" not in r1.log()
    assert_each_once(sink.requests(), keys(rows_a) + keys(rows_b) + [late.idempotent_key])


def test_catch_up_rows_written_while_no_relay_runs(db, sink, relay):
    """Rows committed while no relay listens (their NOTIFYs are lost) go out when a relay
    starts, in order per partition, each once."""
    parts = [uuid7() for _ in range(5)]
    rows = []
    for i in range(4):  # four transactions, so each partition's rows are in commit order
        rows += insert(db, [{"partition_key": p, "destinations": [http_dest(sink.url(f"/cu/{p}"))],
                             "payload": json.dumps({"p": str(p), "s": i})} for p in parts])
    relay(db, env=env())
    wait_processed(db, keys(rows))
    recs = assert_each_once(sink.requests(), keys(rows))
    for p in parts:
        seqs = [json.loads(r["body"])["s"] for r in sink.requests() if r["path"] == f"/cu/{p}"]
        assert seqs == [0, 1, 2, 3], (p, seqs)
    assert len(recs) == 20
    wait_no_leases(db)


def test_delayed_row_goes_out_when_due(db, sink, relay):
    """process_after = now() + 1.5 s: not before, and then by the due timer (the poll is at an
    hour, so a delivery at all shows the timer fired; how soon is not asserted)."""
    relay(db, env=env())
    k = str(uuid7())  # process_after from the server's clock
    db.execute("INSERT INTO outbox (idempotent_key, partition_key, destinations, payload, process_after)"
               " VALUES (%s, %s, %s::jsonb, 'x', now() + interval '1.5 seconds')",
               (k, str(uuid7()), json.dumps([http_dest(sink.url("/later"))])))
    due = db.scalar("SELECT extract(epoch FROM process_after)::float8 FROM outbox WHERE idempotent_key = %s", (k,))
    wait_processed(db, [k], timeout=10)
    (rec,) = sink.requests()
    late = arrival_s(rec) - due
    assert late >= 0, f"delivered {-late:.3f}s before process_after"
    print(f"delivered {late:.3f}s after process_after")


def test_delayed_head_does_not_block_an_earlier_due_row(db, sink, relay):
    """A partition: row1 (process_after now+1 s) inserted before row2 (process_after now).
    Order is process_after, then created_at: row2 goes first, row1 at its time."""
    relay(db, env=env())
    part = str(uuid7())
    dest = json.dumps([http_dest(sink.url("/dh"))])
    k1, k2 = str(uuid7()), str(uuid7())
    db.execute("INSERT INTO outbox (idempotent_key, partition_key, destinations, payload, process_after)"
               " VALUES (%s, %s, %s::jsonb, 'row1', now() + interval '1 second')", (k1, part, dest))
    db.execute("INSERT INTO outbox (idempotent_key, partition_key, destinations, payload)"
               " VALUES (%s, %s, %s::jsonb, 'row2')", (k2, part, dest))
    due1 = db.scalar("SELECT extract(epoch FROM process_after)::float8 FROM outbox WHERE idempotent_key = %s", (k1,))
    wait_processed(db, [k2], timeout=5)
    assert [body_bytes(r) for r in sink.requests()] == [b"row2"]
    wait_processed(db, [k1], timeout=10)
    recs = sink.requests()
    assert [body_bytes(r) for r in recs] == [b"row2", b"row1"]
    assert arrival_s(recs[0]) < due1
    # not before its time; after it by the due timer (the poll is at an hour)
    assert arrival_s(recs[1]) >= due1, arrival_s(recs[1]) - due1


def test_delete_on_success(db, sink, relay):
    """OUTBOX_DELETE_ON_SUCCESS=true: delivered rows are deleted; failed rows stay: one parked
    at the failure limit with its error, one waiting for its retry."""
    sink.rules([{"prefix": "/del/fail", "status": 500}])
    relay(db, env=env(OUTBOX_DELETE_ON_SUCCESS="true", OUTBOX_FAILURE_LIMIT=3,
                      OUTBOX_RETRY_BASE_MS=60000))
    good = insert(db, [{"destinations": [http_dest(sink.url("/del/ok"))], "payload": str(i)}
                       for i in range(5)])
    # attempts 2 before: this failure is the third, the limit; attempts 0: a retry in 30-60 s
    (parked,) = insert(db, [{"destinations": [http_dest(sink.url("/del/fail/parked"))],
                             "payload": "p", "attempts": 2}])
    (retrying,) = insert(db, [{"destinations": [http_dest(sink.url("/del/fail/retry"))],
                               "payload": "r"}])
    pk, rk = parked["idempotent_key"], retrying["idempotent_key"]
    wait_until(lambda: db.scalar("SELECT count(*) FROM outbox WHERE idempotent_key = ANY(%s::uuid[])",
                                 (keys(good),)) == 0, 10, "delivered rows to be deleted")
    assert_each_once(sink.requests(path="/del/ok"), keys(good))
    wait_until(lambda: rows_by_key(db, [pk])[pk]["dead_at"], 10, "the failing row to be parked")
    wait_until(lambda: rows_by_key(db, [rk])[rk]["attempts"] == 1, 10, "the retrying row's failure")
    left = rows_by_key(db, [pk, rk])
    assert set(left) == {pk, rk}
    assert left[pk]["attempts"] == 3 and left[pk]["processed_at"] is None
    assert "HTTP 500" in left[pk]["last_error"]
    r = left[rk]
    assert r["processed_at"] is None and r["dead_at"] is None and r["retry_after"] is not None
    assert "HTTP 500" in r["last_error"]
    assert db.scalar("SELECT count(*) FROM outbox") == 2


def test_large_payload_sent_byte_exact(db, sink, relay):
    """A 1.3 MB payload with multi-byte UTF-8 arrives byte for byte."""
    relay(db, env=env())
    payload = ("\u00e9\u4e2d\U0001F600 0123456789abcdef" * 110000)[:1_000_000]
    (row,) = insert(db, [{"destinations": [http_dest(sink.url("/big"))], "payload": payload}])
    wait_processed(db, [row["idempotent_key"]])
    (rec,) = sink.requests()
    assert rec["body_size"] == len(payload.encode())
    assert body_bytes(rec) == payload.encode()


def test_only_2xx_is_success(db, sink, relay):
    """201 and 204 are successes; 302 (redirects are not followed), 404 and 429 are failures
    that are retried, with the status in last_error."""
    sink.rules([{"path": "/s/201", "status": 201}, {"path": "/s/204", "status": 204},
                {"path": "/s/302", "status": 302, "times": 1, "headers": {"Location": "/s/elsewhere"}},
                {"path": "/s/404", "status": 404, "times": 1},
                {"path": "/s/429", "status": 429, "times": 1}])
    r = relay(db, env=env(OUTBOX_RETRY_BASE_MS=100))
    rows = {code: row for code, row in zip(
        (201, 204, 302, 404, 429),
        insert(db, [{"destinations": [http_dest(sink.url(f"/s/{c}"))], "payload": str(c)}
                    for c in (201, 204, 302, 404, 429)]))}
    got = wait_processed(db, keys(rows.values()))
    for code in (201, 204):
        assert got[rows[code]["idempotent_key"]]["attempts"] == 1
        assert len(sink.requests(path=f"/s/{code}")) == 1
    for code in (302, 404, 429):
        k = rows[code]["idempotent_key"]
        assert got[k]["attempts"] == 2, (code, got[k])
        assert re.search(rf"delivery failed for row {k} .*: HTTP {code}\b", r.log()), (code, r.log()[-2000:])
        assert [x["response"]["status"] for x in sink.requests(path=f"/s/{code}")] == [code, 200]
    assert sink.requests(path="/s/elsewhere") == []
    assert r.alive()


def test_batch_window_gathers_claims_and_keeps_order(db, sink, relay):
    """OUTBOX_BATCH_WINDOW_MS=400: a row after a pause is claimed at once (the first claim
    is not held back); 30 rows over 10 partitions written one transaction at a time in the
    next ~150 ms go out together at the end of the window, in fewer claim statements than
    partitions; every row arrives once and each partition's rows in commit order."""
    r = relay(db, env=env(OUTBOX_BATCH_WINDOW_MS=400))
    wait_scanned(r)
    claims0 = metric(r, "outbox_relay_claims_total")
    (first,) = insert(db, [{"destinations": [http_dest(sink.url("/first"))], "payload": "first"}])
    wait_processed(db, [first["idempotent_key"]], timeout=5)
    assert metric(r, "outbox_relay_claims_total") == claims0 + 1

    parts = [uuid7() for _ in range(10)]
    rows = []
    for i in range(3):
        for p in parts:
            rows += insert(db, [{"partition_key": p, "destinations": [http_dest(sink.url(f"/w/{p}"))],
                                 "payload": json.dumps({"s": i})}])
    wait_processed(db, keys(rows), timeout=10)
    claims = metric(r, "outbox_relay_claims_total") - claims0 - 1
    assert 1 <= claims < len(parts), f"{claims} claim statements for {len(parts)} partitions"
    assert_each_once(sink.requests(), keys(rows) + [first["idempotent_key"]])
    for p in parts:
        seqs = [json.loads(r["body"])["s"] for r in sink.requests() if r["path"] == f"/w/{p}"]
        assert seqs == [0, 1, 2], (p, seqs)
