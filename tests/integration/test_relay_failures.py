"""Failures: retries with backoff and head-of-line blocking, parking at the failure limit,
re-sending only the failed destinations, timeouts and dropped connections, malformed rows."""

import email.utils
import re
import time

import pytest

from conftest import PortLock, body_bytes, uuid7, wait_until
from relay_util import (RawHttpServer, arrival_s, assert_each_once, env, http_dest, insert, keys,
                        rows_by_key, wait_dead, wait_processed)


def wait_row(db, key, cond, what, timeout=10):
    """Polls the row until cond(row) holds; returns the row."""
    return wait_until(lambda: (lambda r: r if r and cond(r) else None)(rows_by_key(db, [key]).get(key)),
                      timeout, what, interval=0.005)


def test_retry_with_backoff_blocks_only_its_partition(db, sink, relay):
    """/flaky answers 500 twice: the row is retried with backoff (base 100 ms, doubling), its
    attempts and last_error are stored meanwhile, the next row of its partition waits until it
    succeeded, and another partition is not held up."""
    sink.rules([{"path": "/flaky", "status": 500, "times": 2, "body": "boom"}])
    r = relay(db, env=env(OUTBOX_RETRY_BASE_MS=100))
    part = str(uuid7())
    row1, row2, other = insert(db, [
        {"partition_key": part, "destinations": [http_dest(sink.url("/flaky"))], "payload": "1"},
        {"partition_key": part, "destinations": [http_dest(sink.url("/after"))], "payload": "2"},
        {"destinations": [http_dest(sink.url("/other"))], "payload": "o"},
    ])
    k1 = row1["idempotent_key"]
    during = wait_row(db, k1, lambda x: x["attempts"] >= 1 and x["processed_at"] is None,
                      "the first failure to be recorded")
    assert sink.requests(path="/after") == [], "row 2 went out while row 1 was failing"
    assert "HTTP 500" in during["last_error"] and "boom" in during["last_error"], during["last_error"]
    assert "/flaky" in during["last_error"]
    assert during["retry_after"] is not None and during["dead_at"] is None

    got = wait_processed(db, keys([row1, row2, other]))
    flaky = sink.requests(path="/flaky")
    assert [x["response"]["status"] for x in flaky] == [500, 500, 200]
    (after,) = sink.requests(path="/after")
    (oth,) = sink.requests(path="/other")
    assert after["seq"] > flaky[2]["seq"], "row 2 was delivered before row 1 succeeded"
    assert oth["seq"] < flaky[2]["seq"], "the other partition waited for the failing one"
    gap1 = arrival_s(flaky[1]) - arrival_s(flaky[0])
    gap2 = arrival_s(flaky[2]) - arrival_s(flaky[1])
    # lower bounds only: a retry never goes out before retry_after (how late it may be is not
    # asserted; the poll is at an hour, so the retry timer is what sent them at all)
    assert gap1 >= 0.05, f"first retry after {gap1:.3f}s, below half the base delay"
    assert gap2 >= 0.1, f"second retry after {gap2:.3f}s: the delay did not double"
    assert got[k1]["attempts"] == 3 and got[k1]["retry_after"] is None and got[k1]["dead_at"] is None
    assert got[row2["idempotent_key"]]["attempts"] == 1
    assert got[other["idempotent_key"]]["attempts"] == 1
    assert [body_bytes(x) for x in flaky] == [b"1"] * 3
    assert r.log().count(f"delivery failed for row {k1}") == 2


def test_parked_at_failure_limit_then_partition_moves_on(db, sink, relay):
    """OUTBOX_FAILURE_LIMIT=3 and an endpoint that always fails: three attempts, then the row is
    parked (dead_at, last_error naming HTTP 500, attempts 3, no retry_after, not processed) and
    the next row of the partition is delivered."""
    sink.rules([{"path": "/dead", "status": 500}])
    r = relay(db, env=env(OUTBOX_FAILURE_LIMIT=3, OUTBOX_RETRY_BASE_MS=50))
    part = str(uuid7())
    row1, row2 = insert(db, [
        {"partition_key": part, "destinations": [http_dest(sink.url("/dead"))], "payload": "1"},
        {"partition_key": part, "destinations": [http_dest(sink.url("/next"))], "payload": "2"},
    ])
    k1 = row1["idempotent_key"]
    wait_processed(db, [row2["idempotent_key"]])
    dead = rows_by_key(db, [k1])[k1]
    assert dead["dead_at"] is not None and dead["processed_at"] is None
    assert dead["attempts"] == 3
    assert "HTTP 500" in dead["last_error"], dead["last_error"]
    assert dead["retry_after"] is None
    recs = sink.requests()
    assert [x["path"] for x in recs] == ["/dead", "/dead", "/dead", "/next"]
    assert f"parking row {k1}" in r.log()
    # stays parked: nothing more is sent
    assert r.alive()
    assert len(sink.requests(path="/dead")) == 3


