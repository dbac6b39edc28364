"""Standard Webhooks signatures (OUTBOX_WEBHOOK_SECRET), checked by the scheme's reference
verifier, the npm package standardwebhooks (tests/aws/webhook-verify.mjs calls
`new Webhook(secret).verify(body, headers)` on what the sink received):

- with two secrets (a rotation) every signed request carries one signature per secret, and each
  secret alone verifies it; a third secret does not;
- webhook-id is the row's idempotent_key, webhook-timestamp the second the attempt was sent;
  a retried delivery is signed anew, with its own timestamp and signature;
- a destination with "signing": false gets none of the three headers;
- a row that sets webhook-signature itself is parked with the reason, never sent, and the SQL
  helpers refuse it; a row asking for {{OUTBOX_WEBHOOK_SECRET}} in a header is parked;
- a bad secret stops the start with a message naming the setting, never the secret; the
  secrets are in no log line, last_error, /metrics, /ready or `status` output.
"""

import base64
import json
import os
import secrets
import shutil
import subprocess
import urllib.error
import urllib.request

import psycopg2
import pytest

from conftest import AWS_DIR, body_bytes, header_values, wait_until
from relay_util import arrival_s, env, http_dest, insert, wait_dead, wait_processed

SIGNATURE_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


def _secret() -> tuple[str, str]:
    """(whsec_<base64 of 32 random bytes>, the base64 part)."""
    b64 = base64.b64encode(secrets.token_bytes(32)).decode()
    return "whsec_" + b64, b64


