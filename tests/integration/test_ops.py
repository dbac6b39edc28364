"""Operating outbox-relay: the HTTP endpoint (/health, /ready, /metrics), systemd notification,
and the `status` and `requeue` commands, against a real PostgreSQL 15 and the recording sink.

Every relay here gets OUTBOX_LISTEN_ADDR on a port reserved with conftest's PortLock, so files
running in parallel never collide on the default 127.0.0.1:9095."""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import json
import math
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import psycopg2
import pytest

from conftest import (BUILD_ROOT, LOCALHOST, SOURCE_ROOT, SQL_DIR, PortLock, http_destination,
                      require_relay, socket_dir, uuid7, wait_until)

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:  # pragma: no cover
    raise ImportError("prometheus_client is missing: apt-get install python3-prometheus-client "
                      "(the tests parse /metrics with Prometheus' own text parser)")

UTC = dt.timezone.utc


# ---- helpers --------------------------------------------------------------------------------


@pytest.fixture
def admin_port():
    """A TCP port reserved for this test (flock'ed, so parallel pytest processes skip it)."""
    lock = PortLock()
    try:
        yield lock.port
    finally:
        lock.release()


def http_get(port: int, path: str, method: str = "GET", timeout: float = 5):
    """(status, headers dict with lower-case names, body str)."""
    conn = http.client.HTTPConnection(LOCALHOST, port, timeout=timeout)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        body = resp.read().decode()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def try_get(port: int, path: str):
    try:
        return http_get(port, path, timeout=2)
    except OSError:
        return None


def start_admin_relay(relay, db, port: int, *args: str, **env):
    return relay(db, *args, OUTBOX_LISTEN_ADDR=f"{LOCALHOST}:{port}", **env)


def scrape(port: int) -> dict:
    """/metrics parsed by prometheus_client: {sample name: {frozenset(labels): value}} plus
    the families under the key None."""
    status, headers, body = http_get(port, "/metrics")
    assert status == 200, body
    families = list(text_string_to_metric_families(body))
    out: dict = {None: {f.name: f for f in families}, "_text": body}
    for f in families:
        for s in f.samples:
            out.setdefault(s.name, {})[frozenset(s.labels.items())] = s.value
    return out


def value(m: dict, name: str, **labels) -> float:
    return m[name][frozenset(labels.items())]


def outbox_snapshot(db) -> list[tuple]:
    return db.query("SELECT idempotent_key::text, partition_key::text, attempts, processed_at, dead_at,"
                    " retry_after, last_error, sent_destinations, process_after"
                    " FROM outbox ORDER BY idempotent_key")


def insert_parked(db, url: str, *, partition=None, dead_at=None, attempts=10,
                  error="destinations[0] http POST http://x/y: HTTP 500") -> tuple[str, str]:
    """A parked row (as the relay parks one at the failure limit); returns (key, partition)."""
    key, part = str(uuid7()), str(partition or uuid7())
    db.execute("INSERT INTO outbox (idempotent_key, partition_key, destinations, payload, attempts,"
               " last_error, dead_at, retry_after)"
               " VALUES (%s, %s, %s::jsonb, 'parked', %s, %s, coalesce(%s, now()), now() + interval '1 hour')",
               (key, part, json.dumps([http_destination(url)]), attempts, error, dead_at))
    return key, part


def binary_migrations() -> list[tuple[int, str]]:
    out = []
    for f in sorted(SQL_DIR.glob("*.sql")):
        m = re.match(r"^(\d+)_(.+)\.sql$", f.name)
        if m:
            out.append((int(m.group(1)), f.name[:-4]))
    return sorted(out)


# ---- the HTTP endpoint ------------------------------------------------------------------------