def test_retry_resends_only_failed_destinations(db, sink, relay):
    """A row with two HTTP destinations, one failing twice: the good one is called exactly once,
    the failing one three times, sent_destinations records the good one meanwhile, and the row
    ends processed."""
    sink.rules([{"path": "/multi/bad", "status": 503, "times": 2}])
    relay(db, env=env(OUTBOX_RETRY_BASE_MS=100))
    (row,) = insert(db, [{"destinations": [http_dest(sink.url("/multi/good")),
                                           http_dest(sink.url("/multi/bad"), method="PUT")],
                          "payload": "m"}])
    k = row["idempotent_key"]
    during = wait_row(db, k, lambda x: x["attempts"] >= 1 and x["processed_at"] is None,
                      "the first partial failure")
    assert during["sent_destinations"] == [0], during
    assert "destinations[1]" in during["last_error"] and "HTTP 503" in during["last_error"]
    got = wait_processed(db, [k])[k]
    assert len(sink.requests(path="/multi/good")) == 1
    bad = sink.requests(path="/multi/bad")
    assert [(x["method"], x["response"]["status"]) for x in bad] == [("PUT", 503), ("PUT", 503), ("PUT", 200)]
    assert got["attempts"] == 3 and got["dead_at"] is None


def test_timeout_and_dropped_connection_are_retried(db, sink, relay):
    """An answer slower than OUTBOX_HTTP_TIMEOUT_MS and a connection closed without an answer
    are failures with a reason in last_error; the retry delivers."""
    sink.rules([{"path": "/slow", "delay_ms": 2000, "times": 1},
                {"path": "/drop", "drop": True, "times": 1}])
    r = relay(db, env=env(OUTBOX_HTTP_TIMEOUT_MS=300, OUTBOX_RETRY_BASE_MS=100))
    slow, drop = insert(db, [{"destinations": [http_dest(sink.url("/slow"))], "payload": "s"},
                             {"destinations": [http_dest(sink.url("/drop"))], "payload": "d"}])
    got = wait_processed(db, keys([slow, drop]))
    # the timeout cut the 2 s answer short: the first attempt failed with a timeout (below) and
    # the second, answered at once, succeeded; had it waited, attempt 1 would have succeeded
    (first, second) = sink.requests(path="/slow")
    assert first["response"]["delay_ms"] == 2000 and second["response"]["delay_ms"] == 0, (first, second)
    # curl's reasons, e.g. "Operation timed out after 301 milliseconds" and "Empty reply from server"
    assert re.search(rf"delivery failed for row {slow['idempotent_key']} .*/slow: .*[Tt]imed? ?out", r.log()), r.log()
    assert re.search(rf"delivery failed for row {drop['idempotent_key']} .*/drop: \S", r.log()), r.log()
    assert got[slow["idempotent_key"]]["attempts"] == 2
    assert got[drop["idempotent_key"]]["attempts"] == 2
    assert len(sink.requests(path="/slow")) == 2 and len(sink.requests(path="/drop")) == 2


def test_connection_refused_is_retried_then_parked(db, relay):
    """A destination nobody listens on: a connect error in last_error, retries, parked at the
    limit, relay alive."""
    port = PortLock()  # reserved and not listened on
    try:
        r = relay(db, env=env(OUTBOX_FAILURE_LIMIT=2, OUTBOX_RETRY_BASE_MS=50))
        (row,) = insert(db, [{"destinations": [http_dest(f"http://127.0.0.1:{port.port}/nobody")],
                              "payload": "x"}])
        k = row["idempotent_key"]
        got = wait_dead(db, [k], timeout=10)[k]
    finally:
        port.release()
    assert got["attempts"] == 2
    assert "connect" in got["last_error"].lower() or "refused" in got["last_error"].lower(), got["last_error"]
    assert f":{port.port}/nobody" in got["last_error"]
    assert r.alive()


