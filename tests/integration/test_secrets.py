"""Secrets never leave the relay: the database password, the AWS secret key and session token,
and the values of {{ENV}} destination headers are absent from the relay's log (debug level),
the outbox table's last_error, /metrics, and `outbox-relay status` (text and --json), after a
run in which rows succeed and fail (so last_error is written) for HTTP, SQS and SNS; and a row
cannot have them sent: {{DATABASE_URL}}, {{AWS_*}}, {{OUTBOX_*}} and the like are never filled."""

import contextlib
import json
import secrets
import urllib.error
import urllib.request

import psycopg2
import pytest

from conftest import Fauxqs, LOCALHOST, header_values, sns_destination, sqs_destination, wait_until
from relay_util import env, http_dest, insert, keys, wait_processed


def _secret(kind: str) -> str:
    """A value that cannot occur by chance (letters and digits only: nothing to escape)."""
    return f"Obr{kind}Secret{secrets.token_hex(12)}"


@contextlib.contextmanager
def password_role(db):
    """A login role with a password, member of the relay's role outbox_relay (so it has the
    relay's privileges), that must authenticate with SCRAM from 127.0.0.1 (a pg_hba.conf line
    ahead of the cluster's trust lines): libpq really sends the password. Yields (role,
    password); the line and the role are removed afterwards."""
    cluster = db.cluster
    role, password = f"obr_pw_{secrets.token_hex(4)}", _secret("Pg")
    hba = cluster.datadir / "pg_hba.conf"
    original = hba.read_text()
    db.execute(f"CREATE ROLE {role} LOGIN PASSWORD %s IN ROLE outbox_relay", (password,))
    hba.write_text(f"host all {role} {LOCALHOST}/32 scram-sha-256\n" + original)
    db.execute("SELECT pg_reload_conf()")

    def needs_password():
        try:
            psycopg2.connect(host=LOCALHOST, port=cluster.port, user=role, dbname=db.name,
                             connect_timeout=5).close()
            return False
        except psycopg2.OperationalError as e:
            return "password" in str(e)

    try:
        wait_until(needs_password, 10, "pg_hba.conf to ask the role for its password")
        psycopg2.connect(host=LOCALHOST, port=cluster.port, user=role, password=password,
                         dbname=db.name, connect_timeout=5).close()
        yield role, password
    finally:
        hba.write_text(original)
        db.execute("SELECT pg_reload_conf()")
        db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))
        wait_until(lambda: db.scalar("SELECT count(*) FROM pg_stat_activity WHERE usename = %s",
                                     (role,)) == 0, 10, f"{role}'s sessions to end")
        db.execute(f"DROP ROLE {role}")


def _get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.read().decode(errors="replace")


def _leaks(texts: dict[str, str], secret_values: dict[str, str]) -> list[str]:
    """'<secret name> in <where>' for every secret found in every text."""
    return [f"{name} in {where}" for where, text in texts.items()
            for name, value in secret_values.items() if value in text]