def test_health_ready_and_metrics_answer(db, relay, admin_port):
    r = start_admin_relay(relay, db, admin_port)
    assert re.search(rf"serving /health, /ready and /metrics on {LOCALHOST}:{admin_port}", r.log())

    status, headers, body = http_get(admin_port, "/health")
    assert status == 200 and json.loads(body) == {"status": "up"}
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store"

    status, _, body = wait_until(lambda: (x := http_get(admin_port, "/ready"))[0] == 200 and x,
                                 15, "/ready 200")
    assert json.loads(body) == {"status": "ready"}

    status, headers, body = http_get(admin_port, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "outbox_relay_up 1\n" in body

    # query strings are ignored; HEAD is GET without a body
    assert http_get(admin_port, "/health?verbose=1")[0] == 200
    status, headers, body = http_get(admin_port, "/health", method="HEAD")
    assert status == 200 and body == ""

    for path in ("/", "/healthz", "/metrics/x", "/_sink/requests"):
        assert http_get(admin_port, path)[0] == 404, path
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        status, headers, _ = http_get(admin_port, "/metrics", method=method)
        assert status == 405, method
        assert headers["allow"] == "GET, HEAD"

    assert r.alive()
    assert r.stop() == 0


def test_ready_follows_the_database(db, relay, pg_cluster, admin_port):
    r = start_admin_relay(relay, db, admin_port)
    wait_until(lambda: (try_get(admin_port, "/ready") or [0])[0] == 200, 15, "/ready 200")

    pg_cluster.stop()
    try:
        res = wait_until(lambda: (x := try_get(admin_port, "/ready")) and x[0] == 503 and x, 30,
                         "/ready 503 while PostgreSQL is stopped")
        answer = json.loads(res[2])
        assert answer["status"] == "not ready"
        assert answer["reason"], answer
        assert "postgres" not in res[2] and str(pg_cluster.port) not in res[2]
        # the process itself is fine
        assert http_get(admin_port, "/health")[0] == 200
        m = scrape(admin_port)
        assert value(m, "outbox_relay_ready") == 0
        assert value(m, "outbox_relay_up") == 1
    finally:
        pg_cluster.start()

    res = wait_until(lambda: (x := try_get(admin_port, "/ready")) and x[0] == 200 and x, 60,
                     "/ready 200 after PostgreSQL is back")
    assert json.loads(res[2]) == {"status": "ready"}
    m = scrape(admin_port)
    assert value(m, "outbox_relay_ready") == 1
    assert value(m, "outbox_relay_reconnects_total") >= 1
    assert r.alive()


def test_metrics_match_what_the_sink_received(db, relay, sink, admin_port):
    sink.rules([{"path": "/fail", "status": 500}])
    ok = db.insert_http_rows(sink.url("/ok"), 5)
    bad = db.insert_http_rows(sink.url("/fail"), 3)
    r = start_admin_relay(relay, db, admin_port, OUTBOX_FAILURE_LIMIT=1)

    def settled():
        m = scrape(admin_port)
        return (value(m, "outbox_relay_rows_delivered_total") == len(ok)
                and value(m, "outbox_relay_parked_total", kind="http") == len(bad)) and m

    m = wait_until(settled, 20, "5 delivered and 3 parked rows in /metrics")

    records = sink.requests()
    delivered = [x for x in records if 200 <= x["response"]["status"] < 300]
    failed = [x for x in records if x["response"]["status"] >= 300]
    assert len(delivered) == len(ok) and len(failed) == len(bad)
    assert value(m, "outbox_relay_delivered_total", kind="http") == len(delivered)
    assert value(m, "outbox_relay_failed_total", kind="http") == len(failed)
    assert value(m, "outbox_relay_parked_total", kind="http") == len(bad)
    for kind in ("sqs", "sns"):
        assert value(m, "outbox_relay_delivered_total", kind=kind) == 0
        assert value(m, "outbox_relay_failed_total", kind=kind) == 0
        assert value(m, "outbox_relay_parked_total", kind=kind) == 0
    assert value(m, "outbox_relay_parked_total", kind="malformed") == 0
    # the database agrees (a row counts as delivered when its destination answered; its result
    # is committed by the next statement)
    wait_until(lambda: db.scalar("SELECT count(*) FROM outbox WHERE processed_at IS NOT NULL") == len(ok)
               and db.scalar("SELECT count(*) FROM outbox WHERE dead_at IS NOT NULL") == len(bad), 10,
               "the results committed")

    # the histogram: cumulative, +Inf = count = rows delivered, sum plausible
    fam = m[None]["outbox_relay_delivery_latency_seconds"]
    assert fam.type == "histogram" and fam.documentation
    buckets = [(float(s.labels["le"]), s.value) for s in fam.samples
               if s.name.endswith("_bucket")]
    assert buckets == sorted(buckets), "bucket bounds in order"
    counts = [c for _, c in buckets]
    assert counts == sorted(counts), "cumulative counts never decrease"
    assert buckets[-1][0] == math.inf and buckets[-1][1] == len(ok)
    assert value(m, "outbox_relay_delivery_latency_seconds_count") == len(ok)
    assert 0 <= value(m, "outbox_relay_delivery_latency_seconds_sum") < 60 * len(ok)

    # every family is typed and documented
    types = {
        "outbox_relay_delivered": "counter", "outbox_relay_failed": "counter",
        "outbox_relay_parked": "counter", "outbox_relay_rows_delivered": "counter",
        "outbox_relay_requests_in_flight": "gauge", "outbox_relay_leases_held": "gauge",
        "outbox_relay_partitions_lingering": "gauge",
        "outbox_relay_notifications": "counter", "outbox_relay_polls": "counter",
        "outbox_relay_poll_found_partitions": "counter", "outbox_relay_claims": "counter",
        "outbox_relay_reconnects": "counter", "outbox_relay_up": "gauge",
        "outbox_relay_info": "gauge", "outbox_relay_ready": "gauge",
    }
    for name, typ in types.items():
        assert name in m[None], f"family {name} missing"
        assert m[None][name].type == typ, name
        assert m[None][name].documentation, name
    (info,) = m[None]["outbox_relay_info"].samples
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", info.labels["version"]) and info.value == 1
    assert value(m, "outbox_relay_polls_total") >= 1
    assert value(m, "outbox_relay_claims_total") >= 1
    assert value(m, "outbox_relay_requests_in_flight") == 0

    # the sampled gauges appear once the relay sampled the database (every 5 s)
    def sampled():
        mm = scrape(admin_port)
        return "outbox_relay_due_rows" in mm and mm

    mm = wait_until(sampled, 15, "the sampled gauges")
    assert value(mm, "outbox_relay_due_rows") >= 0
    assert value(mm, "outbox_relay_oldest_due_age_seconds") >= 0
    assert 0 <= value(mm, "outbox_relay_notification_queue_usage") <= 1

    # no secrets: neither the connection string nor its parts
    text = m["_text"]
    assert db.url not in text and "postgres" not in text and db.name not in text
    assert r.stop() == 0


def test_listen_addr_off_bad_and_in_use(db, relay, admin_port):
    # off: no endpoint at all
    r = relay(db, OUTBOX_LISTEN_ADDR="off")
    assert "serving /health" not in r.log()
    assert r.stop() == 0

    # a bad value is a settings error (exit 2) naming the setting
    r = relay(db, ready=False, OUTBOX_LISTEN_ADDR="::1:9095")
    assert r.wait(10) == 2
    assert "OUTBOX_LISTEN_ADDR" in r.log() and "brackets" in r.log()
    r = relay(db, "--listen-addr", "localhost", ready=False)
    assert r.wait(10) == 2
    assert "OUTBOX_LISTEN_ADDR (--listen-addr)" in r.log()

    # a port in use: a clear error naming the setting, exit 1, before connecting anywhere
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOCALHOST, admin_port))
        s.listen(1)
        r = relay(db, ready=False, OUTBOX_LISTEN_ADDR=f"{LOCALHOST}:{admin_port}")
        assert r.wait(10) == 1
    log = r.log()
    assert f'could not listen on OUTBOX_LISTEN_ADDR "{LOCALHOST}:{admin_port}"' in log
    assert "in use" in log
    assert "relay ready" not in log