def test_requeue_recipe_from_the_readme(db, sink, relay):
    """A parked row requeued with the README's UPDATE is delivered again (found by the poll:
    an UPDATE sends no notification) once the endpoint works."""
    sink.rules([{"path": "/requeue", "status": 500, "times": 2}])
    relay(db, env=env(OUTBOX_FAILURE_LIMIT=2, OUTBOX_RETRY_BASE_MS=50, OUTBOX_POLL_INTERVAL_MS=300))
    (row,) = insert(db, [{"destinations": [http_dest(sink.url("/requeue"))], "payload": "q"}])
    k = row["idempotent_key"]
    wait_dead(db, [k], timeout=10)
    assert db.scalar("SELECT count(*) FROM outbox WHERE dead_at IS NOT NULL AND processed_at IS NULL") == 1
    db.execute("UPDATE outbox SET dead_at = NULL, retry_after = NULL, attempts = 0 WHERE idempotent_key = %s", (k,))
    got = wait_processed(db, [k], timeout=10)[k]
    assert got["attempts"] == 1 and got["dead_at"] is None
    assert [x["response"]["status"] for x in sink.requests(path="/requeue")] == [500, 500, 200]


# (case id, destinations JSON (with {bad} for a sink URL that must never be called),
#  row headers JSON or None, substrings expected in last_error)
MALFORMED = [
    ("dest-object", '{"url": "{bad}"}', None, ["destinations is not a JSON array but object"]),
    ("dest-string", '"{bad}"', None, ["destinations is not a JSON array but string"]),
    ("dest-number", "42", None, ["destinations is not a JSON array but int"]),
    ("dest-element-not-object", '["{bad}"]', None, ["destinations[0] is not a JSON object but string"]),
    ("unknown-shape", '[{"endpoint": "{bad}"}]', None, ['destinations[0] must have exactly one of "queue_url" (SQS), "topic_arn" (SNS) or "url" (HTTP)']),
    ("missing-url", '[{"headers": {"A": "b"}, "method": "PUT"}]', None, ["destinations[0] must have exactly one of"]),
    ("url-not-string", '[{"url": 42}]', None, ["destinations[0].url is not a string but int"]),
    ("url-empty", '[{"url": ""}]', None, ["destinations[0].url is empty"]),
    ("url-no-host", '[{"url": "http:///x"}]', None, ["has no host"]),
    ("url-with-space", '[{"url": "{bad} x"}]', None, ["contains a space, control or non-ASCII character at byte"]),
    ("url-credentials", '[{"url": "http://user:pw@127.0.0.1/x"}]', None, ["credentials"]),
    ("bad-scheme", '[{"url": "ftp://127.0.0.1/x"}]', None, ["does not start with http:// or https://"]),
    ("second-dest-bad", '[{"url": "{bad}"}, {"url": "gopher://127.0.0.1/x"}]', None,
     ["destinations[1].url", "does not start with http:// or https://"]),
    ("dest-headers-string", '[{"url": "{bad}", "headers": "X-A: 1"}]', None,
     ["destinations[0].headers is not a JSON object but string"]),
    ("row-headers-array", '[{"url": "{bad}"}]', '["X-A"]', ["headers is not a JSON object but array"]),
    ("dest-header-number", '[{"url": "{bad}", "headers": {"X-Num": 5}}]', None,
     ['destinations[0].headers: value of "X-Num" is not a string but int']),
    ("row-header-bool", '[{"url": "{bad}"}]', '{"X-Flag": true}', ['headers: value of "X-Flag" is not a string but boolean']),
    ("row-header-null", '[{"url": "{bad}"}]', '{"X-Null": null}', ['headers: value of "X-Null" is not a string but null']),
    ("method-get", '[{"url": "{bad}", "method": "GET"}]', None, ['destinations[0].method "GET" is not POST, PUT or PATCH']),
    ("method-delete", '[{"url": "{bad}", "method": "delete"}]', None, ['destinations[0].method "delete" is not POST, PUT or PATCH']),
    ("method-number", '[{"url": "{bad}", "method": 1}]', None, ["destinations[0].method is not a string but int"]),
    ("dest-header-crlf", '[{"url": "{bad}", "headers": {"X-Evil": "a\\r\\nInjected: 1"}}]', None,
     ['destinations[0].headers: value of header "X-Evil" has a control character (0x0d)']),
    ("row-header-lf", '[{"url": "{bad}"}]', '{"X-Evil": "a\\nInjected: 1"}', ['headers: value of header "X-Evil" has a control character (0x0a)']),
    ("header-name-space", '[{"url": "{bad}", "headers": {"Bad Name": "v"}}]', None, ['destinations[0].headers: header name "Bad" has an invalid character (0x20)']),
]