def _verify(secret_list: list[str], records: list[dict]) -> list[list[str]]:
    """Per record, per secret: "ok" or the reference verifier's error."""
    node = os.environ.get("OBR_NODE_BIN") or shutil.which("node")
    if not node:
        pytest.fail("node is not on PATH (set OBR_NODE_BIN); the webhook tests need Node 20")
    if not (AWS_DIR / "node_modules" / "standardwebhooks" / "package.json").exists():
        pytest.fail(f"{AWS_DIR}/node_modules/standardwebhooks is missing: run `npm ci` in tests/aws first")
    payload = {"secrets": secret_list,
               "requests": [{"body_base64": base64.b64encode(body_bytes(r)).decode(),
                             "headers": r["headers"]} for r in records]}
    res = subprocess.run([node, "webhook-verify.mjs"], cwd=AWS_DIR, input=json.dumps(payload),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _one(record: dict, name: str) -> str:
    values = header_values(record, name)
    assert len(values) == 1, (name, record["headers"])
    return values[0]


def _get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.read().decode(errors="replace")


def test_signed_deliveries_verify_with_the_reference_verifier(db, sink, relay, run_relay):
    """Two secrets; rows for a signed destination (a non-ASCII JSON body), a destination that
    opts out, one answered 500 once (retried about 1.25 to 2.5 s later: a later second), and
    one whose headers try to set webhook-signature. Then every request is checked by the
    reference verifier, and the secrets are looked for everywhere the relay writes."""
    (old, old_b64), (new, new_b64) = _secret(), _secret()
    other, _ = _secret()
    settings = env(OUTBOX_WEBHOOK_SECRET=f"{old} {new}", OUTBOX_RETRY_BASE_MS=2500,
                   OUTBOX_FAILURE_LIMIT=5)
    sink.rules([{"prefix": "/retry", "status": 500, "times": 1}])
    r = relay(db, env=settings)
    signed_body = json.dumps({"event": "order.paid", "note": "h\u00e9llo \u2713", "n": 1})
    rows = insert(db, [
        {"destinations": [http_dest(sink.url("/signed"), {"X-Dest": "d"}, "put")], "payload": signed_body},
        {"destinations": [{**http_dest(sink.url("/unsigned")), "signing": False}], "payload": '{"n": 2}'},
        {"destinations": [http_dest(sink.url("/retry"))], "payload": '{"n": 3}'},
        {"destinations": [http_dest(sink.url("/forged"))], "payload": '{"n": 4}',
         "headers": {"webhook-signature": "v1,Zm9yZ2Vk"}},
        {"destinations": [http_dest(sink.url("/leak"), {"X-Leak": "{{OUTBOX_WEBHOOK_SECRET}}"})],
         "payload": '{"n": 5}'},
    ])
    key = {json.loads(row["payload"])["n"]: row["idempotent_key"] for row in rows}
    wait_processed(db, [key[1], key[2], key[3]], timeout=30)
    dead = wait_dead(db, [key[4], key[5]], timeout=30)
    parked = dead[key[4]]

    # signed: one signature per secret, each secret verifies alone, another one does not
    (signed,) = sink.requests(path="/signed")
    assert _one(signed, "webhook-id") == key[1]
    assert _one(signed, "x-idempotent-key") == key[1]
    assert _one(signed, "X-Dest") == "d" and signed["method"] == "PUT"
    assert body_bytes(signed) == signed_body.encode()
    sigs = _one(signed, "webhook-signature").split(" ")
    assert len(sigs) == 2 and all(s.startswith("v1,") for s in sigs), sigs
    # the second the attempt was sent (the sink's clock is the same machine's)
    assert abs(int(_one(signed, "webhook-timestamp")) - arrival_s(signed)) <= 1.5
    assert _verify([old, new, other], [signed]) == [["ok", "ok",
                                                     "WebhookVerificationError: No matching signature found"]]

    # "signing": false: none of the three headers
    (unsigned,) = sink.requests(path="/unsigned")
    assert not any(header_values(unsigned, h) for h in SIGNATURE_HEADERS), unsigned["headers"]
    assert _verify([old], [unsigned]) == [["WebhookVerificationError: Missing required headers"]]

    # retried: each attempt signed when it was sent, so timestamp and signature are new
    first, second = sink.requests(path="/retry")
    assert first["response"]["status"] == 500 and second["response"]["status"] == 200
    assert _verify([old, new], [first, second]) == [["ok", "ok"], ["ok", "ok"]]
    stamps = [int(_one(x, "webhook-timestamp")) for x in (first, second)]
    for stamp, rec in zip(stamps, (first, second)):
        assert abs(stamp - arrival_s(rec)) <= 1.5, (stamp, arrival_s(rec))
    assert stamps[1] > stamps[0], stamps
    assert _one(first, "webhook-signature") != _one(second, "webhook-signature")
    assert _one(first, "webhook-id") == _one(second, "webhook-id") == key[3]

    # a row that sets webhook-signature: parked with the reason, never sent
    assert not sink.requests(path="/forged")
    assert 'header "webhook-signature" is set by the relay' in parked["last_error"], parked["last_error"]
    # a row cannot have the secret sent either: {{OUTBOX_*}} is never filled
    assert not sink.requests(path="/leak")
    assert "OUTBOX_WEBHOOK_SECRET" in dead[key[5]]["last_error"], dead[key[5]]["last_error"]
    # ... and the SQL helpers refuse to write it
    with pytest.raises(psycopg2.Error, match='header "Webhook-Timestamp" is set by the relay'):
        db.execute("SELECT outbox_enqueue(gen_random_uuid(), jsonb_build_array(outbox_http_destination(%s)),"
                   " 'p', '{\"Webhook-Timestamp\": \"1\"}'::jsonb)", (sink.url("/x"),))
    with pytest.raises(psycopg2.Error, match="signing is not true, false or null"):
        db.execute("SELECT outbox_enqueue(gen_random_uuid(), jsonb_build_array(outbox_http_destination(%s)"
                   " || '{\"signing\": \"no\"}'), 'p')", (sink.url("/x"),))
    db.execute("SELECT outbox_enqueue(gen_random_uuid(), jsonb_build_array(outbox_http_destination(%s)"
               " || '{\"signing\": false}'), 'p')", (sink.url("/x"),))

    # the secrets are nowhere the relay writes (the log is at debug level)
    table = db.query_dicts("SELECT row_to_json(o)::text AS row FROM outbox o")
    texts = {
        "the relay log": r.log(),
        "/metrics": _get(r.http_url("/metrics")),
        "/ready": _get(r.http_url("/ready")),
        "the outbox table": "\n".join(t["row"] for t in table),
    }
    for args in (["status"], ["status", "--json"]):
        res = run_relay(*args, db=db, env=settings, timeout=30)
        assert res.returncode == 0, (args, res.stderr)
        texts[" ".join(args)] = res.stdout + res.stderr
    leaks = [f"{name} in {where}" for where, text in texts.items()
             for name, value in (("old secret", old_b64), ("new secret", new_b64)) if value in text]
    assert not leaks, leaks


@pytest.mark.parametrize("bad", ["nothing", "no prefix", "not base64", "short", "second bad"])
def test_a_bad_secret_stops_the_start_without_printing_it(db, run_relay, bad):
    good, good_b64 = _secret()
    raw = base64.b64encode(b"ObrSecretBytes!" * 2).decode()  # recognisable in any output
    value = {"nothing": " ",
             "no prefix": raw,
             "not base64": "whsec_" + raw[:-2] + "!*",
             "short": "whsec_" + base64.b64encode(b"ObrShort").decode(),
             "second bad": f"{good} whsec_{raw[:-1]}"}[bad]
    res = run_relay("run", db=db, env=env(OUTBOX_WEBHOOK_SECRET=value), timeout=30)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert "OUTBOX_WEBHOOK_SECRET" in out, out
    for secret_text in (raw, raw[:-2], raw[:-1], good_b64, "T2JyU2hvcnQ"):
        assert secret_text not in out, (secret_text, out)
