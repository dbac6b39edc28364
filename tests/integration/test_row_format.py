"""One row format: the case table the unit tests run against liboutbox and the relay's parser
(tests/cases/rowformat_cases.json) run against the SQL helpers of sql/006 and the running relay.
Whatever the relay parks, the SQL helpers refuse; what they accept, the relay sends."""

import json
import os
from pathlib import Path

import psycopg2
import pytest

from conftest import body_bytes, uuid7, wait_until
from relay_util import env, insert, keys

CASES = json.loads((Path(os.environ.get("OBR_SOURCE_ROOT", Path(__file__).parents[2]))
                    / "tests" / "cases" / "rowformat_cases.json").read_text())
PLACEHOLDER_URL = "http://127.0.0.1:9/a"  # the HTTP URL the cases use; the sink's in the relay test


def _attempt(cur, sql: str, args: tuple) -> str | None:
    """None when the statement succeeds, else the error it raised (rolled back to before it)."""
    cur.execute("SAVEPOINT c")
    try:
        cur.execute(sql, args)
        cur.execute("RELEASE SAVEPOINT c")
        return None
    except psycopg2.Error as e:
        cur.execute("ROLLBACK TO SAVEPOINT c")
        return str(e).strip()


def _enqueue(cur, case) -> str | None:
    """None when outbox_enqueue accepts the case's row, else the error it raised."""
    return _attempt(cur, "SELECT outbox_enqueue(%s::uuid, %s::jsonb, 'p', %s::jsonb)",
                    (str(uuid7()), case["destinations"], case["headers"]))


def test_sql_helpers_refuse_what_liboutbox_refuses(db):
    """outbox_enqueue refuses exactly the cases liboutbox refuses (every one the relay parks),
    with an invalid_parameter_value or program_limit_exceeded error, and accepts the others."""
    conn = db.conn(autocommit=False)
    wrong = []
    with conn.cursor() as cur:
        for case in CASES:
            got = _enqueue(cur, case)
            if (got is None) != (case["refused"] is None):
                wrong.append(f"{case['case']}: {'accepted' if got is None else got}")
    conn.rollback()
    assert not wrong, "outbox_enqueue disagrees with liboutbox:\n" + "\n".join(wrong)
    assert any(c["refused"] is None for c in CASES) and any(c["relay"] == "parks" for c in CASES)


def _http_args(case) -> tuple | None:
    """outbox_enqueue_http's arguments for a case that is one plain HTTP destination."""
    dests = json.loads(case["destinations"]) if case["destinations"].startswith("[") else None
    if (not isinstance(dests, list) or len(dests) != 1 or not isinstance(dests[0], dict)
            or set(dests[0]) - {"url", "headers", "method"} or not isinstance(dests[0].get("url"), str)
            or case["headers"] not in (None, "null")):
        return None
    d = dests[0]
    return (d["url"], d.get("method") if d.get("method") is not None else "POST",
            json.dumps(d["headers"]) if "headers" in d else None)


def _enqueue_http(cur, args) -> str | None:
    return _attempt(cur, "SELECT outbox_enqueue_http(%s::uuid, %s, 'p', %s, %s::jsonb)", (str(uuid7()),) + args)