def test_no_secret_in_logs_table_metrics_or_status(db, sink, relay, run_relay, fauxqs):
    """A relay at debug level with a database password (SCRAM: really used), AWS credentials
    with a session token and {{ENV}} destination headers delivers and fails rows of every
    kind: HTTP rows answered 200, 500 and too late (timeout), rows for a missing SQS queue and
    a missing SNS topic (parked), an SQS row that succeeds, and a header whose environment
    value holds CR LF (it must neither be sent as an injected header nor be echoed). A second
    relay and `status` run with a wrong password. Then none of the secret values is in any
    relay log, any column of the outbox table, /metrics, /ready, or the output of `status`
    and `status --json` (right and wrong password, URI and key=value forms); a secret in a URL's
    query string is not in the logs either (README: URLs are logged without it)."""
    api, injected = _secret("Api"), _secret("Injected")
    aws_secret, aws_token = _secret("AwsKey"), _secret("AwsToken")
    wrong_pw, query = _secret("WrongPg"), _secret("Query")
    queue = fauxqs.create_queue(Fauxqs.unique("secrets"))["QueueUrl"]
    missing_queue = queue.rsplit("/", 1)[0] + "/" + Fauxqs.unique("missing")
    missing_topic = f"arn:aws:sns:{Fauxqs.REGION}:000000000000:{Fauxqs.unique('missing')}"
    sink.rules([{"prefix": "/fail", "status": 500, "body": "nope"},
                {"prefix": "/slow", "delay_ms": 2000}])
    settings = env(OUTBOX_LOG_LEVEL="debug", OUTBOX_FAILURE_LIMIT=2, OUTBOX_RETRY_BASE_MS=100,
                   OUTBOX_HTTP_TIMEOUT_MS=300, API_TOKEN=api,
                   BAD_TOKEN=f"x\r\nX-Injected: {injected}",
                   AWS_ACCESS_KEY_ID="AKIDOBRSECRETSTEST", AWS_SECRET_ACCESS_KEY=aws_secret,
                   AWS_SESSION_TOKEN=aws_token, AWS_REGION=Fauxqs.REGION,
                   AWS_ENDPOINT_URL=fauxqs.endpoint)
    with password_role(db) as (role, password):
        url = f"postgresql://{role}:{password}@{LOCALHOST}:{db.cluster.port}/{db.name}"
        conninfo = (f"host={LOCALHOST} port={db.cluster.port} user={role} password={password}"
                    f" dbname={db.name}")
        wrong_url = f"postgresql://{role}:{wrong_pw}@{LOCALHOST}:{db.cluster.port}/{db.name}"
        r = relay(url, env=settings)
        token = {"X-Api-Token": "{{API_TOKEN}}"}
        rows = insert(db, [
            {"destinations": [http_dest(sink.url("/ok"), token)], "payload": "ok"},
            {"destinations": [http_dest(sink.url("/fail"), token)], "payload": "fail"},
            {"destinations": [http_dest(sink.url("/slow"), token)], "payload": "slow"},
            {"destinations": [http_dest(sink.url(f"/fail-query?token={query}"), token)], "payload": "query"},
            {"destinations": [http_dest(sink.url("/crlf"), {"X-Bad": "{{BAD_TOKEN}}"})], "payload": "crlf"},
            {"destinations": [sqs_destination(queue)], "payload": "sqs ok"},
            {"destinations": [sqs_destination(missing_queue)], "payload": "sqs missing"},
            {"destinations": [sns_destination(missing_topic)], "payload": "sns missing"},
        ])
        by_payload = {row["payload"]: row["idempotent_key"] for row in rows}
        wait_until(lambda: db.scalar("SELECT count(*) FROM outbox WHERE idempotent_key = ANY(%s::uuid[])"
                                     " AND (processed_at IS NOT NULL OR dead_at IS NOT NULL)",
                                     (keys(rows),)) == len(rows), 30, "every row delivered or parked")
        wait_processed(db, [by_payload["ok"], by_payload["sqs ok"]], timeout=5)
        table = db.query_dicts("SELECT payload, processed_at IS NOT NULL AS done, dead_at IS NOT NULL AS parked,"
                               " last_error, row_to_json(o)::text AS row FROM outbox o")
        states = {t["payload"]: (t["done"], t["parked"], t["last_error"]) for t in table}
        for p in ("fail", "slow", "query", "crlf", "sqs missing", "sns missing"):
            assert states[p][1] and states[p][2], (p, states[p])  # parked, with a reason
        # the {{API_TOKEN}} value really went out (the secret was in play)
        (ok_rec,) = sink.requests(path="/ok")
        assert header_values(ok_rec, "X-Api-Token") == [api]
        crlf = sink.requests(path="/crlf")
        assert all(not header_values(x, "X-Injected") for x in crlf), crlf
        assert all(injected not in str(x["headers"]) for x in crlf), crlf

        # a relay that cannot log in: the wrong password must not be printed either
        bad = relay(wrong_url, ready=False, env=settings)
        bad.wait_for_log(r"(?s)(password authentication failed.*){2}", timeout=20)
        texts = {
            "the relay log": r.log(),
            "the log of the relay with the wrong password": bad.log(),
            "/metrics": _get(r.http_url("/metrics")),
            "/ready": _get(r.http_url("/ready")),
            "/ready (wrong password)": _get(bad.http_url("/ready")),
            "the outbox table": "\n".join(t["row"] for t in table if t["payload"] != "query"),
            "last_error": "\n".join(t["last_error"] or "" for t in table),
        }
        for name, db_url in (("URI", url), ("key=value", conninfo), ("wrong password", wrong_url)):
            for args in (["status"], ["status", "--json"]):
                res = run_relay(*args, env={**settings, "DATABASE_URL": db_url}, timeout=30)
                assert res.returncode == (1 if name == "wrong password" else 0), (name, args, res.stderr)
                texts[f"`{' '.join(args)}` ({name}) output"] = res.stdout + res.stderr
        assert '"due_rows"' in texts["`status --json` (URI) output"]
        assert "outbox_relay_up 1" in texts["/metrics"]
        secret_values = {"the database password": password, "the wrong database password": wrong_pw,
                         "AWS_SECRET_ACCESS_KEY": aws_secret, "AWS_SESSION_TOKEN": aws_token,
                         "the {{API_TOKEN}} value": api, "the {{BAD_TOKEN}} value": injected}
        leaks = _leaks(texts, secret_values)
        leaks += _leaks({k: v for k, v in texts.items() if "log" in k}, {"a URL's query string": query})
        assert not leaks, "secrets leaked: " + "; ".join(leaks)
        print(f"secrets: scanned {', '.join(texts)}; last_error of the failed rows:"
              f" { {p: s[2] for p, s in states.items() if s[2]} }")
        assert r.stop() == 0
        bad.stop()