def test_malformed_rows_are_parked_at_once(db, sink, relay):
    """Every kind of malformed row the README lists is parked at once with a last_error that
    says what is wrong, without counting an attempt and without any request (not even to a
    good destination of the same row); the relay keeps running and the good row behind each
    one in its partition is delivered."""
    r = relay(db, env=env())
    rows, cases = [], {}
    for case, dests, headers, expect in MALFORMED:
        part = str(uuid7())
        bad = {"partition_key": part, "payload": case, "attempts": 2,
               "destinations_json": dests.replace("{bad}", sink.url(f"/bad/{case}"))}
        if headers is not None:
            bad["headers_json"] = headers
        good = {"partition_key": part, "payload": case,
                "destinations": [http_dest(sink.url(f"/good/{case}"))]}
        made = insert(db, [bad, good])
        rows += made
        cases[made[0]["idempotent_key"]] = (case, expect, made[1]["idempotent_key"])
    bad_keys = list(cases)
    good_keys = [g for _, _, g in cases.values()]
    wait_processed(db, good_keys)
    parked = wait_dead(db, bad_keys, timeout=5)
    problems = []
    for k, (case, expect, _) in cases.items():
        row = parked[k]
        err = row["last_error"] or ""
        missing = [s for s in expect if s not in err]
        if missing or row["attempts"] != 2 or row["processed_at"] is not None or row["retry_after"] is not None:
            problems.append(f"{case}: attempts={row['attempts']} processed_at={row['processed_at']}"
                            f" retry_after={row['retry_after']} last_error={err!r} (missing {missing})")
        if f"parking malformed row {k}" not in r.log():
            problems.append(f"{case}: no 'parking malformed row' log line")
    assert not problems, "\n".join(problems)
    recs = sink.requests()
    assert [x for x in recs if x["path"].startswith("/bad/")] == [], "a malformed row was (partly) sent"
    got = assert_each_once(recs, good_keys)
    for k, (case, _, g) in cases.items():
        assert got[g]["path"] == f"/good/{case}"
    assert r.alive()


def test_malformed_null_destinations_named_as_null(db, sink, relay):
    """destinations = JSON null (the column is NOT NULL, jsonb 'null' is allowed): parked, and
    last_error says it is null rather than claiming the JSON is invalid."""
    relay(db, env=env())
    (row,) = insert(db, [{"destinations_json": "null", "payload": "n"}])
    k = row["idempotent_key"]
    err = wait_dead(db, [k], timeout=5)[k]["last_error"]
    assert "destinations is not a JSON array but null" in err, err
    assert "not valid JSON" not in err and "null" in err, err


def wait_recorded(db, relay_proc, row_keys, timeout):
    """Waits until every row in row_keys is processed. A results statement the database
    refuses would stop every partition of the relay: if the relay logs one, this fails at once
    with its message, killing the relay (wedged that way, it does not stop on SIGTERM)."""
    row_keys = [str(k) for k in row_keys]

    def settled():
        if "results statement failed" in relay_proc.log():
            return "the results statement failed"
        if db.scalar("SELECT count(*) FROM outbox WHERE idempotent_key = ANY(%s::uuid[])"
                     " AND processed_at IS NOT NULL", (row_keys,)) == len(row_keys):
            return "done"
        return None

    state = None
    try:
        state = wait_until(settled, timeout, "the rows to be processed (or the results statement to fail)")
    finally:
        if state != "done":
            relay_proc.kill()
    assert state == "done", "\n".join(line for line in relay_proc.log().splitlines()
                                       if "statement failed" in line)[:1500]


def test_long_multibyte_error_answer_is_stored(db, sink, relay):
    """Error answers with long UTF-8 bodies (4-byte characters at four different offsets, so
    that cutting them to a bounded last_error splits a character somewhere): the failures are
    recorded (attempts, a valid last_error with the status) and the retries deliver; a cut
    character must not make the results statement fail (which would stop every partition of
    the relay, not just these rows)."""
    bodies = {f"/mb/{n}": "a" * n + "\U0001F600" * 300 for n in range(4)}
    sink.rules([{"path": path, "status": 500, "times": 1, "body": body} for path, body in bodies.items()])
    r = relay(db, env=env(OUTBOX_RETRY_BASE_MS=100))
    rows = insert(db, [{"destinations": [http_dest(sink.url(path))], "payload": path} for path in bodies])
    (ok,) = insert(db, [{"destinations": [http_dest(sink.url("/mb/ok"))], "payload": "ok"}])
    all_keys = keys(rows) + [ok["idempotent_key"]]
    wait_recorded(db, r, all_keys, 15)
    got = rows_by_key(db, all_keys)
    for row in rows:
        g = got[row["idempotent_key"]]
        assert g["attempts"] == 2, g
        assert g["last_error"].startswith("destinations[0] http ") and "HTTP 500" in g["last_error"], g["last_error"]