def test_ipv6_listen_addr(db, relay, admin_port):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", admin_port))
    except OSError as e:
        pytest.skip(f"cannot bind [::1] here: {e}")
    r = relay(db, OUTBOX_LISTEN_ADDR=f"[::1]:{admin_port}")
    conn = http.client.HTTPConnection("::1", admin_port, timeout=5)
    try:
        conn.request("GET", "/health")
        assert conn.getresponse().status == 200
    finally:
        conn.close()
    assert r.stop() == 0


# ---- systemd ----------------------------------------------------------------------------------


def test_sd_notify_ready_watchdog_and_stopping(db, relay, admin_port):
    # a short directory: under tmp_path the address could exceed 107 bytes (sun_path), as it
    # does when the checkout lives under a long path
    sockdir = socket_dir("obr-notify-")
    path = str(sockdir / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(path)
        r = start_admin_relay(relay, db, admin_port, NOTIFY_SOCKET=path, WATCHDOG_USEC="400000")
        got: list[str] = []

        def receive(want: str, timeout: float):
            def poll():
                while select.select([sock], [], [], 0.05)[0]:
                    got.append(sock.recv(4096).decode())
                return want in got
            try:
                wait_until(poll, timeout, f"{want} on NOTIFY_SOCKET")
            except TimeoutError as e:
                raise AssertionError(f"{e}; received {got}\n{r.log()}") from None

        receive("READY=1", 10)
        # READY=1 means ready: /ready agrees at that moment
        assert http_get(admin_port, "/ready")[0] == 200
        receive("WATCHDOG=1", 5)
        got.clear()
        receive("WATCHDOG=1", 5)  # keeps coming
        assert "READY=1" not in got, "READY=1 is sent once"
        r.send_signal(signal.SIGTERM)
        receive("STOPPING=1", 10)
        assert r.wait(20) == 0
    finally:
        sock.close()
        shutil.rmtree(sockdir, ignore_errors=True)


UNIT = SOURCE_ROOT / "contrib" / "systemd" / "outbox-relay.service"


def test_systemd_unit_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    text = UNIT.read_text()
    assert "Type=notify" in text
    assert "ExecStart=/usr/local/bin/outbox-relay run" in text
    # verify checks that ExecStart exists: point it at a stand-in with the same name
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "outbox-relay"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    unit = tmp_path / "outbox-relay.service"
    unit.write_text(text.replace("/usr/local/bin/outbox-relay", str(fake)))
    res = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True,
                         text=True, timeout=60,
                         env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"})
    # only findings about our unit count (the host's own units may have theirs)
    ours = [line for line in (res.stdout + res.stderr).splitlines()
            if "outbox-relay" in line]
    assert res.returncode == 0 and not ours, res.stdout + res.stderr
    # the sandboxing: systemd's own exposure score (0 = locked down .. 10 = exposed)
    res = subprocess.run([analyze, "security", "--offline=true", "--no-pager", str(unit)],
                         capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", res.stdout + res.stderr)
    if m:  # --offline needs systemd 252
        assert float(m.group(1)) <= 2.0, res.stdout
    # the shutdown grace (8 s default) fits in the stop timeout
    m = re.search(r"^TimeoutStopSec=(\d+)s?$", text, re.M)
    assert m and int(m.group(1)) > 8


def test_env_example_lists_every_setting():
    """contrib/systemd/outbox-relay.env.example names every setting `--help` lists, with its
    default."""
    help_text = subprocess.run([str(require_relay()), "--help"], capture_output=True, text=True,
                               timeout=10).stdout
    names = re.findall(r"^  ([A-Z][A-Z0-9_]+) +--", help_text, re.M)
    assert "OUTBOX_LISTEN_ADDR" in names and "DATABASE_URL" in names
    example = (SOURCE_ROOT / "contrib" / "systemd" / "outbox-relay.env.example").read_text()
    for name in names:
        assert re.search(rf"^#?{name}=", example, re.M), f"{name} missing from the env example"
    # a setting's block: its name line, wrapped help lines, then "default: X" if it has one
    defaults = re.findall(r"^  ([A-Z][A-Z0-9_]+) +--.*\n(?:      (?!default: ).*\n)*      default: (\S+)",
                          help_text, re.M)
    assert ("OUTBOX_LISTEN_ADDR", "127.0.0.1:9095") in defaults and len(defaults) >= 20
    for name, default in defaults:
        assert re.search(rf"^#{name}={re.escape(default)}$", example, re.M), \
            f"{name}: default {default} not shown in the env example"


def test_man_page_documents_every_setting():
    """`outbox-relay --man` (what the build installs as outbox-relay(1)) is the same table as
    --help: every setting with its flag and default, and the commands; no raw roff breaks it."""
    relay_bin = str(require_relay())
    help_text = subprocess.run([relay_bin, "--help"], capture_output=True, text=True, timeout=10).stdout
    man = subprocess.run([relay_bin, "--man"], capture_output=True, text=True, timeout=10)
    assert man.returncode == 0 and man.stdout.startswith(".TH OUTBOX\\-RELAY 1 ")
    names = re.findall(r"^  ([A-Z][A-Z0-9_]+) +--(\S+)", help_text, re.M)
    assert len(names) >= 20
    entries = dict(re.findall(r"^\.BR (\S+) \", \" \\-\\-(\S+)", man.stdout, re.M))
    for env, flag in names:
        assert entries.get(env) == flag.replace("-", "\\-"), f"{env} --{flag} missing from the man page"
    for command in ("migrate", "status", "requeue"):
        assert re.search(rf"^\.B outbox\\-relay {command}", man.stdout, re.M)
    # every line that starts a request is one the page means to use
    requests = {m for m in re.findall(r"^\.([A-Z]+)", man.stdout, re.M)}
    assert requests <= {"TH", "SH", "PP", "B", "RS", "RE", "TP", "BR"}, requests
    built = BUILD_ROOT / "src" / "relay" / "outbox-relay.1"
    assert built.read_text() == man.stdout, "the build's outbox-relay.1 is not what --man prints"


# ---- status -----------------------------------------------------------------------------------


def make_known_state(db, url: str) -> dict:
    """Rows in every state and leases of two instances; returns what status must report."""
    now = dt.datetime.now(UTC)
    dest = [http_destination(url)]
    rows = []
    # due: 3 fresh, 1 whose retry time has passed, 1 due for 100 s (the oldest)
    for _ in range(3):
        rows.append({"destinations": dest, "payload": "due"})
    rows.append({"destinations": dest, "payload": "due-after-retry"})
    rows.append({"destinations": dest, "payload": "oldest", "process_after": now - dt.timedelta(seconds=100)})
    # delayed
    for _ in range(2):
        rows.append({"destinations": dest, "payload": "delayed", "process_after": now + dt.timedelta(hours=1)})
    # retrying
    rows.append({"destinations": dest, "payload": "retrying", "attempts": 2})
    # parked and processed
    for _ in range(2):
        rows.append({"destinations": dest, "payload": "parked", "attempts": 10})
    for _ in range(4):
        rows.append({"destinations": dest, "payload": "processed", "attempts": 1})
    db.insert_rows(rows)
    db.execute("UPDATE outbox SET retry_after = now() - interval '1 second', attempts = 1,"
               " last_error = 'x' WHERE payload = 'due-after-retry'")
    db.execute("UPDATE outbox SET retry_after = now() + interval '1 hour', last_error = 'HTTP 500'"
               " WHERE payload = 'retrying'")
    db.execute("UPDATE outbox SET dead_at = now(), last_error = 'HTTP 500' WHERE payload = 'parked'")
    db.execute("UPDATE outbox SET processed_at = now() WHERE payload = 'processed'")

    a, b, c = sorted(str(uuid7()) for _ in range(3))
    leases = [(a, "now() + interval '30 seconds'", None), (a, "now() + interval '30 seconds'", None),
              (a, "now() - interval '5 seconds'", None), (b, "now() + interval '1 minute'", None),
              (c, "now() + interval '1 minute'", "now()")]  # released: not listed
    for lock_id, until, done in leases:
        db.execute(f"INSERT INTO outbox_lock (partition_key, lock_id, processing_until, processed_at)"
                   f" VALUES (%s, %s, {until}, {done or 'NULL'})", (str(uuid7()), lock_id))
    return {
        "due_rows": 5, "delayed_rows": 2, "retrying_rows": 1, "parked_rows": 2,
        "processed_rows": 4, "processed_rows_estimated": False,
        "leases": [{"lock_id": a, "active": 2, "expired": 1}, {"lock_id": b, "active": 1, "expired": 0}],
        "leases_active": 3, "leases_expired": 1,
    }


def test_status_json_matches_a_known_state(db, run_relay, sink):
    expected = make_known_state(db, sink.url("/x"))
    res = run_relay("status", "--json", db=db)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    for k, v in expected.items():
        assert got[k] == v, (k, got[k], v)
    assert 100 <= got["oldest_due_age_seconds"] < 160
    assert got["notification_queue_usage"] == 0
    migrations = binary_migrations()
    assert got["schema_version"] == migrations[-1][0]
    assert got["schema_binary_version"] == migrations[-1][0]
    assert got["schema_behind"] is False and got["schema_missing_migrations"] == []
    assert set(got) == set(expected) | {"oldest_due_age_seconds", "notification_queue_usage",
                                        "schema_version", "schema_binary_version",
                                        "schema_behind", "schema_missing_migrations"}

    # the same through --database, as a table
    res = run_relay("status", "--database", db.url)
    assert res.returncode == 0, res.stderr
    table = res.stdout
    for label, n in (("due rows", 5), ("delayed rows", 2), ("retrying rows", 1),
                     ("parked rows", 2), ("processed rows", 4)):
        assert re.search(rf"^{label} +{n}\b", table, re.M), (label, table)
    assert re.search(r"^oldest due row age +1\d\d\.\d{3} s$", table, re.M), table
    assert re.search(rf"^schema version +{migrations[-1][0]} \(up to date\)$", table, re.M), table
    assert re.search(r"^leases +3 active, 1 expired, 2 instances$", table, re.M), table
    for lease in expected["leases"]:
        assert re.search(rf"^  {lease['lock_id']} +{lease['active']} +{lease['expired']}$", table, re.M)


def test_status_of_an_empty_outbox_and_a_schema_behind(db, run_relay):
    got = json.loads(run_relay("status", "--json", db=db).stdout)
    assert got["due_rows"] == got["parked_rows"] == got["processed_rows"] == 0
    assert got["oldest_due_age_seconds"] is None
    assert got["leases"] == [] and got["leases_active"] == 0

    last_version, last_name = binary_migrations()[-1]
    db.execute("DELETE FROM outbox_relay_schema_version WHERE version = %s", (last_version,))
    res = run_relay("status", "--json", db=db)
    got = json.loads(res.stdout)
    assert got["schema_behind"] is True
    assert got["schema_missing_migrations"] == [last_name]
    assert got["schema_version"] < last_version
    res = run_relay("status", db=db)
    assert "behind" in res.stdout and "outbox-relay migrate" in res.stdout


def test_status_errors(empty_db, run_relay, pg_cluster):
    res = run_relay("status", db=empty_db)
    assert res.returncode == 1
    assert "table outbox does not exist" in res.stderr and "outbox-relay migrate" in res.stderr

    lock = PortLock()  # nothing listens there
    try:
        url = f"postgresql://postgres:s3cret@{LOCALHOST}:{lock.port}/x"
        res = run_relay("status", env={"DATABASE_URL": url})
    finally:
        lock.release()
    assert res.returncode == 1
    assert res.stderr.startswith("outbox-relay status: could not connect to the database: ")
    assert "s3cret" not in res.stderr + res.stdout and res.stderr.count("\n") == 1

    res = run_relay("status")
    assert res.returncode == 2 and "DATABASE_URL is not set" in res.stderr
    res = run_relay("status", "--verbose", db=empty_db)
    assert res.returncode == 2 and 'unknown argument "--verbose"' in res.stderr
    res = run_relay("status", "--help")
    assert res.returncode == 0 and "--json" in res.stdout


# ---- requeue ----------------------------------------------------------------------------------


def test_requeue_dry_run_changes_nothing(db, run_relay, sink):
    k1, p1 = insert_parked(db, sink.url("/a"))
    k2, p2 = insert_parked(db, sink.url("/b"), error="line one\nline two")
    db.insert_http_rows(sink.url("/pending"), 2)
    before = outbox_snapshot(db)

    listener = db.conn()
    with listener.cursor() as cur:
        cur.execute("LISTEN outbox")
    for args in (["--all"], ["--key", k1], ["--partition", p2], ["--until", "2999-01-01"]):
        res = run_relay("requeue", *args, "--dry-run", db=db)
        assert res.returncode == 0, res.stderr
        assert "dry run: nothing changed" in res.stdout
        assert outbox_snapshot(db) == before, args
    res = run_relay("requeue", "--all", "--dry-run", db=db)
    assert res.stdout.startswith("would requeue 2 rows in 2 partitions")
    assert k1 in res.stdout and k2 in res.stdout and p1 in res.stdout
    assert "line one line two" in res.stdout  # one row per line
    res = run_relay("requeue", "--key", k1, "--dry-run", db=db)
    assert res.stdout.startswith("would requeue 1 row in 1 partition ")
    assert k1 in res.stdout and k2 not in res.stdout
    listener.poll()
    assert listener.notifies == [], "a dry run notifies nobody"


def test_requeue_selects_exactly_the_chosen_rows(db, run_relay, sink):
    url = sink.url("/r")
    part_x = str(uuid7())
    jan = dt.datetime(2024, 1, 10, tzinfo=UTC)
    feb = dt.datetime(2024, 2, 10, tzinfo=UTC)
    mar = dt.datetime(2024, 3, 10, tzinfo=UTC)
    kx1, _ = insert_parked(db, url, partition=part_x, dead_at=jan)
    kx2, _ = insert_parked(db, url, partition=part_x, dead_at=jan)
    kx3, _ = insert_parked(db, url, partition=part_x, dead_at=jan)
    kf, pf = insert_parked(db, url, dead_at=feb)
    km, pm = insert_parked(db, url, dead_at=mar)
    kn, pn = insert_parked(db, url, dead_at=mar)
    # rows requeue must never touch: pending, retrying, processed (even with dead_at)
    (pending,) = db.insert_http_rows(url, 1)
    (processed,) = db.insert_http_rows(url, 1)
    db.execute("UPDATE outbox SET processed_at = now(), dead_at = now() - interval '1 day'"
               " WHERE idempotent_key = %s", (processed.idempotent_key,))
    untouchable = sorted([pending.idempotent_key, processed.idempotent_key])

    def state(keys):
        return {k: db.query("SELECT dead_at IS NULL, retry_after IS NULL, attempts, last_error"
                            " FROM outbox WHERE idempotent_key = %s", (k,))[0] for k in keys}

    requeued = (True, True, 0, None)
    parked = (False, False, 10, "destinations[0] http POST http://x/y: HTTP 500")
    others_before = [r for r in outbox_snapshot(db) if r[0] in untouchable]

    listener = db.conn()
    with listener.cursor() as cur:
        cur.execute("LISTEN outbox")

    def notified() -> set[str]:
        listener.poll()
        got = {n.payload for n in listener.notifies}
        listener.notifies.clear()
        return got

    # --key (twice), with a key that is pending and one that does not exist
    missing = str(uuid7())
    res = run_relay("requeue", "--key", kx1, "--key=" + kf, "--key", pending.idempotent_key,
                    "--key", missing, db=db)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("requeued 2 rows in 2 partitions")
    assert f"row {missing} does not exist" in res.stderr
    assert f"row {pending.idempotent_key} is not parked" in res.stderr
    assert state([kx1, kf]) == {kx1: requeued, kf: requeued}
    assert state([kx2, kx3, km, kn]) == {k: parked for k in (kx2, kx3, km, kn)}
    assert wait_until(lambda: (n := notified()) and n, 5, "notifications") == {part_x, pf}

    # --partition: the rest of partition x
    res = run_relay("requeue", "--partition", part_x.upper(), db=db)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("requeued 2 rows in 1 partition;")
    assert state([kx2, kx3]) == {kx2: requeued, kx3: requeued}
    assert state([km, kn])[km] == parked
    assert wait_until(notified, 5, "notification") == {part_x}

    # --since/--until on dead_at: [Feb 1, Mar 1) has nothing left; [Mar 1, ...) has km and kn
    res = run_relay("requeue", "--since", "2024-02-01", "--until", "2024-03-01T00:00:00Z", db=db)
    assert res.returncode == 0 and res.stdout.startswith("requeued 0 rows in 0 partitions"), res.stdout
    res = run_relay("requeue", "--until", "2024-03-09 23:59:59.999999+00:00", db=db, env={"OUTBOX_CHANNEL": "other"})
    assert res.returncode == 0 and res.stdout.startswith("requeued 0 rows"), res.stdout
    db.execute("UPDATE outbox SET dead_at = %s WHERE idempotent_key = %s", (feb, km))
    res = run_relay("requeue", "--since", "2024-02-01T00:00:00+01:00", "--until", "2024-03-01", db=db)
    assert res.stdout.startswith("requeued 1 row in 1 partition;"), res.stdout
    assert state([km, kn]) == {km: requeued, kn: parked}
    assert wait_until(notified, 5, "notification") == {pm}

    # --all: what is left
    res = run_relay("requeue", "--all", db=db)
    assert res.stdout.startswith("requeued 1 row in 1 partition;"), res.stdout
    assert state([kn]) == {kn: requeued}
    assert wait_until(notified, 5, "notification") == {pn}
    res = run_relay("requeue", "--all", db=db)
    assert res.stdout == "requeued 0 rows in 0 partitions\n"

    assert [r for r in outbox_snapshot(db) if r[0] in untouchable] == others_before
    assert db.scalar("SELECT count(*) FROM outbox WHERE dead_at IS NOT NULL AND processed_at IS NULL") == 0


def test_requeued_row_is_delivered_by_a_running_relay(db, relay, run_relay, sink, admin_port):
    key, part = insert_parked(db, sink.url("/requeued"))
    # the poll is 10 minutes away: only the requeue's NOTIFY can wake the relay
    r = start_admin_relay(relay, db, admin_port, OUTBOX_POLL_INTERVAL_MS=600000)
    assert sink.count() == 0, "a parked row is not delivered"
    res = run_relay("requeue", "--key", key, db=db)
    assert res.returncode == 0, res.stderr
    (rec,) = sink.wait_for_count(1, timeout=10)
    assert rec["path"] == "/requeued"
    assert [v for k, v in rec["headers"] if k.lower() == "x-idempotent-key"] == [key]
    wait_until(lambda: db.scalar("SELECT processed_at IS NOT NULL FROM outbox WHERE idempotent_key = %s",
                                 (key,)), 10, "the requeued row marked processed")
    row = db.outbox("idempotent_key = %s", (key,))[0]
    assert row["dead_at"] is None and row["last_error"] is None and row["attempts"] == 1
    assert r.alive()


@pytest.mark.parametrize("args, message", [
    ([], "no rows selected"),
    (["--key", "0190f5a2-7c1e-7a55-b3a5-3a9c1f0c2e11", "--all"], "cannot be combined"),
    (["--partition", "0190f5a2-7c1e-7a55-b3a5-3a9c1f0c2e11", "--since", "2024-01-01"], "cannot be combined"),
    (["--key", "not-a-uuid"], 'invalid value for --key: "not-a-uuid" is not a UUID'),
    (["--key", "0190f5a2-7c1e-7a55-b3a5-3a9c1f0c2e1"], "is not a UUID"),
    (["--partition", "0190f5a27c1e7a55b3a53a9c1f0c2e11x"], "invalid value for --partition"),
    (["--partition"], "option --partition needs a value"),
    (["--since", "yesterday"], 'invalid value for --since: "yesterday" is not an ISO 8601 timestamp'),
    (["--until", "2024-13-01"], "invalid value for --since/--until"),
    (["--since", "2024-02-30"], "invalid value for --since/--until"),
    (["--since", "2024-03-01", "--until", "2024-02-01"], "must be before --until"),
    (["--since", "2024-03-01", "--since", "2024-03-02"], "--since is given twice"),
    (["--all", "--channel", "Bad-Channel"], "invalid value for --channel"),
    (["--all", "--force"], 'unknown argument "--force"'),
])
def test_requeue_bad_arguments_exit_2(db, run_relay, sink, args, message):
    insert_parked(db, sink.url("/x"))
    before = outbox_snapshot(db)
    res = run_relay("requeue", *args, db=db)
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert res.stderr.startswith("outbox-relay requeue: ") and message in res.stderr, res.stderr
    assert not res.stderr.rstrip().endswith(".")
    assert res.stdout == ""
    assert outbox_snapshot(db) == before


def test_requeue_help_and_database_errors(empty_db, run_relay):
    res = run_relay("requeue", "--help")
    assert res.returncode == 0
    assert "last_error" in res.stdout and "--dry-run" in res.stdout and "--since" in res.stdout
    res = run_relay("requeue", "--all")
    assert res.returncode == 2 and "DATABASE_URL is not set" in res.stderr
    res = run_relay("requeue", "--all", db=empty_db)
    assert res.returncode == 1 and "outbox-relay migrate" in res.stderr


# ---- contrib: Prometheus rules, Grafana dashboard, container recipe -------------------------

CONTRIB = SOURCE_ROOT / "contrib"


def test_prometheus_rules_check_and_unit_tests(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    rules = CONTRIB / "prometheus" / "outbox-relay.rules.yml"
    res = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    res = subprocess.run([promtool, "test", "rules", "outbox-relay.rules.test.yml"],
                         cwd=rules.parent, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def dashboard_exprs() -> list[str]:
    dash = json.loads((CONTRIB / "grafana" / "outbox-relay.json").read_text())
    exprs = []
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            exprs.append(t["expr"])
    return exprs


def test_grafana_dashboard_uses_only_exported_metrics(tmp_path):
    exprs = dashboard_exprs()
    assert len(exprs) >= 15
    # every metric the dashboard reads exists in the exposition (names from the unit-tested
    # formatter's families; histogram series by their suffixes)
    exported = {
        "outbox_relay_up", "outbox_relay_ready", "outbox_relay_info", "outbox_relay_delivered_total",
        "outbox_relay_failed_total", "outbox_relay_parked_total", "outbox_relay_rows_delivered_total",
        "outbox_relay_delivery_latency_seconds_bucket", "outbox_relay_delivery_latency_seconds_sum",
        "outbox_relay_delivery_latency_seconds_count", "outbox_relay_requests_in_flight",
        "outbox_relay_leases_held", "outbox_relay_due_rows", "outbox_relay_oldest_due_age_seconds",
        "outbox_relay_notification_queue_usage", "outbox_relay_notifications_total",
        "outbox_relay_polls_total", "outbox_relay_poll_found_partitions_total",
        "outbox_relay_claims_total", "outbox_relay_reconnects_total",
    }
    used = set()
    for e in exprs:
        used |= set(re.findall(r"\boutbox_relay_[a-z_]+", e))
    assert used <= exported, used - exported
    for required in ("outbox_relay_delivered_total", "outbox_relay_failed_total",
                     "outbox_relay_parked_total", "outbox_relay_delivery_latency_seconds_bucket",
                     "outbox_relay_due_rows", "outbox_relay_oldest_due_age_seconds",
                     "outbox_relay_requests_in_flight", "outbox_relay_leases_held",
                     "outbox_relay_reconnects_total"):
        assert required in used, required
    assert any("histogram_quantile(0.99" in e for e in exprs)
    assert any("histogram_quantile(0.5" in e for e in exprs)

    promtool = shutil.which("promtool")
    if promtool is None:
        return
    # the PromQL parses: check it as recording rules with Grafana's variables filled in
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr{i}",
         "expr": e.replace("$__rate_interval", "5m").replace("$job", ".*").replace("$instance", ".*")}
        for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    res = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_container_recipe():
    text = (CONTRIB / "container" / "Containerfile").read_text()
    stages = re.findall(r"^FROM (\S+)(?: AS (\w+))?$", text, re.M)
    assert len(stages) == 2 and stages[0][1] == "build", stages
    assert "ARG DEBIAN=debian:12-slim" in text
    runtime = text.split("\nFROM ${DEBIAN}\n", 1)[1]
    assert "-dev" not in runtime and "meson" not in runtime, "the runtime stage has no build tools"
    assert re.search(r"^USER 10001:10001$", runtime, re.M)
    assert re.search(r"^ENV OUTBOX_LISTEN_ADDR=0\.0\.0\.0:9095$", runtime, re.M)
    assert re.search(r"^EXPOSE 9095$", runtime, re.M)
    assert re.search(r"^HEALTHCHECK .*\n?.*http://127\.0\.0\.1:9095/health", runtime, re.M)
    # every file the build stage copies exists
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for name in src.split():
            assert (SOURCE_ROOT / name).exists(), name


def test_requeue_timestamps_are_utc_even_through_pgbouncer(db, run_relay, sink, pgbouncer):
    """A timestamp without a zone is UTC whatever the session's TimeZone, also through a
    transaction pooler (the commands use one transaction and SET LOCAL)."""
    db.execute(f'ALTER DATABASE "{db.name}" SET TimeZone = \'America/New_York\'')
    dead = dt.datetime(2024, 2, 10, 4, 0, tzinfo=UTC)  # 23:00 the day before in New York
    key, _ = insert_parked(db, sink.url("/tz"), dead_at=dead)
    bouncer = pgbouncer(pool_mode="transaction")
    url = bouncer.url(db.name)

    # the window [02:00, 05:00) holds dead_at (04:00 UTC) only when read as UTC; read in the
    # session's New York time it would be [07:00, 10:00) UTC and select nothing
    res = run_relay("requeue", "--since", "2024-02-10 02:00:00", "--until", "2024-02-10T05:00",
                    "--dry-run", env={"DATABASE_URL": url})
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("would requeue 1 row in 1 partition"), res.stdout
    assert "2024-02-10T04:00:00.000Z" in res.stdout

    res = run_relay("status", "--json", env={"DATABASE_URL": url})
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["parked_rows"] == 1

    res = run_relay("requeue", "--since", "2024-02-10 02:00:00", "--until", "2024-02-10T05:00",
                    env={"DATABASE_URL": url})
    assert res.returncode == 0 and res.stdout.startswith("requeued 1 row in 1 partition;"), res.stdout
    assert db.scalar("SELECT dead_at IS NULL FROM outbox WHERE idempotent_key = %s", (key,))
