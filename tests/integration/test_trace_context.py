"""W3C Trace Context through the outbox (migration 008): a transaction that sets
outbox.traceparent / outbox.tracestate with SET LOCAL gets them as headers on its rows, by plain
INSERT and by the SQL helpers, unless a row sets them itself; the relay sends them on as HTTP
headers and as SQS message attributes, so the consumer continues the writer's trace."""

import json

from conftest import header_values, uuid7
from relay_util import env, http_dest, keys, wait_processed
from test_aws_delivery import aws_env, receive_all, sqs

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACESTATE = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
INSERT = ("INSERT INTO outbox (idempotent_key, partition_key, destinations, headers, payload)"
          " VALUES (%s, %s, %s::jsonb, %s::jsonb, %s)")


def write(db, rows, traceparent=None, tracestate=None, helper_url=None):
    """Rows (destinations, headers, payload) in one transaction that sets the trace settings
    with SET LOCAL; with helper_url also one row by outbox_enqueue_http(). Returns the keys."""
    conn = db.conn(autocommit=False)
    out = []
    try:
        with conn.cursor() as cur:
            if traceparent is not None:
                cur.execute("SELECT set_config('outbox.traceparent', %s, true)", (traceparent,))
            if tracestate is not None:
                cur.execute("SELECT set_config('outbox.tracestate', %s, true)", (tracestate,))
            for dests, headers, payload in rows:
                key = str(uuid7())
                cur.execute(INSERT, (key, str(uuid7()), json.dumps(dests),
                                     None if headers is None else json.dumps(headers), payload))
                out.append(key)
            if helper_url:
                cur.execute("SELECT outbox_enqueue_http(%s::uuid, %s, %s)", (str(uuid7()), helper_url, "helper"))
                out.append(str(cur.fetchone()[0]))
        conn.commit()
    finally:
        conn.close()
    return out


def test_trace_context_reaches_http_requests(db, sink, relay):
    relay(db, env=env())
    dest = [http_dest(sink.url("/trace"))]
    traced = write(db, [(dest, None, "no headers"), (dest, {"x-a": "1"}, "some headers"),
                        (dest, {"TraceParent": "00-11111111111111111111111111111111-2222222222222222-00"},
                         "own trace")],
                   traceparent=TRACEPARENT, tracestate=TRACESTATE, helper_url=sink.url("/trace"))
    # the same session's next transaction, and one with a malformed value: no headers added
    plain = write(db, [(dest, None, "untraced")])
    bad = write(db, [(dest, None, "bad trace")], traceparent="00-not-a-trace-01", tracestate=TRACESTATE)
    wait_processed(db, traced + plain + bad)

    stored = dict(db.query("SELECT idempotent_key::text, headers FROM outbox"))
    for key in (traced[0], traced[1], traced[3]):
        assert stored[key]["traceparent"] == TRACEPARENT and stored[key]["tracestate"] == TRACESTATE
    assert stored[traced[1]]["x-a"] == "1"
    assert stored[traced[2]] == {"TraceParent": "00-11111111111111111111111111111111-2222222222222222-00"}
    assert stored[plain[0]] is None and stored[bad[0]] is None

    by_key = {header_values(r, "x-idempotent-key")[0]: r for r in sink.requests()}
    for key in (traced[0], traced[1], traced[3]):
        assert header_values(by_key[key], "traceparent") == [TRACEPARENT]
        assert header_values(by_key[key], "tracestate") == [TRACESTATE]
    assert header_values(by_key[traced[2]], "traceparent") == \
        ["00-11111111111111111111111111111111-2222222222222222-00"]
    assert header_values(by_key[traced[2]], "tracestate") == []
    for key in plain + bad:
        assert header_values(by_key[key], "traceparent") == []


def test_trace_context_reaches_sqs_attributes(db, relay, fauxqs):
    q = fauxqs.create_queue(fauxqs.unique("trace"))
    relay(db, env=aws_env(fauxqs.endpoint))
    (key,) = write(db, [([sqs(q["QueueUrl"])], None, "traced")], traceparent=TRACEPARENT)
    wait_processed(db, [key])
    (msg,) = receive_all(fauxqs, q["QueueUrl"], 1)
    attrs = msg["MessageAttributes"]
    assert attrs["traceparent"] == {"DataType": "String", "StringValue": TRACEPARENT}
    assert "tracestate" not in attrs
    assert attrs["x-idempotent-key"]["StringValue"] == key