@pytest.mark.parametrize("case,dests", [
    ("method", '[{"url": "{good}", "method": "a%s"}]' % ("\u00e9" * 30)),
    ("header-name", '[{"url": "{good}", "headers": {"a%s": "v"}}]' % ("\u00e9" * 80)),
    ("url", '[{"url": "http://127.0.0.1/ab%s"}]' % ("\u00e9" * 150)),
], ids=["method", "header-name", "url"])
def test_malformed_row_with_multibyte_text_is_parked(db, sink, relay, case, dests):
    """A malformed row whose offending text (a method, a header name, a URL) is long non-ASCII
    UTF-8: it is parked with a valid last_error, and the good row behind it is delivered."""
    r = relay(db, env=env())
    part = str(uuid7())
    bad, good = insert(db, [
        {"partition_key": part, "payload": "bad", "destinations_json": dests.replace("{good}", sink.url("/bad"))},
        {"partition_key": part, "payload": "good", "destinations": [http_dest(sink.url("/good"))]},
    ])
    wait_recorded(db, r, [good["idempotent_key"]], 10)
    row = rows_by_key(db, [bad["idempotent_key"]])[bad["idempotent_key"]]
    assert row["dead_at"] is not None and row["attempts"] == 0
    assert sink.requests(path="/bad") == []


def test_error_answer_that_is_not_utf8_is_stored(db, sink, relay):
    """An endpoint answers 500 with a Latin-1 body ("caf\\xe9"), then 200: the failure is
    recorded with a valid last_error, the retry delivers, other rows are not held up."""
    server = RawHttpServer([
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\nConnection: close\r\n\r\ncaf\xe9",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    ])
    r = relay(db, env=env(OUTBOX_RETRY_BASE_MS=100))
    try:
        (row,) = insert(db, [{"destinations": [http_dest(server.url("/latin1"))], "payload": "l"}])
        (ok,) = insert(db, [{"destinations": [http_dest(sink.url("/ok"))], "payload": "ok"}])
        wait_recorded(db, r, [row["idempotent_key"], ok["idempotent_key"]], 10)
        got = rows_by_key(db, [row["idempotent_key"]])[row["idempotent_key"]]
        assert got["attempts"] == 2 and "HTTP 500" in got["last_error"], got
        assert len(server.requests) == 2
    finally:
        server.close()


def test_retry_after_sets_the_next_attempt(db, sink, relay):
    """Issue 15 item 2: a 429 or 503 with Retry-After (seconds, or an HTTP date) sets that row's
    next attempt, capped by OUTBOX_RETRY_MAX_MS; on other statuses it is ignored. The normal
    backoff here is at least 30 s, so a retry within seconds can only come from Retry-After."""
    soon = email.utils.formatdate(time.time() + 3, usegmt=True)
    sink.rules([{"path": "/429", "status": 429, "headers": {"Retry-After": "2"}, "times": 1},
                {"path": "/503", "status": 503, "headers": {"Retry-After": soon}, "times": 1},
                {"path": "/capped", "status": 503, "headers": {"Retry-After": "86400"}, "times": 1},
                {"path": "/500", "status": 500, "headers": {"Retry-After": "1"}, "times": 1}])
    relay(db, env=env(OUTBOX_RETRY_BASE_MS=60000, OUTBOX_RETRY_MAX_MS=90000))
    rows = insert(db, [{"destinations": [http_dest(sink.url(p))], "payload": p}
                       for p in ("/429", "/503", "/capped", "/500")])
    k429, k503, kcap, k500 = keys(rows)
    failed = {k: wait_row(db, k, lambda r: r["attempts"] == 1, f"the first attempt of {k}") for k in keys(rows)}
    sent = {}
    for rec in sorted(sink.requests(), key=lambda rec: rec["seq"]):
        sent.setdefault(rec["path"], rec["time_us"] / 1e6)  # the first attempt's

    def pause(key, path):
        return failed[key]["retry_after"].timestamp() - sent[path]

    assert 1.0 <= pause(k429, "/429") <= 3.5, pause(k429, "/429")
    assert 1.0 <= pause(k503, "/503") <= 4.5, pause(k503, "/503")
    assert 80 <= pause(kcap, "/capped") <= 91, pause(kcap, "/capped")  # OUTBOX_RETRY_MAX_MS
    assert pause(k500, "/500") >= 29, pause(k500, "/500")               # the normal backoff
    assert "429" in failed[k429]["last_error"]
    wait_processed(db, [k429, k503], timeout=20)
