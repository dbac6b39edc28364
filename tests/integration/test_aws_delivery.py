"""SQS and SNS delivery against fauxqs: what arrives (read back with the official AWS SDK for
JavaScript through tests/aws/consumer.mjs), FIFO groups and order, batching into
SendMessageBatch / PublishBatch requests, per-entry and whole-request failures, checks made
before sending, and a row mixing HTTP, SQS and SNS destinations.

Requests are counted and inspected by tests/aws/sigv4-verifier.mjs placed in front of fauxqs
(it also checks every signature: see test_aws_credentials.py for the signature tests), or by
the small Python proxies below when a test needs to tamper with an answer.

Shared helpers (Verifier, StandIn, aws_env, ...) live here; test_aws_credentials.py imports them.
"""

from __future__ import annotations

import http.client
import http.server
import json
import re
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest

from conftest import (AWS_DIR, LOCALHOST, read_line_with_deadline, spawn, stop_process,
                      uuid7, wait_until)
from relay_util import env, http_dest, insert, keys, rows_by_key, wait_dead, wait_processed

REGION = "us-east-1"
KEY_ID = "AKIDOBRTEST"
SECRET = "obr-aws-test-secret-value"

# ---- helpers shared with test_aws_credentials.py ----------------------------------------------


def sqs(url: str) -> dict:
    return {"queue_url": url}


def sns(arn: str) -> dict:
    return {"topic_arn": arn}


def queue_destination(fauxqs, kind: str, tag: str) -> tuple[dict, dict]:
    """A fresh queue, and the destination that reaches it: the queue itself (kind "sqs") or a
    fresh topic with the queue subscribed raw ("sns"). Returns (queue, destination)."""
    q = fauxqs.create_queue(fauxqs.unique(tag))
    if kind == "sqs":
        return q, sqs(q["QueueUrl"])
    topic = fauxqs.create_topic(fauxqs.unique(tag + "t"))
    fauxqs.subscribe(topic, q["QueueArn"], raw=True)
    return q, sns(topic)


def aws_env(endpoint: str | None, **overrides: Any) -> dict:
    """A relay environment for SQS/SNS: push mode, debug log, short retries, static test keys,
    and never the real instance-metadata service (AWS_EC2_METADATA_DISABLED unless a test points
    AWS_EC2_METADATA_SERVICE_ENDPOINT at a local stand-in). None removes a variable."""
    base = {
        "AWS_REGION": REGION,
        "AWS_ACCESS_KEY_ID": KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_EC2_METADATA_DISABLED": "true",
        "OUTBOX_RETRY_BASE_MS": 200,
        "OUTBOX_RETRY_MAX_MS": 1000,
    }
    base.update(overrides)
    if base.get("AWS_EC2_METADATA_SERVICE_ENDPOINT"):
        assert base["AWS_EC2_METADATA_SERVICE_ENDPOINT"].startswith(f"http://{LOCALHOST}:")
    else:
        assert base.get("AWS_EC2_METADATA_DISABLED") == "true", "tests never reach 169.254.169.254"
    return env(**base)


class Verifier:
    """tests/aws/sigv4-verifier.mjs in front of fauxqs: checks each request's SigV4 signature
    with @smithy/signature-v4, answers 403 on a mismatch, forwards the rest; records them all."""

    def __init__(self, fauxqs, log_path: Path, keys: dict[str, tuple[str, str | None]]) -> None:
        self.proc = spawn([fauxqs.node, "sigv4-verifier.mjs", "--port", "0", "--forward", fauxqs.endpoint,
                           "--region", REGION], log=log_path, stdout=subprocess.PIPE, cwd=AWS_DIR)
        self.log_path = log_path
        try:
            line = read_line_with_deadline(self.proc.stdout, 30, "the verifier's 'listening PORT' line",
                                           self.proc)
            m = re.fullmatch(r"listening (\d+)", line)
            assert m, f"unexpected first line from the verifier: {line!r}"
        except BaseException:
            stop_process(self.proc, signal.SIGKILL)
            raise
        self.port = int(m.group(1))
        self.endpoint = f"http://{LOCALHOST}:{self.port}"
        self.add_keys(keys)

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.endpoint + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
            return json.loads(raw) if raw else None

    def add_keys(self, keys: dict[str, tuple[str, str | None]]) -> None:
        self._call("POST", "/_verifier/keys", {k: {"secret": s, "token": t} for k, (s, t) in keys.items()})

    def requests(self, action: str | None = None) -> list[dict]:
        recs = self._call("GET", "/_verifier/requests")
        return [r for r in recs if action is None or r["action"] == action]

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM, 10)
        self.proc.stdout.close()


@pytest.fixture
def make_verifier(fauxqs, tmp_path):
    """make_verifier(keys={id: (secret, token)}) -> Verifier, stopped at teardown."""
    made: list[Verifier] = []

    def make(keys: dict | None = None) -> Verifier:
        v = Verifier(fauxqs, tmp_path / f"verifier-{len(made)}.log",
                     keys if keys is not None else {KEY_ID: (SECRET, None)})
        made.append(v)
        return v

    yield make
    for v in made:
        v.stop()


@pytest.fixture
def verifier(make_verifier) -> Verifier:
    return make_verifier()


