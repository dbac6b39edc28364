"""OUTBOX_LOG_FORMAT=json: every delivery event carries its facts as fields (row, partition,
attempt, destination kind and host, HTTP status or error, duration), not only inside "msg", so
a log pipeline can filter and count without parsing sentences. Checked on the log of a run with
a retry, a success after it, a row parked at the failure limit and a malformed row."""

import json
from urllib.parse import urlsplit

from relay_util import env, http_dest, insert, keys, wait_dead, wait_processed


def events(relay_proc):
    out = []
    for line in relay_proc.log().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)  # every line is one JSON object
        assert "msg" in rec and "level" in rec, rec
        out.append(rec)
    return out


def test_delivery_events_carry_their_facts_as_fields(db, sink, relay):
    sink.rules([{"path": "/flaky", "status": 503, "times": 1}, {"path": "/dead", "status": 500}])
    r = relay(db, env=env(OUTBOX_LOG_FORMAT="json", OUTBOX_LOG_LEVEL="debug", OUTBOX_FAILURE_LIMIT=3,
                          OUTBOX_RETRY_BASE_MS=50, OUTBOX_RETRY_MAX_MS=100))
    flaky, dead = insert(db, [{"destinations": [http_dest(sink.url("/flaky"))], "payload": "f"},
                              {"destinations": [http_dest(sink.url("/dead"))], "payload": "d"}])
    bad, = insert(db, [{"destinations_json": '[{"url": 5}]', "payload": "m"}])
    wait_processed(db, keys([flaky]))
    wait_dead(db, keys([dead, bad]))

    evs = [e for e in events(r) if "event" in e]
    host = urlsplit(sink.url("/")).netloc

    def of(key, kind):
        return [e for e in evs if e.get("row") == key and e["event"] == kind]

    retry, = of(flaky["idempotent_key"], "retry")
    assert retry["partition"] == flaky["partition_key"]
    assert (retry["attempt"], retry["failure_limit"], retry["dest_kind"], retry["host"], retry["status"]) == \
        (1, 3, "http", host, 503)
    assert "503" in retry["error"] and isinstance(retry["duration_ms"], int) and retry["duration_ms"] >= 0
    assert retry["level"] == "warning" and flaky["idempotent_key"] in retry["msg"]
    done, = of(flaky["idempotent_key"], "delivered")
    assert (done["attempt"], done["destinations"], done["partition"]) == (2, 1, flaky["partition_key"])

    dead_retries = of(dead["idempotent_key"], "retry")
    assert [e["attempt"] for e in dead_retries] == [1, 2]
    parked, = of(dead["idempotent_key"], "parked")
    assert (parked["attempt"], parked["status"], parked["host"]) == (3, 500, host)

    malformed, = of(bad["idempotent_key"], "parked")
    assert malformed["partition"] == bad["partition_key"] and "url" in malformed["error"]
    assert "attempt" not in malformed  # parked without an attempt
