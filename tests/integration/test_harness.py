"""The test harness itself: the sink, fauxqs with the SDK consumer, the throwaway cluster,
PgBouncer and the row helpers. If these fail, no relay test result means anything."""

import http.client
import json
import socket
import threading
import time
import uuid

import psycopg2
import pytest

from conftest import LOCALHOST, body_bytes, header_values, uuid7, wait_until


def http_request(port, method, path, body=None, headers=(), timeout=10):
    """One request on a fresh connection; returns (status, body bytes). headers: pairs, so a
    name may repeat."""
    conn = http.client.HTTPConnection(LOCALHOST, port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# ---- sink: recording --------------------------------------------------------------------------


def test_sink_records_method_uri_headers_body(sink):
    before_us = time.time_ns() // 1000
    body = b'{"foo":"bar"}'
    status, answer = http_request(
        sink.port, "POST", "/hooks/a?x=1&y=%20", body,
        headers=[("Content-Type", "application/json"), ("X-Dup", "one"), ("x-idempotent-key", "k1"),
                 ("X-Dup", "two")])
    after_us = time.time_ns() // 1000
    assert (status, answer) == (200, b"")

    recs = sink.requests()
    assert len(recs) == 1
    r = recs[0]
    assert r["method"] == "POST"
    assert r["uri"] == "/hooks/a?x=1&y=%20"
    assert r["path"] == "/hooks/a"
    assert r["http_version"] == "1.1"
    assert r["body"] == '{"foo":"bar"}' and r["body_size"] == len(body)
    assert "body_base64" not in r
    assert before_us <= r["time_us"] <= after_us
    assert r["response"] == {"status": 200, "delay_ms": 0, "drop": False, "rule": None}
    names = [k for k, _ in r["headers"]]
    # arrival order with the duplicate kept where it was
    assert names == ["Host", "Content-Type", "X-Dup", "x-idempotent-key", "X-Dup", "Content-Length"]
    assert header_values(r, "x-dup") == ["one", "two"]
    assert header_values(r, "X-IDEMPOTENT-KEY") == ["k1"]


def test_sink_bodies_are_binary_safe(sink):
    raw = b"caf\xe9\x00\xff\n\xc3\xa9"
    status, _ = http_request(sink.port, "PUT", "/bin", raw)
    assert status == 200
    (r,) = sink.requests()
    assert r["method"] == "PUT"
    assert body_bytes(r) == raw
    assert r["body_size"] == len(raw)
    assert r["body"] == "caf\ufffd\x00\ufffd\né"  # readable form, invalid bytes as U+FFFD


def test_sink_methods_and_control_paths_not_recorded(sink):
    for method in ("GET", "PATCH", "DELETE", "OPTIONS"):
        assert http_request(sink.port, method, "/m")[0] == 200
    assert http_request(sink.port, "GET", "/_sink/unknown")[0] == 404
    assert http_request(sink.port, "DELETE", "/_sink/requests")[0] == 405
    assert [r["method"] for r in sink.requests()] == ["GET", "PATCH", "DELETE", "OPTIONS"]
    assert sink.count() == 4


def test_sink_since_reset_and_monotonic_seq(sink):
    for i in range(5):
        http_request(sink.port, "POST", f"/s/{i}", b"x")
    recs = sink.requests()
    seqs = [r["seq"] for r in recs]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    assert [r["path"] for r in sink.requests(since=seqs[2])] == ["/s/3", "/s/4"]
    assert sink.requests(since=seqs[-1]) == []

    sink.rules([{"path": "/s/9", "status": 500}])
    sink.reset()
    assert sink.count() == 0 and sink.requests() == [] and sink.get_rules() == []
    http_request(sink.port, "POST", "/s/9", b"x")
    (r,) = sink.requests()
    assert r["seq"] > seqs[-1], "sequence numbers must not restart after a reset"
    assert r["response"]["status"] == 200, "reset must clear the rules too"


def test_sink_keep_alive_reuses_the_connection(sink):
    conn = http.client.HTTPConnection(LOCALHOST, sink.port, timeout=10)
    try:
        for i in range(3):
            conn.request("POST", f"/ka/{i}", body=b"x")
            resp = conn.getresponse()
            assert resp.status == 200
            resp.read()
    finally:
        conn.close()
    recs = sink.requests()
    assert len(recs) == 3
    assert len({r["peer_port"] for r in recs}) == 1, "all three requests came on one connection"


def test_sink_rejects_bodies_above_max_body(make_sink):
    small = make_sink("--max-body", "1024")
    assert http_request(small.port, "POST", "/ok", b"a" * 1024)[0] == 200
    assert http_request(small.port, "POST", "/big", b"a" * 4096)[0] == 413
    assert [r["path"] for r in small.requests()] == ["/ok"]


# ---- sink: rules ------------------------------------------------------------------------------


def test_sink_rule_status_body_headers_method_prefix(sink):
    sink.rules([
        {"path": "/x", "method": "PUT", "status": 409, "body": "conflict",
         "headers": {"Retry-After": "3"}},
        {"prefix": "/api/", "status": 503},
        {"path": "/x", "status": 201},
    ])
    conn = http.client.HTTPConnection(LOCALHOST, sink.port, timeout=10)
    try:
        conn.request("PUT", "/x", body=b"1")
        resp = conn.getresponse()
        assert (resp.status, resp.read(), resp.getheader("Retry-After")) == (409, b"conflict", "3")
    finally:
        conn.close()
    assert http_request(sink.port, "POST", "/x", b"1")[0] == 201       # method falls through
    assert http_request(sink.port, "POST", "/api/v1/y?z", b"1")[0] == 503
    assert http_request(sink.port, "POST", "/apix", b"1")[0] == 200    # not under the prefix
    assert [r["response"]["rule"] for r in sink.requests()] == [0, 2, 1, None]


def test_sink_rule_times_then_falls_through(sink):
    sink.rules([{"path": "/flaky", "status": 500, "times": 2}, {"path": "/flaky", "status": 202}])
    statuses = [http_request(sink.port, "POST", "/flaky", b"x")[0] for _ in range(4)]
    assert statuses == [500, 500, 202, 202]
    assert sink.get_rules()[0]["times_left"] == 0
    assert [r["response"]["status"] for r in sink.requests()] == statuses


def test_sink_bad_rules_are_rejected_and_keep_the_old_ones(sink):
    sink.rules([{"path": "/a", "status": 418}])
    for bad in ([{"path": "/a", "delay": 5}], [{"path": "a"}], [{"status": 99}],
                [{"path": "/a", "prefix": "/a"}], {"path": "/a"}):
        with pytest.raises(AssertionError, match="400"):
            sink.rules(bad)
    assert http_request(sink.port, "GET", "/a")[0] == 418


def test_sink_delay_does_not_block_the_loop(sink):
    sink.rules([{"path": "/slow", "delay_ms": 2000, "status": 202}])
    result = {}

    def slow():
        t0 = time.monotonic()
        result["status"] = http_request(sink.port, "POST", "/slow", b"s")[0]
        result["elapsed"] = time.monotonic() - t0

    t = threading.Thread(target=slow)
    t.start()
    sink.wait_for_count(1, timeout=5)   # recorded on arrival, before the answer
    assert sink.requests()[0]["answered_us"] is None  # still held back
    assert http_request(sink.port, "POST", "/fast", b"f")[0] == 200
    t.join(10)
    assert not t.is_alive()
    assert result["status"] == 202
    assert result["elapsed"] >= 1.95  # the delay held the answer back (timers may round by a ms)
    # the fast request was answered before the delayed one, by the sink's own record: an
    # order, not a duration (a loop blocked by the delay would answer /fast after /slow)
    slow_rec, fast_rec = sink.requests()
    assert fast_rec["time_us"] <= fast_rec["answered_us"] < slow_rec["answered_us"], (slow_rec, fast_rec)
    assert slow_rec["answered_us"] - slow_rec["time_us"] >= 1_950_000
    assert [r["path"] for r in sink.requests()] == ["/slow", "/fast"]
    assert sink.requests()[0]["response"]["delay_ms"] == 2000


def test_sink_drop_closes_without_answer(sink):
    sink.rules([{"path": "/drop", "drop": True, "times": 1}])
    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
        http_request(sink.port, "POST", "/drop", b"lost")
    (r,) = sink.requests()
    assert r["response"]["drop"] is True and r["response"]["status"] is None
    assert body_bytes(r) == b"lost"
    # the sink is still fine and the rule is used up
    assert http_request(sink.port, "POST", "/drop", b"again")[0] == 200


def test_sink_drop_after_delay_on_a_kept_alive_connection(sink):
    sink.rules([{"path": "/late-drop", "drop": True, "delay_ms": 200}])
    conn = http.client.HTTPConnection(LOCALHOST, sink.port, timeout=10)
    try:
        conn.request("POST", "/first", body=b"1")
        assert conn.getresponse().read() == b""
        t0 = time.monotonic()
        conn.request("POST", "/late-drop", body=b"2")
        with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
            conn.getresponse()
        assert time.monotonic() - t0 >= 0.2
    finally:
        conn.close()
    assert sink.count() == 2


def test_sink_survives_clients_that_vanish(sink):
    """A client that goes away during a delay, and one that sends half a request."""
    sink.rules([{"path": "/slow", "delay_ms": 300}])
    s = socket.create_connection((LOCALHOST, sink.port))
    s.sendall(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nz")
    sink.wait_for_count(1, timeout=5)
    s.close()
    half = socket.create_connection((LOCALHOST, sink.port))
    half.sendall(b"POST /half HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    half.close()
    assert sink.pending() == 1
    # after the delayed answer went to a closed socket, the sink still answers
    wait_until(lambda: sink.pending() == 0, 5, "the delayed answer to be sent")
    assert http_request(sink.port, "GET", "/ping")[0] == 200
    assert [r["path"] for r in sink.requests()] == ["/slow", "/ping"]
    assert "/half" not in [r["path"] for r in sink.requests()], "an incomplete request is not recorded"


def test_sink_stops_cleanly_with_a_delayed_answer_pending(make_sink):
    s = make_sink()
    s.rules([{"path": "/hang", "delay_ms": 60000}])
    c = socket.create_connection((LOCALHOST, s.port))
    try:
        c.sendall(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
        s.wait_for_count(1, timeout=5)
        assert s.stop() == 0
    finally:
        c.close()


def test_sink_wait_for_count_times_out_with_a_clear_message(sink):
    http_request(sink.port, "POST", "/only-one", b"x")
    with pytest.raises(AssertionError, match=r"2 requests at the sink.*got 1: POST /only-one"):
        sink.wait_for_count(2, timeout=0.3)


def test_sink_handles_many_requests(sink):
    conn = http.client.HTTPConnection(LOCALHOST, sink.port, timeout=10)
    n = 2000
    t0 = time.monotonic()
    try:
        for i in range(n):
            conn.request("POST", f"/bulk/{i}", body=b"p" * 200, headers={"x-idempotent-key": str(i)})
            r = conn.getresponse()
            r.read()
    finally:
        conn.close()
    sink.wait_for_count(n, timeout=10)
    recs = sink.requests(since=0)
    elapsed = time.monotonic() - t0
    assert len(recs) == n
    assert [r["path"] for r in recs[:3]] == ["/bulk/0", "/bulk/1", "/bulk/2"]
    print(f"{n} requests in {elapsed:.1f}s")  # a number to read, not a pass/fail criterion


# ---- fauxqs + the SDK consumer ----------------------------------------------------------------


def test_fauxqs_sqs_round_trip(fauxqs):
    q = fauxqs.create_queue(fauxqs.unique("std"))
    assert q["QueueUrl"].endswith("/000000000000/" + q["QueueUrl"].rsplit("/", 1)[1])
    assert q["QueueArn"].startswith("arn:aws:sqs:us-east-1:000000000000:")
    mid = fauxqs.send(q["QueueUrl"], '{"foo":"bar"}', attrs={"x-idempotent-key": "abc"})
    msgs = fauxqs.receive(q["QueueUrl"], max=1, wait_ms=3000)
    assert len(msgs) == 1
    m = msgs[0]
    assert m["MessageId"] == mid
    assert m["Body"] == '{"foo":"bar"}'
    assert m["MessageAttributes"] == {"x-idempotent-key": {"DataType": "String", "StringValue": "abc"}}
    assert "MessageGroupId" not in m
    # receive deleted it
    assert fauxqs.receive(q["QueueUrl"], max=1, wait_ms=300) == []


def test_fauxqs_fifo_attributes(fauxqs):
    q = fauxqs.create_queue(fauxqs.unique("f"), fifo=True)
    assert q["QueueUrl"].endswith(".fifo")
    group = str(uuid7())
    for i in range(3):
        fauxqs.send(q["QueueUrl"], f"m{i}", group=group, dedup=f"d{i}")
    fauxqs.send(q["QueueUrl"], "m0-again", group=group, dedup="d0")  # deduplicated
    msgs = fauxqs.receive(q["QueueUrl"], max=10, wait_ms=500)
    assert [m["Body"] for m in msgs] == ["m0", "m1", "m2"]
    assert {m["MessageGroupId"] for m in msgs} == {group}
    assert [m["MessageDeduplicationId"] for m in msgs] == ["d0", "d1", "d2"]
    seqs = [int(m["SequenceNumber"]) for m in msgs]
    assert seqs == sorted(seqs)


def test_fauxqs_topic_fans_out_to_a_raw_subscription(fauxqs):
    topic = fauxqs.create_topic(fauxqs.unique("t"))
    assert topic.startswith("arn:aws:sns:us-east-1:000000000000:")
    raw = fauxqs.create_queue(fauxqs.unique("raw"))
    wrapped = fauxqs.create_queue(fauxqs.unique("wrapped"))
    assert fauxqs.subscribe(topic, raw["QueueArn"], raw=True).startswith(topic + ":")
    fauxqs.subscribe(topic, wrapped["QueueArn"])
    mid = fauxqs.publish(topic, "hello", attrs={"x-idempotent-key": "k1"})

    (m,) = fauxqs.receive(raw["QueueUrl"], max=1, wait_ms=3000)
    assert m["Body"] == "hello"
    assert m["MessageAttributes"] == {"x-idempotent-key": {"DataType": "String", "StringValue": "k1"}}
    (w,) = fauxqs.receive(wrapped["QueueUrl"], max=1, wait_ms=3000)
    envelope = json.loads(w["Body"])  # without raw delivery: the SNS JSON envelope
    assert (envelope["Type"], envelope["MessageId"], envelope["Message"]) == ("Notification", mid, "hello")
    assert envelope["MessageAttributes"]["x-idempotent-key"]["Value"] == "k1"


def test_fauxqs_fifo_topic(fauxqs):
    topic = fauxqs.create_topic(fauxqs.unique("tf"), fifo=True)
    assert topic.endswith(".fifo")
    q = fauxqs.create_queue(fauxqs.unique("tfq"), fifo=True)
    fauxqs.subscribe(topic, q["QueueArn"], raw=True)
    group = str(uuid7())
    fauxqs.publish(topic, "a", group=group, dedup="d-a")
    fauxqs.publish(topic, "b", group=group, dedup="d-b")
    msgs = fauxqs.receive(q["QueueUrl"], max=2, wait_ms=3000)
    assert [(m["Body"], m["MessageGroupId"]) for m in msgs] == [("a", group), ("b", group)]


def test_fauxqs_consumer_reports_errors(fauxqs):
    with pytest.raises(AssertionError, match="QueueDoesNotExist"):
        fauxqs.receive(fauxqs.endpoint + "/000000000000/no-such-queue", max=1, wait_ms=100)


def test_fauxqs_listens_on_loopback_only(fauxqs):
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    listening = [r[1] for r in rows if r[3] == "0A" and int(r[1].split(":")[1], 16) == fauxqs.port]
    assert listening == ["0100007F:%04X" % fauxqs.port]


# ---- PostgreSQL, PgBouncer, rows --------------------------------------------------------------


def test_cluster_restart(pg_cluster):
    c = pg_cluster.connect()
    with c.cursor() as cur:
        cur.execute("SELECT pg_postmaster_start_time()")
        (started,) = cur.fetchone()
        cur.execute("SHOW fsync")
        assert cur.fetchone() == ("off",)
        cur.execute("SHOW listen_addresses")
        assert cur.fetchone() == (LOCALHOST,)
    pg_cluster.restart()
    with pytest.raises(psycopg2.Error):
        with c.cursor() as cur:
            cur.execute("SELECT 1")
    c.close()
    with pg_cluster.connect() as c2, c2.cursor() as cur:
        cur.execute("SELECT pg_postmaster_start_time()")
        assert cur.fetchone()[0] > started
    c2.close()


def test_cluster_left_stopped_is_restarted_for_the_next_test(pg_cluster):
    pg_cluster.stop(mode="immediate")
    with pytest.raises(psycopg2.OperationalError):
        pg_cluster.connect().close()


def test_cluster_runs_again_after_the_previous_test_stopped_it(pg_cluster):
    with pg_cluster.connect() as c, c.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    c.close()


def test_empty_db_is_isolated(empty_db, make_db):
    other = make_db()
    assert empty_db.name != other.name
    empty_db.execute("CREATE TABLE only_here (x int)")
    assert other.scalar("SELECT count(*) FROM pg_class WHERE relname = 'only_here'") == 0
    assert empty_db.scalar("SELECT current_database()") == empty_db.name
    c = psycopg2.connect(empty_db.url)
    c.close()


def test_pgbouncer_transaction_pooling(pgbouncer, empty_db):
    b = pgbouncer()
    config = {row[0]: row[1] for row in b.admin("SHOW CONFIG")}
    assert config["pool_mode"] == "transaction"
    assert config["default_pool_size"] == "5"
    assert config["listen_addr"] == LOCALHOST
    c = psycopg2.connect(b.url(empty_db.name), connect_timeout=5)
    c.autocommit = True
    with c.cursor() as cur:
        cur.execute("SELECT current_database(), current_setting('port')::int")
        assert cur.fetchone() == (empty_db.name, empty_db.cluster.port)
    c.close()


def test_uuid7_layout_and_order():
    keys = [uuid7() for _ in range(5000)]
    assert all(k.version == 7 and k.variant == uuid.RFC_4122 for k in keys)
    assert keys == sorted(keys, key=lambda k: k.bytes), "keys sort in creation order"
    assert len(set(keys)) == len(keys)
    ms = keys[0].int >> 80
    assert abs(ms - time.time() * 1000) < 60_000


def test_insert_rows_in_crate_format(db, sink):
    part = uuid7()
    rows = db.insert_http_rows(sink.url("/hook"), 3, partition_key=part,
                               payload=lambda i: json.dumps({"i": i}),
                               dest_headers={"Content-Type": "application/json"},
                               headers={"x-row": "1"})
    got = db.outbox()
    assert [r["idempotent_key"] for r in got] == [r.idempotent_key for r in rows]
    assert {r["partition_key"] for r in got} == {str(part)}
    assert got[0]["destinations"] == [{"url": sink.url("/hook"),
                                       "headers": {"Content-Type": "application/json"},
                                       "method": None}]
    assert got[0]["headers"] == {"x-row": "1"}
    assert [r["payload"] for r in got] == ['{"i": 0}', '{"i": 1}', '{"i": 2}']
    assert all(r["attempts"] == 0 and r["processed_at"] is None for r in got)


# ---- the relay fixture ------------------------------------------------------------------------


def test_relay_fixture_starts_stops_and_separates_ports(db, relay):
    a = relay(db)
    b = relay(db)
    assert a.listen_addr != b.listen_addr, "each relay gets its own HTTP port"
    for r in (a, b):
        assert r.alive()
        status, _ = http_request(int(r.listen_addr.rsplit(":", 1)[1]), "GET", "/health")
        assert status == 200
        assert "relay ready" in r.log()
    assert a.stop() == 0 and not a.alive()
    assert b.stop() == 0


def test_relay_fixture_reports_an_early_exit(db, relay):
    with pytest.raises(AssertionError, match=r"the relay exited \(\d+\) while waiting"):
        relay(db, OUTBOX_MODE="no-such-mode", ready_timeout=10)