def test_sql_helpers_answer_the_same_the_second_time(db):
    """sql/011 checks a destination and a row once per session and remembers what passed: every
    case run twice in one session gets the same answer both times, through outbox_enqueue and,
    for a single HTTP destination, through outbox_enqueue_http; and a destination that
    outbox_http_destination alone accepted does not let outbox_enqueue_http skip the row's own
    check (64 headers of its own, 65 with x-idempotent-key)."""
    conn = db.conn(autocommit=True)
    wrong, http_cases = [], 0
    with conn.cursor() as cur:
        cur.execute("BEGIN")
        for rnd in (1, 2):
            for case in CASES:
                got = _enqueue(cur, case)
                if (got is None) != (case["refused"] is None):
                    wrong.append(f"round {rnd}, outbox_enqueue, {case['case']}: {'accepted' if got is None else got}")
                args = _http_args(case)
                if args is not None:
                    http_cases += rnd == 1
                    got = _enqueue_http(cur, args)
                    if (got is None) != (case["refused"] is None):
                        wrong.append(f"round {rnd}, outbox_enqueue_http, {case['case']}: "
                                     f"{'accepted' if got is None else got}")
        cur.execute("ROLLBACK")
        # a destination outbox_http_destination accepted (committed) with 64 headers of its own:
        # outbox_enqueue_http still refuses the row (65 with x-idempotent-key)
        many = json.dumps({f"X-H{i}": "v" for i in range(64)})
        cur.execute("SELECT outbox_http_destination(%s, 'POST', %s::jsonb)", (PLACEHOLDER_URL, many))
        with pytest.raises(psycopg2.Error) as e:
            cur.execute("SELECT outbox_enqueue_http(%s::uuid, %s, 'p', 'POST', %s::jsonb)",
                        (str(uuid7()), PLACEHOLDER_URL, many))
        assert "over the limit of 64" in str(e.value)
    conn.close()
    assert not wrong, "\n".join(wrong)
    assert http_cases >= 5


def test_sql_uuid7_and_nesting_depth(db):
    """outbox_uuid7 (sql/011 computes it inline): version 7, RFC 9562 variant, the current
    millisecond, increasing within a session; outbox_jsonb_too_deep agrees with 006's
    outbox_jsonb_depth > 32 for arrays, objects and both, 0 to 40 levels deep."""
    rows = db.query("SELECT k::text, floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint"
                    "  FROM (SELECT outbox_uuid7() AS k FROM generate_series(1, 200)) s")
    got = [r[0] for r in rows]
    assert got == sorted(got) and len(set(got)) == len(got)
    for k, now_ms in rows:
        h = k.replace("-", "")
        assert h[12] == "7" and h[16] in "89ab", k
        assert abs(int(h[:12], 16) - now_ms) < 5000, (k, now_ms)
    # a fixed time and random part: 003's layout exactly, at the last microsecond of a millisecond
    assert db.scalar("SELECT outbox_uuid7_from('2026-01-01 00:00:00.999999+00',"
                     " '00000000-0000-4000-8000-000000000000')::text") == "019b76da-abe7-7ffb-8000-000000000000"
    disagree = db.query("""
        WITH RECURSIVE g(n, a, o, m) AS (
          SELECT 0, '1'::jsonb, '1'::jsonb, '1'::jsonb
          UNION ALL
          SELECT n + 1, jsonb_build_array(a), jsonb_build_object('k', o),
                 CASE WHEN n % 2 = 0 THEN jsonb_build_array(1, m, '{}'::jsonb)
                      ELSE jsonb_build_object('a', m, 'b', '[]'::jsonb) END
            FROM g WHERE n < 40)
        SELECT n, x::text FROM g, LATERAL (VALUES (a), (o), (m)) v(x)
         WHERE (outbox_jsonb_depth(x) > 32) <> outbox_jsonb_too_deep(x)""")
    assert disagree == []
    assert db.scalar("SELECT outbox_jsonb_too_deep(NULL)") is False