class StandIn:
    """A local HTTP server (127.0.0.1, a thread) whose answers come from
    handler(method, path, headers, body) -> (status, headers, body). Records every request."""

    def __init__(self, handler: Callable[[str, str, dict, bytes], tuple[int, dict, bytes | str]]) -> None:
        self.handler = handler
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                with outer.lock:
                    outer.requests.append({"method": self.command, "path": self.path, "headers": headers,
                                           "body": body})
                try:
                    status, rh, rb = outer.handler(self.command, self.path, headers, body)
                except Exception as e:  # a broken stand-in shows up as a 500 in the relay's error
                    status, rh, rb = 500, {"Content-Type": "text/plain"}, f"stand-in error: {e!r}"
                rb = rb.encode() if isinstance(rb, str) else rb
                self.send_response(status)
                for k, v in rh.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(rb)))
                self.end_headers()
                self.wfile.write(rb)

            do_GET = do_POST = do_PUT = _any

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((LOCALHOST, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://{LOCALHOST}:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def count(self, method: str | None = None, path: str | None = None) -> int:
        with self.lock:
            return sum(1 for r in self.requests
                       if (method is None or r["method"] == method) and (path is None or r["path"] == path))

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def standin():
    """standin(handler) -> StandIn, stopped at teardown."""
    made: list[StandIn] = []

    def make(handler) -> StandIn:
        s = StandIn(handler)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


def forward_to(endpoint: str, method: str, path: str, headers: dict, body: bytes) -> tuple[int, dict, bytes]:
    """Sends the request on to endpoint (fauxqs or the verifier); returns its answer."""
    u = urllib.parse.urlsplit(endpoint)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        fwd = {k: v for k, v in headers.items() if k not in ("host", "content-length", "connection")}
        conn.request(method, path, body=body, headers=fwd)
        resp = conn.getresponse()
        ct = resp.getheader("Content-Type") or "application/octet-stream"
        return resp.status, {"Content-Type": ct}, resp.read()
    finally:
        conn.close()


def receive_all(fauxqs, queue_url: str, n: int, wait_ms: int = 3000) -> list[dict]:
    """Reads n messages (failing if fewer come), then proves nothing else is there."""
    got = fauxqs.receive(queue_url, max=n, wait_ms=wait_ms)
    assert len(got) == n, f"expected {n} messages in {queue_url}, got {len(got)}: {got}"
    # callers wait for the rows to be processed first, so every send has been answered and an
    # extra message would already be in the in-memory queue: the 300 ms are no bet on timing
    extra = fauxqs.receive(queue_url, max=10, wait_ms=300)
    assert extra == [], f"unexpected extra messages: {extra}"
    return got


def attrs_of(row: dict) -> dict:
    """The message attributes a row must arrive with."""
    out = {"x-idempotent-key": {"DataType": "String", "StringValue": row["idempotent_key"]}}
    for k, v in (row.get("headers") or {}).items():
        out[k] = {"DataType": "String", "StringValue": v}
    return out


def by_attr_key(messages: list[dict]) -> dict[str, dict]:
    return {m["MessageAttributes"]["x-idempotent-key"]["StringValue"]: m for m in messages}


def wait_row(db, key: str, cond, what: str, timeout: float = 15) -> dict:
    return wait_until(lambda: (lambda r: r if r and cond(r) else None)(rows_by_key(db, [key]).get(key)),
                      timeout, what, interval=0.01)


PAYLOADS = [
    '{"order": 42, "note": "caf\u00e9 \\" quoted"}',
    # (no characters beyond U+FFFF: fauxqs 1.9.2 wrongly refuses them, SQS accepts them)
    "line one\nline two\ttabbed \u2603 snow, \u00e9\u00e8 \ud7ff \ue000 \ufffd",
    "<xml attr=\"1\">&amp; ampersands & < > </xml>",
]


# ---- standard and FIFO queues --------------------------------------------------------------


def test_sqs_standard_queue_fields(db, relay, fauxqs, verifier):
    """Rows to a standard queue arrive with their exact body, x-idempotent-key and every row
    header as String attributes, and no FIFO fields; each row is processed after one attempt.
    The requests are SendMessageBatch calls (AWS JSON 1.0) whose signatures verify."""
    q = fauxqs.create_queue(fauxqs.unique("std"))
    relay(db, env=aws_env(verifier.endpoint))
    rows = insert(db, [
        {"destinations": [sqs(q["QueueUrl"])], "payload": PAYLOADS[0],
         "headers": {"content-type": "application/json", "X-Trace": "abc-123"}},
        {"destinations": [sqs(q["QueueUrl"])], "payload": PAYLOADS[1], "headers": None},
        {"destinations": [sqs(q["QueueUrl"])], "payload": PAYLOADS[2],
         "headers": {"a.b_c-d": "value with spaces & symbols <>", "unicode": "\u00fcber \u2603"}},
    ])
    got = wait_processed(db, keys(rows))
    assert all(r["attempts"] == 1 and r["dead_at"] is None for r in got.values())
    msgs = by_attr_key(receive_all(fauxqs, q["QueueUrl"], 3))
    for row in rows:
        m = msgs[row["idempotent_key"]]
        assert m["Body"] == row["payload"]
        assert m["MessageAttributes"] == attrs_of(row)
        assert "MessageGroupId" not in m and "MessageDeduplicationId" not in m
    recs = verifier.requests()
    assert recs and all(r["ok"] and r["action"] == "SendMessageBatch" for r in recs), recs
    assert sum(r["entries"] for r in recs) == 3


def test_sqs_fifo_queue_group_dedup_and_order(db, relay, fauxqs, verifier):
    """A .fifo queue: MessageGroupId = partition key, MessageDeduplicationId = idempotent key,
    and each partition's rows arrive in the partition's order."""
    q = fauxqs.create_queue(fauxqs.unique("fifo"), fifo=True)
    assert q["QueueUrl"].endswith(".fifo")
    parts = [str(uuid7()) for _ in range(3)]
    rows = insert(db, [{"partition_key": parts[i % 3], "destinations": [sqs(q["QueueUrl"])],
                        "payload": f"p{i % 3}-n{i // 3}", "headers": {"seq": str(i // 3)}}
                       for i in range(12)])
    relay(db, env=aws_env(verifier.endpoint))
    wait_processed(db, keys(rows))
    msgs = receive_all(fauxqs, q["QueueUrl"], 12)
    by_key = {r["idempotent_key"]: r for r in rows}
    for m in msgs:
        row = by_key[m["MessageDeduplicationId"]]
        assert m["MessageGroupId"] == row["partition_key"]
        assert m["Body"] == row["payload"]
        assert m["MessageAttributes"] == attrs_of(row)
    for p in parts:
        seen = [m["Body"] for m in msgs if m["MessageGroupId"] == p]
        expected = [r["payload"] for r in rows if r["partition_key"] == p]
        assert seen == expected, f"group {p} out of order"
    assert all(r["ok"] for r in verifier.requests())


# ---- topics ----------------------------------------------------------------------------------


def test_sns_standard_topic_raw_and_envelope(db, relay, fauxqs, verifier):
    """A standard topic with two SQS subscriptions: the raw one gets the payload and the
    attributes as SQS message attributes; the other gets SNS's JSON envelope whose Message and
    MessageAttributes carry the same. Sent as PublishBatch (Query protocol)."""
    topic = fauxqs.create_topic(fauxqs.unique("topic"))
    raw_q = fauxqs.create_queue(fauxqs.unique("raw"))
    env_q = fauxqs.create_queue(fauxqs.unique("env"))
    fauxqs.subscribe(topic, raw_q["QueueArn"], raw=True)
    fauxqs.subscribe(topic, env_q["QueueArn"])
    relay(db, env=aws_env(verifier.endpoint))
    rows = insert(db, [
        {"destinations": [sns(topic)], "payload": PAYLOADS[i], "headers": h}
        for i, h in enumerate([{"event": "created", "x-tenant": "t1"}, None, {"k": "v=1&w=2%"}])
    ])
    wait_processed(db, keys(rows))
    raw = by_attr_key(receive_all(fauxqs, raw_q["QueueUrl"], 3))
    envelopes = [json.loads(m["Body"]) for m in receive_all(fauxqs, env_q["QueueUrl"], 3)]
    env_by_key = {e["MessageAttributes"]["x-idempotent-key"]["Value"]: e for e in envelopes}
    for row in rows:
        m = raw[row["idempotent_key"]]
        assert m["Body"] == row["payload"]
        assert m["MessageAttributes"] == attrs_of(row)
        e = env_by_key[row["idempotent_key"]]
        assert e["Type"] == "Notification" and e["TopicArn"] == topic
        assert e["Message"] == row["payload"]
        assert e["MessageAttributes"] == {k: {"Type": "String", "Value": v["StringValue"]}
                                          for k, v in attrs_of(row).items()}
    recs = verifier.requests()
    assert recs and all(r["ok"] and r["service"] == "sns" and r["action"] == "PublishBatch" for r in recs)


def test_sns_fifo_topic_to_fifo_queue(db, relay, fauxqs, verifier):
    """A .fifo topic with a FIFO queue subscribed (raw): group id = partition key, dedup id =
    idempotent key, order per partition kept."""
    topic = fauxqs.create_topic(fauxqs.unique("ftopic"), fifo=True)
    q = fauxqs.create_queue(fauxqs.unique("fsub"), fifo=True)
    fauxqs.subscribe(topic, q["QueueArn"], raw=True)
    parts = [str(uuid7()) for _ in range(2)]
    rows = insert(db, [{"partition_key": parts[i % 2], "destinations": [sns(topic)],
                        "payload": f"g{i % 2}-{i // 2}"} for i in range(8)])
    relay(db, env=aws_env(verifier.endpoint))
    wait_processed(db, keys(rows))
    msgs = receive_all(fauxqs, q["QueueUrl"], 8)
    by_key = {r["idempotent_key"]: r for r in rows}
    for m in msgs:
        row = by_key[m["MessageDeduplicationId"]]
        assert m["MessageGroupId"] == row["partition_key"] and m["Body"] == row["payload"]
        assert m["MessageAttributes"] == attrs_of(row)
    for p in parts:
        assert [m["Body"] for m in msgs if m["MessageGroupId"] == p] == \
            [r["payload"] for r in rows if r["partition_key"] == p]


# ---- batching --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sqs", "sns"])
def test_25_rows_go_out_in_3_batches(db, relay, fauxqs, verifier, kind):
    """25 rows in 25 partitions, found together by the start-up scan, leave in one loop turn:
    3 requests of 10, 10 and 5 entries; all 25 arrive once."""
    q, dest = queue_destination(fauxqs, kind, "b")
    rows = insert(db, [{"destinations": [dest], "payload": f"m{i}"} for i in range(25)])
    relay(db, env=aws_env(verifier.endpoint))
    wait_processed(db, keys(rows))
    recs = verifier.requests("SendMessageBatch" if kind == "sqs" else "PublishBatch")
    assert sorted(r["entries"] for r in recs) == [5, 10, 10], recs
    assert all(r["ok"] for r in recs)
    msgs = by_attr_key(receive_all(fauxqs, q["QueueUrl"], 25))
    assert set(msgs) == set(keys(rows))


def test_large_sqs_message_travels_alone(db, relay, fauxqs, verifier):
    """Messages are grouped only up to 256 KiB a request: a 300 KiB message (SQS accepts up to
    1 MiB) goes in a request of its own; small ones still share."""
    q = fauxqs.create_queue(fauxqs.unique("big"))
    big = "B" * (300 * 1024)
    rows = insert(db, [{"destinations": [sqs(q["QueueUrl"])], "payload": p}
                       for p in ["small-1", big, "small-2", "small-3"]])
    relay(db, env=aws_env(verifier.endpoint))
    wait_processed(db, keys(rows))
    recs = verifier.requests("SendMessageBatch")
    assert sum(r["entries"] for r in recs) == 4
    for r in recs:
        if r["bytes"] > 256 * 1024:
            assert r["entries"] == 1, recs
    msgs = by_attr_key(receive_all(fauxqs, q["QueueUrl"], 4))
    assert msgs[rows[1]["idempotent_key"]]["Body"] == big


# ---- failures --------------------------------------------------------------------------------


def test_per_entry_failure_parks_only_that_row(db, relay, fauxqs, verifier):
    """One request of 5 entries where SQS refuses one (a control character SQS does not accept):
    the others are processed after one attempt; that row is parked at once (a sender fault is
    permanent) with the AWS code in last_error, and never arrives."""
    q = fauxqs.create_queue(fauxqs.unique("pe"))
    payloads = ["ok-0", "ok-1", "bad \u0001 control", "ok-3", "ok-4"]
    rows = insert(db, [{"destinations": [sqs(q["QueueUrl"])], "payload": p} for p in payloads])
    relay(db, env=aws_env(verifier.endpoint))
    bad = rows[2]["idempotent_key"]
    good = [r["idempotent_key"] for i, r in enumerate(rows) if i != 2]
    got = wait_processed(db, good)
    assert all(got[k]["attempts"] == 1 for k in good)
    parked = wait_dead(db, [bad])[bad]
    assert parked["processed_at"] is None and parked["attempts"] == 1
    assert "SQS InvalidMessageContents" in parked["last_error"], parked["last_error"]
    (rec,) = verifier.requests("SendMessageBatch")
    assert rec["entries"] == 5, "the failing entry was not in the same request"
    msgs = by_attr_key(receive_all(fauxqs, q["QueueUrl"], 4))
    assert set(msgs) == set(good)


class EntryTamper:
    """A proxy to fauxqs that, for the first batch request, withholds entry "0" and reports it
    as failed with a retryable code (SenderFault false), as SQS/SNS do under throttling."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.tampered_key: str | None = None

    def __call__(self, method, path, headers, body):
        ct = headers.get("content-type", "")
        if self.tampered_key is None and "x-amz-json-1.0" in ct:
            req = json.loads(body)
            if headers.get("x-amz-target") == "AmazonSQS.SendMessageBatch":
                entry = next(e for e in req["Entries"] if e["Id"] == "0")
                self.tampered_key = entry["MessageAttributes"]["x-idempotent-key"]["StringValue"]
                req["Entries"] = [e for e in req["Entries"] if e["Id"] != "0"]
                if req["Entries"]:
                    status, rh, rb = forward_to(self.upstream, method, path, headers, json.dumps(req).encode())
                    answer = json.loads(rb)
                else:
                    status, rh, answer = 200, {"Content-Type": "application/x-amz-json-1.0"}, {"Successful": []}
                answer.setdefault("Failed", []).append({"Id": "0", "SenderFault": False,
                                                        "Code": "RequestThrottled",
                                                        "Message": "Rate exceeded"})
                return status, rh, json.dumps(answer)
        if self.tampered_key is None and "x-www-form-urlencoded" in ct:
            form = urllib.parse.parse_qsl(body.decode(), keep_blank_values=True)
            if ("Action", "PublishBatch") in form:
                prefix = "PublishBatchRequestEntries.member.1."
                names = {k: v for k, v in form if k.startswith(prefix + "MessageAttributes.entry.")}
                for k, v in names.items():
                    if k.endswith(".Name") and v == "x-idempotent-key":
                        self.tampered_key = names[k[:-len("Name")] + "Value.StringValue"]
                assert form and dict(form)[prefix + "Id"] == "0"
                rest = [(k, v) for k, v in form if not k.startswith(prefix)]
                if any(k.startswith("PublishBatchRequestEntries.") for k, _ in rest):
                    status, rh, rb = forward_to(self.upstream, method, path, headers,
                                                urllib.parse.urlencode(rest).encode())
                else:
                    status, rh = 200, {"Content-Type": "text/xml"}
                    rb = (b"<PublishBatchResponse><PublishBatchResult><Successful/><Failed/>"
                          b"</PublishBatchResult></PublishBatchResponse>")
                failed = ("<member><Id>0</Id><Code>Throttling</Code><Message>Rate exceeded</Message>"
                          "<SenderFault>false</SenderFault></member>")
                text = rb.decode()
                text = text.replace("<Failed>", "<Failed>" + failed, 1) if "<Failed>" in text \
                    else text.replace("<Failed/>", f"<Failed>{failed}</Failed>", 1)
                return status, rh, text
        return forward_to(self.upstream, method, path, headers, body)


@pytest.mark.parametrize("kind", ["sqs", "sns"])
def test_retryable_entry_failure_retries_only_that_row(db, relay, fauxqs, standin, kind):
    """A 200 answer that fails one entry with a throttling code: only that row is retried (and
    then delivered); the batch's other rows are processed after one attempt; each message
    arrives exactly once."""
    tamper = EntryTamper(fauxqs.endpoint)
    proxy = standin(tamper)
    q, dest = queue_destination(fauxqs, kind, "rt")
    rows = insert(db, [{"destinations": [dest], "payload": f"r{i}"} for i in range(4)])
    relay(db, env=aws_env(proxy.url))
    got = wait_processed(db, keys(rows))
    assert tamper.tampered_key in got
    for k, row in got.items():
        if k == tamper.tampered_key:
            assert row["attempts"] == 2, row
        else:
            assert row["attempts"] == 1, row
    msgs = by_attr_key(receive_all(fauxqs, q["QueueUrl"], 4))
    assert set(msgs) == set(keys(rows))


def test_retryable_entry_failure_is_recorded(db, relay, fauxqs, standin):
    """While the throttled row waits for its retry, last_error holds the AWS code and message."""
    tamper = EntryTamper(fauxqs.endpoint)
    proxy = standin(tamper)
    q = fauxqs.create_queue(fauxqs.unique("rr"))
    (row,) = insert(db, [{"destinations": [sqs(q["QueueUrl"])], "payload": "x"}])
    relay(db, env=aws_env(proxy.url, OUTBOX_RETRY_BASE_MS=3000, OUTBOX_RETRY_MAX_MS=3000))
    k = row["idempotent_key"]
    r = wait_row(db, k, lambda x: x["attempts"] == 1 and x["last_error"], "the first failure")
    assert "SQS RequestThrottled: Rate exceeded" in r["last_error"], r["last_error"]
    assert r["dead_at"] is None and r["retry_after"] is not None
    wait_processed(db, [k])


def test_nonexistent_queue_and_topic_are_parked(db, relay, fauxqs):
    """Whole-request errors: a queue or topic that does not exist is a permanent error: the
    row is parked after one attempt, with the AWS error code and message."""
    real = fauxqs.create_queue(fauxqs.unique("exists"))
    missing_q = real["QueueUrl"].rsplit("/", 1)[0] + "/" + fauxqs.unique("nope")
    missing_t = f"arn:aws:sns:{REGION}:000000000000:{fauxqs.unique('nope')}"
    relay(db, env=aws_env(fauxqs.endpoint))
    rq, rt = insert(db, [{"destinations": [sqs(missing_q)], "payload": "q"},
                         {"destinations": [sns(missing_t)], "payload": "t"}])
    got = wait_dead(db, keys([rq, rt]))
    q = got[rq["idempotent_key"]]
    t = got[rt["idempotent_key"]]
    assert q["attempts"] == 1 and "SQS QueueDoesNotExist" in q["last_error"], q
    assert t["attempts"] == 1 and "SNS NotFound" in t["last_error"], t


def test_server_errors_are_retried(db, relay, fauxqs, standin):
    """5xx answers (with and without an AWS error body) are retried; the row gets through once
    the service answers again, and arrives once."""
    answers = [
        (503, {"Content-Type": "application/x-amz-json-1.0"},
         json.dumps({"__type": "com.amazonaws.sqs#ServiceUnavailable", "message": "try later"})),
        (502, {"Content-Type": "text/html"}, "<html>bad gateway</html>"),
    ]

    def handler(method, path, headers, body):
        if answers:
            return answers.pop(0)
        return forward_to(fauxqs.endpoint, method, path, headers, body)

    proxy = standin(handler)
    q = fauxqs.create_queue(fauxqs.unique("5xx"))
    relay(db, env=aws_env(proxy.url, OUTBOX_RETRY_BASE_MS=300, OUTBOX_RETRY_MAX_MS=300))
    (row,) = insert(db, [{"destinations": [sqs(q["QueueUrl"])], "payload": "x"}])
    k = row["idempotent_key"]
    first = wait_row(db, k, lambda x: x["attempts"] >= 1, "the first failure")
    assert "SQS ServiceUnavailable: try later" in first["last_error"], first["last_error"]
    second = wait_row(db, k, lambda x: x["attempts"] >= 2, "the second failure")
    if second["processed_at"] is None:
        assert "SQS HTTP 502" in second["last_error"], second["last_error"]
    got = wait_processed(db, [k])[k]
    assert got["attempts"] == 3 and got["dead_at"] is None
    receive_all(fauxqs, q["QueueUrl"], 1)


def test_rows_sqs_and_sns_would_refuse_are_parked_before_sending(db, relay, fauxqs, verifier):
    """Checked before sending, so a bad row never fails its batch neighbours: more than 9
    headers (the 10-attribute limit), an attribute name SQS/SNS reject, an empty payload, and
    a message over the size limit (SQS 1 MiB, SNS 256 KiB) are parked at once with a clear
    reason, and nothing is sent for them; a good row in the same turn gets through."""
    q = fauxqs.create_queue(fauxqs.unique("chk"))
    topic = fauxqs.create_topic(fauxqs.unique("chkt"))
    fauxqs.subscribe(topic, q["QueueArn"], raw=True)
    ten = {f"h{i}": str(i) for i in range(10)}
    nine = {f"h{i}": str(i) for i in range(9)}
    cases = [
        ({"destinations": [sqs(q["QueueUrl"])], "payload": "x", "headers": ten},
         "SQS allows at most 10 message attributes (x-idempotent-key and 9 headers); the row has 10 headers"),
        ({"destinations": [sns(topic)], "payload": "x", "headers": ten},
         "SNS allows at most 10 message attributes"),
        ({"destinations": [sqs(q["QueueUrl"])], "payload": "x", "headers": {"bad!name": "v"}},
         "header \"bad!name\" is not a valid SQS message attribute name"),
        ({"destinations": [sqs(q["QueueUrl"])], "payload": ""}, "SQS cannot carry an empty message"),
        ({"destinations": [sns(topic)], "payload": "S" * (256 * 1024)}, "over the SNS limit of 262144 bytes"),
        ({"destinations": [sqs(q["QueueUrl"])], "payload": "Q" * (1024 * 1024)},
         "over the SQS limit of 1048576 bytes"),
    ]
    relay(db, env=aws_env(verifier.endpoint))
    rows = insert(db, [c[0] for c in cases] + [
        {"destinations": [sqs(q["QueueUrl"])], "payload": "good", "headers": nine}])
    parked = wait_dead(db, keys(rows[:-1]))
    for row, (_, reason) in zip(rows, cases):
        got = parked[row["idempotent_key"]]
        assert got["attempts"] == 1 and reason in got["last_error"], (reason, got["last_error"])
    wait_processed(db, [rows[-1]["idempotent_key"]])
    (m,) = receive_all(fauxqs, q["QueueUrl"], 1)
    assert m["Body"] == "good" and len(m["MessageAttributes"]) == 10
    recs = verifier.requests()
    assert sum(r["entries"] or 0 for r in recs) == 1, recs


class WholeRequestRefusal:
    """A proxy to fauxqs that refuses a whole batch request (HTTP 400, as SQS and SNS do when a
    request is invalid) whenever it carries the marked payload, and forwards everything else.
    (fauxqs 1.9.2 fails entries one by one, and what it refuses for a whole request the relay
    checks before sending, so the refusal is made here.) .batches: entries per batch request."""

    MARK = "refuse-the-whole-request"

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.batches: list[int] = []

    def __call__(self, method, path, headers, body):
        ct = headers.get("content-type", "")
        if "x-amz-json-1.0" in ct and headers.get("x-amz-target") == "AmazonSQS.SendMessageBatch":
            req = json.loads(body)
            self.batches.append(len(req["Entries"]))
            if any(self.MARK in e["MessageBody"] for e in req["Entries"]):
                return 400, {"Content-Type": "application/x-amz-json-1.0"}, json.dumps(
                    {"__type": "com.amazonaws.sqs#InvalidParameterValue", "message": "an entry is invalid"})
        if "x-www-form-urlencoded" in ct:
            form = urllib.parse.parse_qsl(body.decode(), keep_blank_values=True)
            if ("Action", "PublishBatch") in form:
                self.batches.append(sum(1 for k, _ in form if re.fullmatch(r"PublishBatchRequestEntries\.member\.\d+\.Id", k)))
                if any(self.MARK in v for k, v in form if k.endswith(".Message")):
                    return 400, {"Content-Type": "text/xml"}, (
                        "<ErrorResponse><Error><Type>Sender</Type><Code>InvalidParameter</Code>"
                        "<Message>an entry is invalid</Message></Error><RequestId>1</RequestId></ErrorResponse>")
        return forward_to(self.upstream, method, path, headers, body)


@pytest.mark.parametrize("kind", ["sqs", "sns"])
def test_batch_refused_as_a_whole_blames_only_the_bad_row(db, relay, fauxqs, standin, kind):
    """A batch request refused as a whole (400) for one entry's sake: each message is sent
    again alone, so only the row at fault is parked; the rows of other partitions that shared
    its batch are delivered after one attempt."""
    refusal = WholeRequestRefusal(fauxqs.endpoint)
    proxy = standin(refusal)
    q, dest = queue_destination(fauxqs, kind, "whole")
    payloads = ["ok-0", "ok-1", f"bad {WholeRequestRefusal.MARK}", "ok-3", "ok-4"]
    rows = insert(db, [{"destinations": [dest], "payload": p} for p in payloads])
    relay(db, env=aws_env(proxy.url))
    bad = rows[2]["idempotent_key"]
    good = [r["idempotent_key"] for i, r in enumerate(rows) if i != 2]
    got = wait_processed(db, good)
    assert all(got[k]["attempts"] == 1 and got[k]["dead_at"] is None for k in good), got
    parked = wait_dead(db, [bad])[bad]
    assert parked["attempts"] == 1 and parked["processed_at"] is None
    assert ("SQS InvalidParameterValue" if kind == "sqs" else "SNS InvalidParameter") in parked["last_error"]
    assert refusal.batches[0] > 1, f"the rows did not share a request: {refusal.batches}"
    msgs = by_attr_key(receive_all(fauxqs, q["QueueUrl"], 4))
    assert set(msgs) == set(good)


@pytest.mark.parametrize("kind,status,code", [
    ("sqs", 400, "AccessDenied"),
    ("sqs", 400, "KMS.DisabledException"),
    ("sns", 403, "AuthorizationError"),
])
def test_permission_and_key_errors_are_retried(db, relay, fauxqs, standin, kind, status, code):
    """IAM and KMS changes take a while to propagate: AccessDenied, AuthorizationError and KMS
    errors are retried with the normal backoff (here they clear on the second attempt) instead
    of parking the row at once."""
    answered: list[int] = []

    def handler(method, path, headers, body):
        if not answered:
            answered.append(status)
            if kind == "sqs":
                return status, {"Content-Type": "application/x-amz-json-1.0"}, json.dumps(
                    {"__type": f"com.amazonaws.sqs#{code}", "message": "not yet"})
            return status, {"Content-Type": "text/xml"}, (
                f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>not yet</Message>"
                "</Error><RequestId>1</RequestId></ErrorResponse>")
        return forward_to(fauxqs.endpoint, method, path, headers, body)

    proxy = standin(handler)
    q, dest = queue_destination(fauxqs, kind, "perm")
    (row,) = insert(db, [{"destinations": [dest], "payload": "x"}])
    relay(db, env=aws_env(proxy.url, OUTBOX_RETRY_BASE_MS=300, OUTBOX_RETRY_MAX_MS=300))
    k = row["idempotent_key"]
    got = wait_processed(db, [k])[k]
    assert got["attempts"] == 2 and got["dead_at"] is None, got
    assert code in got["last_error"], got["last_error"]
    receive_all(fauxqs, q["QueueUrl"], 1)


def test_queue_url_on_a_non_aws_host_is_refused_without_an_override(db, relay, sink):
    """Without an endpoint override, signed SQS requests (access key id, session token) go only
    to https:// AWS hosts: a queue URL elsewhere, or over plain http://, is parked with the
    reason, and nothing reaches its host."""
    relay(db, env=aws_env(None))
    rows = insert(db, [{"destinations": [sqs(sink.url("/000000000000/collect"))], "payload": "x"},
                       {"destinations": [sqs("http://sqs.us-east-1.amazonaws.com/000000000000/q")], "payload": "y"}])
    got = wait_dead(db, keys(rows))
    for r in got.values():
        assert r["attempts"] == 1 and r["processed_at"] is None, r
        assert "not an AWS endpoint" in r["last_error"] and "AWS_ENDPOINT_URL_SQS" in r["last_error"], r
    assert sink.count() == 0


# ---- regions and endpoints ---------------------------------------------------------------------


def test_region_from_queue_url_and_topic_arn(db, relay, fauxqs, verifier):
    """Without AWS_REGION the signing region comes from the queue URL's host
    (sqs.<region>....) and the topic ARN; the verifier checks the credential scope."""
    q = fauxqs.create_queue(fauxqs.unique("reg"))
    topic = fauxqs.create_topic(fauxqs.unique("regt"))
    fauxqs.subscribe(topic, q["QueueArn"], raw=True)
    relay(db, env=aws_env(verifier.endpoint, AWS_REGION=None))
    rows = insert(db, [{"destinations": [sqs(q["QueueUrl"])], "payload": "1"},
                       {"destinations": [sns(topic)], "payload": "2"}])
    wait_processed(db, keys(rows))
    receive_all(fauxqs, q["QueueUrl"], 2)
    recs = verifier.requests()
    assert {r["service"] for r in recs} == {"sqs", "sns"} and all(r["ok"] for r in recs)


def test_crate_local_endpoint_and_region(db, relay, fauxqs, verifier):
    """The crate's LOCAL_ENDPOINT / LOCAL_REGION work when no AWS_* override is set."""
    q = fauxqs.create_queue(fauxqs.unique("local"))
    relay(db, env=aws_env(None, AWS_REGION=None, LOCAL_ENDPOINT=verifier.endpoint, LOCAL_REGION=REGION))
    (row,) = insert(db, [{"destinations": [sqs(q["QueueUrl"])], "payload": "via LOCAL_ENDPOINT"}])
    wait_processed(db, [row["idempotent_key"]])
    (m,) = receive_all(fauxqs, q["QueueUrl"], 1)
    assert m["Body"] == "via LOCAL_ENDPOINT"
    assert verifier.requests("SendMessageBatch")


def test_service_endpoint_overrides(db, relay, fauxqs, make_verifier):
    """AWS_ENDPOINT_URL_SQS and AWS_ENDPOINT_URL_SNS win over AWS_ENDPOINT_URL: each service's
    requests go to its own endpoint."""
    vs, vn = make_verifier(), make_verifier()
    q = fauxqs.create_queue(fauxqs.unique("ovr"))
    topic = fauxqs.create_topic(fauxqs.unique("ovrt"))
    fauxqs.subscribe(topic, q["QueueArn"], raw=True)
    relay(db, env=aws_env(f"http://{LOCALHOST}:9", AWS_ENDPOINT_URL_SQS=vs.endpoint,
                          AWS_ENDPOINT_URL_SNS=vn.endpoint))
    rows = insert(db, [{"destinations": [sqs(q["QueueUrl"])], "payload": "1"},
                       {"destinations": [sns(topic)], "payload": "2"}])
    wait_processed(db, keys(rows))
    assert {r["service"] for r in vs.requests()} == {"sqs"}
    assert {r["service"] for r in vn.requests()} == {"sns"}


def test_bad_endpoint_override_stops_the_relay(db, relay):
    r = relay(db, env=aws_env("ftp://example.com"), ready=False)
    assert r.wait(20) != 0
    assert "AWS_ENDPOINT_URL must be an http:// or https:// URL" in r.log()


# ---- a row with HTTP, SQS and SNS ------------------------------------------------------------


def test_mixed_row_resends_only_the_failed_destination(db, relay, fauxqs, sink, verifier):
    """One row with an HTTP, an SQS and an SNS destination; the HTTP endpoint fails once. The
    row is retried, but only the HTTP request is sent again: the queue and the topic's
    subscriber each get exactly one message."""
    sink.rules([{"path": "/mixed", "status": 500, "times": 1}])
    q = fauxqs.create_queue(fauxqs.unique("mix"))
    sub = fauxqs.create_queue(fauxqs.unique("mixsub"))
    topic = fauxqs.create_topic(fauxqs.unique("mixt"))
    fauxqs.subscribe(topic, sub["QueueArn"], raw=True)
    relay(db, env=aws_env(verifier.endpoint))
    (row,) = insert(db, [{"destinations": [http_dest(sink.url("/mixed")), sqs(q["QueueUrl"]), sns(topic)],
                          "payload": "mixed payload", "headers": {"X-Kind": "mixed"}}])
    k = row["idempotent_key"]
    got = wait_processed(db, [k])[k]
    assert got["attempts"] == 2
    assert [r["response"]["status"] for r in sink.requests(path="/mixed")] == [500, 200]
    (mq,) = receive_all(fauxqs, q["QueueUrl"], 1)
    (ms,) = receive_all(fauxqs, sub["QueueUrl"], 1)
    for m in (mq, ms):
        assert m["Body"] == "mixed payload"
        assert m["MessageAttributes"] == attrs_of(row)
    assert len(verifier.requests("SendMessageBatch")) == 1
    assert len(verifier.requests("PublishBatch")) == 1


# ---- shutdown --------------------------------------------------------------------------------


def slow_proxy(upstream: str, delay_s: float, arrived: threading.Event):
    def handle(method, path, headers, body):
        arrived.set()
        time.sleep(delay_s)
        return forward_to(upstream, method, path, headers, body)
    return handle


def test_shutdown_waits_for_a_batch_in_flight(db, relay, fauxqs, standin):
    """SIGTERM while a SendMessageBatch is on the wire: the relay waits for its answer, records
    the row as delivered, and exits 0."""
    arrived = threading.Event()
    proxy = standin(slow_proxy(fauxqs.endpoint, 1.0, arrived))
    q = fauxqs.create_queue(fauxqs.unique("stop"))
    r = relay(db, env=aws_env(proxy.url, OUTBOX_HTTP_TIMEOUT_MS=5000))
    (row,) = insert(db, [{"destinations": [sqs(q["QueueUrl"])], "payload": "late"}])
    assert arrived.wait(10), "the batch never reached the proxy"
    r.send_signal(signal.SIGTERM)
    assert r.wait(20) == 0
    got = rows_by_key(db, [row["idempotent_key"]])[row["idempotent_key"]]
    assert got["processed_at"] is not None and got["attempts"] == 1
    receive_all(fauxqs, q["QueueUrl"], 1)


def test_shutdown_grace_abandons_a_stuck_batch(db, relay, fauxqs, standin):
    """A batch whose answer does not come within the shutdown grace period is abandoned: the
    relay exits 0 without recording a result, so the row is sent again by the next run."""
    arrived = threading.Event()
    proxy = standin(slow_proxy(fauxqs.endpoint, 8.0, arrived))
    q = fauxqs.create_queue(fauxqs.unique("stuck"))
    r = relay(db, env=aws_env(proxy.url, OUTBOX_HTTP_TIMEOUT_MS=20000, OUTBOX_SHUTDOWN_GRACE_MS=300))
    (row,) = insert(db, [{"destinations": [sqs(q["QueueUrl"])], "payload": "stuck"}])
    assert arrived.wait(10), "the batch never reached the proxy"
    r.send_signal(signal.SIGTERM)
    assert r.wait(20) == 0
    assert "abandoning" in r.log()
    got = rows_by_key(db, [row["idempotent_key"]])[row["idempotent_key"]]
    assert got["processed_at"] is None and got["dead_at"] is None