def test_malformed_database_url_does_not_print_its_password(db, relay, run_relay):
    """DATABASE_URL whose password holds a malformed percent-escape (a typo an operator can
    make): neither `run` nor `status` prints the password."""
    password = _secret("Typo") + "%zz"
    url = f"postgresql://outbox_relay:{password}@{LOCALHOST}:{db.cluster.port}/{db.name}"
    r = relay(url, ready=False, env=env(OUTBOX_LOG_LEVEL="debug"))
    wait_until(lambda: not r.alive() or "connection lost" in r.log() or "DATABASE_URL" in r.log(),
               15, "the relay to refuse the URL or report the failed connection")
    res = run_relay("status", env={"DATABASE_URL": url}, timeout=30)
    leaks = [where for where, text in (("the relay log", r.log()), ("status", res.stdout + res.stderr))
             if password.split("%")[0] in text]
    assert not leaks, f"the password is printed in {leaks}: {r.log()[:300]!r}"


def test_row_headers_never_fill_the_relays_own_variables(db, sink, relay):
    """A relay holding real-looking secrets (a database password in DATABASE_URL, really used;
    PGPASSWORD; AWS keys and a session token; OUTBOX_* settings) and OUTBOX_HEADER_ENV limiting
    placeholders to API_TOKEN: rows whose HTTP destination headers ask for {{DATABASE_URL}},
    {{PGPASSWORD}}, {{AWS_*}} or {{OUTBOX_*}} are parked with a last_error naming the variable,
    the sink receives no request for them and none of the values anywhere, and neither the log
    nor last_error holds one. A row asking for {{OTHER_TOKEN}} (set, but not allowed by
    OUTBOX_HEADER_ENV) is parked naming it; an ordinary {{API_TOKEN}} is still filled."""
    api, other = _secret("Api"), _secret("Other")
    values = {"AWS_ACCESS_KEY_ID": "AKIA" + secrets.token_hex(8).upper(),
              "AWS_SECRET_ACCESS_KEY": _secret("AwsKey"), "AWS_SESSION_TOKEN": _secret("AwsToken"),
              "OUTBOX_ALLOWED_HOSTS": f"{LOCALHOST},{_secret('Host').lower()}.internal"}
    with password_role(db) as (role, password):
        url = f"postgresql://{role}:{password}@{LOCALHOST}:{db.cluster.port}/{db.name}"
        values.update(DATABASE_URL=url, PGPASSWORD=password)
        r = relay(url, env=env(API_TOKEN=api, OTHER_TOKEN=other, OUTBOX_HEADER_ENV="API_TOKEN",
                               **{k: v for k, v in values.items() if k != "DATABASE_URL"}))
        asks = [*values, "OTHER_TOKEN"]
        rows = insert(db, [{"destinations": [http_dest(sink.url(f"/leak/{var}"), {"X-Leak": f"{{{{{var}}}}}"})],
                            "payload": var} for var in asks]
                      + [{"destinations": [http_dest(sink.url("/ok"), {"X-Api-Token": "{{API_TOKEN}}"})],
                          "payload": "ok"}])
        by_payload = {row["payload"]: row["idempotent_key"] for row in rows}
        wait_processed(db, [by_payload["ok"]], timeout=20)
        wait_until(lambda: db.scalar("SELECT count(*) FROM outbox WHERE idempotent_key = ANY(%s::uuid[])"
                                     " AND dead_at IS NOT NULL", (keys(rows),)) == len(asks),
                   20, "every row asking for a refused variable parked")
        table = {t["payload"]: t for t in db.query_dicts(
            "SELECT payload, dead_at, attempts, last_error, processed_at FROM outbox")}
        for var in values:
            assert f"asks for {{{{{var}}}}}" in table[var]["last_error"], table[var]
        assert "asks for {{OTHER_TOKEN}}, which OUTBOX_HEADER_ENV does not allow" in table["OTHER_TOKEN"]["last_error"]
        assert all(table[var]["processed_at"] is None for var in asks)
        (ok,) = sink.requests(path="/ok")
        assert header_values(ok, "X-Api-Token") == [api]
        received = sink.requests()
        assert [x["path"] for x in received] == ["/ok"], [x["path"] for x in received]
        texts = {"the sink's requests": json.dumps(received), "the relay log": r.log(),
                 "last_error": "\n".join(t["last_error"] or "" for t in table.values())}
        secret_values = {**{k: v for k, v in values.items() if k != "OUTBOX_ALLOWED_HOSTS"},
                         "the host in OUTBOX_ALLOWED_HOSTS": values["OUTBOX_ALLOWED_HOSTS"].split(",")[1],
                         "OTHER_TOKEN": other}
        leaks = _leaks(texts, secret_values)
        assert not leaks, "secrets leaked: " + "; ".join(leaks)
        assert r.stop() == 0


def test_header_env_naming_a_relay_secret_fails_at_start(db, run_relay):
    """OUTBOX_HEADER_ENV cannot open the relay's own variables: the relay refuses to start,
    naming the setting."""
    res = run_relay("run", db=db, env=env(OUTBOX_HEADER_ENV="API_TOKEN AWS_*"), timeout=30)
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert "invalid value for OUTBOX_HEADER_ENV: AWS_* names the relay's own settings" in res.stderr, res.stderr