def test_sql_builders_refuse_relay_headers_and_secrets(db):
    """The destination builders apply the same rules: a header the relay sets itself, a
    placeholder for one of the relay's own variables, an SNS ARN of another service."""
    for sql, args, words in [
        ("SELECT outbox_http_destination(%s, 'POST', %s::jsonb)",
         (PLACEHOLDER_URL, '{"Content-Length":"0"}'), 'header "Content-Length" is set by the relay'),
        ("SELECT outbox_http_destination(%s, 'POST', %s::jsonb)",
         (PLACEHOLDER_URL, '{"Authorization":"{{DATABASE_URL}}"}'), "asks for {{DATABASE_URL}}"),
        ("SELECT outbox_enqueue_http(%s::uuid, %s, 'p', headers => %s::jsonb)",
         (str(uuid7()), PLACEHOLDER_URL, '{"X-Key":"{{AWS_SECRET_ACCESS_KEY}}"}'),
         "asks for {{AWS_SECRET_ACCESS_KEY}}"),
        ("SELECT outbox_enqueue_sqs(%s::uuid, 'https://sqs.eu-west-1.amazonaws.com/1/q', 'p', %s::jsonb)",
         (str(uuid7()), '{"host":"x"}'), 'header "host" is set by the relay'),
        ("SELECT outbox_sns_destination(%s)", ("arn:aws:sqs:us-east-1:000000000000:q",), "topic_arn must be"),
        ("SELECT outbox_enqueue(%s::uuid, '[]', 'p')", (str(uuid7()),), "non-empty JSON array"),
    ]:
        with pytest.raises(psycopg2.Error, match=None) as e:
            db.execute(sql, args)
        assert words in str(e.value), (sql, str(e.value))
    # an ordinary placeholder, and one in the row's own headers (never filled), are fine
    db.execute("SELECT outbox_enqueue_http(%s::uuid, %s, 'p', headers => '{\"A\":\"{{API_TOKEN}}\"}')",
               (str(uuid7()), PLACEHOLDER_URL))
    db.execute("SELECT outbox_enqueue(%s::uuid, jsonb_build_array(outbox_http_destination(%s)), 'p',"
               " '{\"X-Row\":\"{{DATABASE_URL}}\"}')", (str(uuid7()), PLACEHOLDER_URL))


def test_relay_parks_what_writers_refuse(db, sink, relay):
    """Rows of every case written straight into the table (as another writer could): the relay
    parks those marked so with the writers' reason in last_error and sends them nothing, among
    them destinations = '[]' (the crate would mark it delivered without a request); the HTTP
    rows it reads are delivered."""
    rows, expect = [], {}
    for case in CASES:
        dests = case["destinations"].replace(PLACEHOLDER_URL, sink.url("/case"))
        if case["relay"] == "sends" and any(set(d) - {"url", "headers", "method"} or d["url"] != sink.url("/case")
                                            for d in json.loads(dests)):
            continue  # only requests to the sink here; SQS/SNS delivery is test_aws_delivery's
        rows.append({"destinations_json": dests, "headers_json": case["headers"], "payload": case["case"]})
    made = insert(db, rows)
    for row in made:
        expect[row["idempotent_key"]] = next(c for c in CASES if c["case"] == row["payload"])
    relay(db, env=env(API_TOKEN="api-token"))
    wait_until(lambda: db.scalar("SELECT count(*) FROM outbox WHERE idempotent_key = ANY(%s::uuid[])"
                                 " AND (processed_at IS NOT NULL OR dead_at IS NOT NULL)",
                                 (keys(made),)) == len(made), 30, "every row delivered or parked")
    got = {str(r["idempotent_key"]): r for r in db.query_dicts(
        "SELECT idempotent_key, payload, processed_at, dead_at, last_error FROM outbox")}
    wrong = []
    for key, case in expect.items():
        r = got[key]
        if case["relay"] == "parks":
            if r["dead_at"] is None or case["refused"] not in (r["last_error"] or ""):
                wrong.append(f"{case['case']}: expected parking with {case['refused']!r}, got {r}")
        elif r["processed_at"] is None:
            wrong.append(f"{case['case']}: expected delivery, got {r}")
    assert not wrong, "\n".join(wrong)
    sent = sink.requests(path="/case")
    delivered = sum(1 for c in expect.values() if c["relay"] == "sends")
    parked_payloads = {c["case"].encode() for c in expect.values() if c["relay"] == "parks"}
    assert len(sent) >= delivered and not [x for x in sent if body_bytes(x) in parked_payloads]
    assert any(c["destinations"] == "[]" for c in expect.values())
