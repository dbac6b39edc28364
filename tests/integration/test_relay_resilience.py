"""Resilience: a PostgreSQL restart mid-run, graceful and forced shutdown, leases shorter than
a slow endpoint, takeover after a crash, and configuration checks at start."""

import collections
import json
import random
import re
import signal
import time

import psycopg2
import pytest

from conftest import SOURCE_ROOT, uuid7, wait_until
from relay_util import (CLAIM_APP, LISTEN_APP, WORK_APP, assert_each_once, by_key, env, http_dest, insert,
                        instance_id, keys, metric, relay_backends, rows_by_key, wait_no_leases,
                        wait_processed)


def rows_for(sink_url, parts, seq, tag):
    return [{"partition_key": p, "destinations": [http_dest(f"{sink_url}/{tag}/{p}")],
             "payload": json.dumps({"p": p, "s": seq})} for p in parts]


def collapsed_sequences(records):
    """partition -> arrival sequence of "s" with consecutive repeats collapsed (a re-send of
    the row in flight is allowed by at-least-once; anything else would break order)."""
    seqs = {}
    for rec in sorted(records, key=lambda r: r["seq"]):
        body = json.loads(rec["body"])
        s = seqs.setdefault(body["p"], [])
        if not s or s[-1] != body["s"]:
            s.append(body["s"])
    return seqs


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgres_restart_mid_run(db, sink, relay, pg_cluster, mode):
    """Rows written before, right after (while the relay may still be reconnecting) and after
    a PostgreSQL restart (fast: sessions terminated; immediate: a crash and recovery) are all
    delivered, in order per partition; the relay never exits."""
    sink.rules([{"prefix": "/pg/", "delay_ms": 300}])  # some requests are in flight at the restart
    r = relay(db, env=env())
    parts = [str(uuid7()) for _ in range(8)]
    written = []
    for s in range(3):
        written += insert(db, rows_for(sink.base_url, parts, s, "pg"))
    sink.wait_for_count(8, timeout=10)
    log_mark = len(r.log())
    pg_cluster.restart(mode=mode)
    assert r.alive()
    for s in range(3, 6):  # right after: the relay's connections are probably still down
        written += insert(db, rows_for(sink.base_url, parts, s, "pg"))
    r.wait_for_log("work connection re-established", timeout=30, start=log_mark)
    r.wait_for_log("listen connection re-established", timeout=30, start=log_mark)
    for s in range(6, 9):
        written += insert(db, rows_for(sink.base_url, parts, s, "pg"))
    try:
        db.scalar("SELECT 1")  # the shared test connection died with the server
    except psycopg2.Error:
        pass
    wait_processed(db, keys(written), timeout=40)
    records = sink.requests()
    got = by_key(records)
    assert set(got) == set(keys(written)), "rows missing at the sink"
    seqs = collapsed_sequences(records)
    assert seqs == {p: list(range(9)) for p in parts}, seqs
    assert r.alive(), "the relay exited"
    wait_no_leases(db)
    assert r.stop() == 0


def test_sigterm_lets_in_flight_requests_finish(db, sink, relay):
    """SIGTERM with slow requests in flight (1.5 s answers): the relay waits for them, writes
    their results, sends nothing new, releases its leases and exits 0 within the grace."""
    sink.rules([{"prefix": "/slow/", "delay_ms": 1500}])
    r = relay(db, env=env(OUTBOX_SHUTDOWN_GRACE_MS=5000))
    lock_id = instance_id(r)
    parts = [str(uuid7()) for _ in range(4)]
    heads = insert(db, rows_for(sink.base_url, parts, 0, "slow"))
    behind = insert(db, rows_for(sink.base_url, parts, 1, "slow"))
    sink.wait_for_count(4, timeout=10)
    assert db.scalar("SELECT count(*) FROM outbox_lock WHERE lock_id = %s", (lock_id,)) == 4
    r.send_signal(signal.SIGTERM)
    code = r.wait(timeout=10)
    assert code == 0, r.log()[-2000:]
    # it waited for the answers: their results are written (below); and it stayed within the
    # grace: nothing was abandoned (the log, below). Neither is read off a clock.
    got = rows_by_key(db, keys(heads) + keys(behind))
    for k in keys(heads):
        assert got[k]["processed_at"] is not None and got[k]["attempts"] == 1, got[k]
    for k in keys(behind):
        assert got[k]["processed_at"] is None and got[k]["attempts"] == 0, got[k]
    assert sink.count() == 4, "a row was sent after SIGTERM"
    assert db.scalar("SELECT count(*) FROM outbox_lock WHERE lock_id = %s", (lock_id,)) == 0
    log = r.log()
    assert "shutting down: 4 rows in flight" in log
    assert "abandoning" not in log
    assert re.search(r"released \d+ leases", log)


def test_second_signal_exits_at_once_and_lease_expiry_lets_another_instance_resend(db, sink, relay):
    """A second signal exits at once, abandoning the request in flight (no result written);
    its leases expire after OUTBOX_LEASE_MS and another instance sends the row again
    (at least once) and completes it."""
    sink.rules([{"path": "/hang", "delay_ms": 4000, "times": 1}])
    r1 = relay(db, env=env(OUTBOX_LEASE_MS=1000, OUTBOX_SHUTDOWN_GRACE_MS=10000))
    lock1 = instance_id(r1)
    (row,) = insert(db, [{"destinations": [http_dest(sink.url("/hang"))], "payload": "h"}])
    k = row["idempotent_key"]
    sink.wait_for_count(1, timeout=10)
    r1.send_signal(signal.SIGTERM)
    r1.wait_for_log("shutting down", timeout=5)
    r1.send_signal(signal.SIGINT)
    r1.wait(timeout=5)
    # it exited at once, without waiting for the 4 s answer: no result was written and its
    # lease is still there (had it waited, the row would be processed and the lease released)
    assert rows_by_key(db, [k])[k]["processed_at"] is None
    assert db.scalar("SELECT count(*) FROM outbox_lock WHERE lock_id = %s", (lock1,)) == 1
    r2 = relay(db, env=env(OUTBOX_POLL_INTERVAL_MS=200))
    got = wait_processed(db, [k], timeout=10)[k]
    recs = sink.requests(path="/hang")
    assert len(recs) == 2 and {x["body"] for x in recs} == {"h"}
    assert got["attempts"] == 1
    wait_no_leases(db)
    assert r2.alive()


def test_sigkill_mid_request_another_instance_takes_over_after_the_lease(db, sink, relay):
    """A relay killed (SIGKILL) while its request is in flight: a second relay takes the
    partition over once the lease expired (not before) and delivers the row and the rest of
    the partition in order."""
    sink.rules([{"path": "/k/1", "delay_ms": 3000, "times": 1}])
    r1 = relay(db, env=env(OUTBOX_LEASE_MS=1500))
    part = str(uuid7())
    rows = insert(db, [{"partition_key": part, "destinations": [http_dest(sink.url(f"/k/{i}"))],
                        "payload": str(i)} for i in (1, 2, 3)])
    sink.wait_for_count(1, timeout=10)
    r2 = relay(db, env=env(OUTBOX_POLL_INTERVAL_MS=100))
    killed_at = time.time()
    r1.kill()
    wait_processed(db, keys(rows), timeout=15)
    recs = sink.requests()
    assert [x["path"] for x in recs] == ["/k/1", "/k/1", "/k/2", "/k/3"]
    # the lease was renewed until the kill and lasts 1.5 s: the second send waited for it
    assert recs[1]["time_us"] / 1e6 >= killed_at + 0.5, "taken over before the lease could expire"
    assert all(r["attempts"] == 1 for r in rows_by_key(db, keys(rows)).values())
    wait_no_leases(db)
    assert r2.alive()


def test_lease_lost_with_the_connection_is_checked_before_more_is_sent(db, sink, relay):
    """Claims do not wait for the WAL flush, so a database crash can lose a lease the relay was
    just given. Simulated: relay A holds a partition (its first row in flight at a slow
    endpoint, the other five fetched), the lease row disappears and A's claim connection
    drops; relay B starts and claims the partition. A must drop the rows it fetched, finish
    its current row, find the lease gone and send nothing more: the row that was in flight
    arrives twice (A's and B's), every other row once, all in order."""
    sink.rules([{"path": "/lost/0", "delay_ms": 1500, "times": 1}])
    a = relay(db, env=env(OUTBOX_LOG_LEVEL="info"))
    part = str(uuid7())
    rows = insert(db, [{"partition_key": part, "destinations": [http_dest(sink.url(f"/lost/{i}"))],
                        "payload": str(i)} for i in range(6)])
    sink.wait_for_count(1, timeout=10)  # row 0 is at the endpoint, answered in 1.5 s
    mark = len(a.log())
    db.execute("DELETE FROM outbox_lock WHERE partition_key = %s", (part,))
    db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s"
               " AND application_name = %s", (db.name, CLAIM_APP))
    a.wait_for_log("claim connection lost", timeout=10, start=mark)
    b = relay(db, env=env(OUTBOX_LOG_LEVEL="info"))
    wait_processed(db, keys(rows), timeout=20)
    a.wait_for_log(f"lease on partition {part} was lost", timeout=10, start=mark)
    paths = [x["path"] for x in sorted(sink.requests(), key=lambda r: r["seq"])]
    assert paths == ["/lost/0", "/lost/0"] + [f"/lost/{i}" for i in range(1, 6)], paths
    assert a.alive() and b.alive()


def test_lease_shorter_than_slow_endpoint_is_renewed(db, sink, relay):
    """OUTBOX_LEASE_MS=1000 and 2.5 s answers (timeout 5 s), two instances polling every 200 ms:
    the holder renews the lease while the request runs, so each row is sent exactly once."""
    sink.rules([{"prefix": "/lease/", "delay_ms": 2500}])
    settings = env(OUTBOX_LEASE_MS=1000, OUTBOX_HTTP_TIMEOUT_MS=5000, OUTBOX_POLL_INTERVAL_MS=200)
    relays = [relay(db, env=settings) for _ in range(2)]
    parts = [str(uuid7()) for _ in range(6)]
    written = insert(db, rows_for(sink.base_url, parts, 0, "lease"))
    written += insert(db, rows_for(sink.base_url, parts, 1, "lease"))
    wait_processed(db, keys(written), timeout=20)
    records = sink.requests()
    assert_each_once(records, keys(written))
    assert collapsed_sequences(records) == {p: [0, 1] for p in parts}
    for r in relays:
        log = r.log()
        assert "taken over" not in log and "lost to another instance" not in log, log[-2000:]
    wait_no_leases(db)


def test_results_statement_stalled_past_the_lease(db, sink, relay):
    """Issue 12 item 4: two instances, 1 s leases. The holder's results statement for row 0 waits
    on a row lock another session holds, longer than the lease. Its work connection cancels the
    statement at a third of the lease (statement_timeout), so renewals still go out, and no row
    starts after the lease's local deadline without a renewal. Afterwards no row of the
    partition was delivered twice except row 0 (in flight when the stall began), and order
    holds. Without both, the lease expired behind the stalled statement, the other instance took
    the partition over, and both sent row 1."""
    part = str(uuid7())
    sink.rules([{"path": f"/fence/{part}/0", "delay_ms": 1500, "times": 1}])
    settings = env(OUTBOX_LEASE_MS=1000, OUTBOX_POLL_INTERVAL_MS=200, OUTBOX_LOG_LEVEL="info")
    holder = relay(db, env=settings)
    rows = insert(db, [{"partition_key": part, "destinations": [http_dest(f"{sink.base_url}/fence/{part}/{i}")],
                        "payload": json.dumps({"p": part, "s": i})} for i in range(8)])
    wait_until(lambda: any(r["path"] == f"/fence/{part}/0" for r in sink.requests()), 15, "row 0 to be sent")
    other = relay(db, env=settings)
    locker = db.conn(autocommit=False)
    try:
        with locker.cursor() as cur:  # row 0's result must wait for this transaction
            cur.execute("SELECT 1 FROM outbox WHERE idempotent_key = %s FOR UPDATE", (rows[0]["idempotent_key"],))

        def stalled_past_lease():
            log = holder.log()
            if "statement timeout" in log:
                return "cancelled"
            expired = db.scalar("SELECT count(*) FROM outbox_lock WHERE partition_key = %s"
                                " AND processing_until < clock_timestamp()", (part,))
            return "expired" if expired else None

        wait_until(stalled_past_lease, 20, "the results statement to stall past the lease")
        # the other instance has looked for partitions to take over since: three more scans,
        # or a claim of the expired lease that waits for the stalled statement's lease lock
        scans = metric(other, "outbox_relay_polls_total") or 0

        def other_looked():
            if any(b["wait_event_type"] == "Lock" for b in relay_backends(db, CLAIM_APP)):
                return "claim waits"
            return (metric(other, "outbox_relay_polls_total") or 0) >= scans + 3

        wait_until(other_looked, 15, "the other instance to look for partitions to take over")
    finally:
        locker.commit()
        locker.close()
    wait_processed(db, keys(rows), timeout=30)
    records = [r for r in sink.requests() if r["path"].startswith(f"/fence/{part}/")]
    counts = collections.Counter(r["path"] for r in records)
    assert all(counts[f"/fence/{part}/{i}"] == 1 for i in range(1, 8)), counts
    assert collapsed_sequences(records) == {part: list(range(8))}
    assert holder.alive() and other.alive()


# ---- configuration ---------------------------------------------------------------------------

BAD_SETTINGS = [
    ({"OUTBOX_POLL_INTERVAL_MS": "10"}, [], "OUTBOX_POLL_INTERVAL_MS"),
    ({"OUTBOX_MODE": "push"}, [], "OUTBOX_MODE"),
    ({"OUTBOX_LEASE_MS": "abc"}, [], "OUTBOX_LEASE_MS"),
    ({"OUTBOX_LEASE_MS": "500"}, [], "OUTBOX_LEASE_MS"),
    ({"OUTBOX_DELETE_ON_SUCCESS": "maybe"}, [], "OUTBOX_DELETE_ON_SUCCESS"),
    ({"OUTBOX_MAX_IN_FLIGHT": "0"}, [], "OUTBOX_MAX_IN_FLIGHT"),
    ({"OUTBOX_BATCH_SIZE": ""}, [], "OUTBOX_BATCH_SIZE"),
    ({"OUTBOX_FAILURE_LIMIT": "-1"}, [], "OUTBOX_FAILURE_LIMIT"),
    ({"OUTBOX_LOG_LEVEL": "verbose"}, [], "OUTBOX_LOG_LEVEL"),
    ({"OUTBOX_CHANNEL": "outbox; DROP TABLE outbox"}, [], "OUTBOX_CHANNEL"),
    ({"OUTBOX_RETRY_BASE_MS": "1000", "OUTBOX_RETRY_MAX_MS": "10"}, [], "OUTBOX_RETRY_MAX_MS"),
    ({}, ["--lease-ms=5"], "--lease-ms"),
    ({}, ["--http-timeout-ms", "soon"], "--http-timeout-ms"),
    ({"OUTBOX_FROBNICATE": "1"}, [], "OUTBOX_FROBNICATE"),
    ({}, ["--frobnicate"], "--frobnicate"),
    ({}, ["--batch-size"], "--batch-size"),
    ({"DATABASE_URL": None}, [], "DATABASE_URL"),
]


@pytest.mark.parametrize("settings,args,named", BAD_SETTINGS,
                         ids=[n + ("-" + "-".join(a) if a else "") for _, a, n in BAD_SETTINGS])
def test_bad_configuration_exits_2_naming_the_setting(pg_cluster, run_relay, settings, args, named):
    env_vars = {"DATABASE_URL": pg_cluster.url(), **settings}
    res = run_relay("run", *args, env=env_vars, timeout=15)  # a relay that runs on times out
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert named in res.stderr, res.stderr
    assert "relay ready" not in res.stderr + res.stdout


def readme_settings():
    """(variable, flag) pairs of the README's configuration table."""
    text = (SOURCE_ROOT / "README.md").read_text()
    pairs = re.findall(r"^\| `((?:OUTBOX_|DATABASE_)[A-Z_]+)` \| `(--[a-z-]+)` \|", text, re.M)
    assert len(pairs) >= 18, pairs
    return pairs


def test_help_lists_every_setting(run_relay):
    res = run_relay("--help", timeout=15)
    assert res.returncode == 0
    out = res.stdout
    pairs = readme_settings()
    missing = [(v, f) for v, f in pairs if not re.search(rf"\b{v}\b\s+{re.escape(f)}\b", out)]
    assert not missing, f"--help lacks {missing}:\n{out}"
    documented = {v for v, _ in pairs}
    in_help = set(re.findall(r"\bOUTBOX_[A-Z_]+\b", out))
    assert in_help <= documented, f"--help has settings the README does not document: {in_help - documented}"
    assert documented - {"DATABASE_URL"} <= in_help


def test_valid_flags_override_the_environment(db, sink, relay):
    """A flag wins over its variable: OUTBOX_MODE=poll in the environment, --mode=listen given."""
    r = relay(db, "--mode=listen", "--poll-interval-ms", str(3_600_000),
              env={"OUTBOX_MODE": "poll", "OUTBOX_LOG_LEVEL": "debug"})
    r.wait_for_log("listening on channel outbox")
    (row,) = insert(db, [{"destinations": [http_dest(sink.url("/flag"))], "payload": "f"}])
    wait_processed(db, [row["idempotent_key"]], timeout=10)


# ---- connections and notifications -----------------------------------------------------------


def test_lost_listen_connection_catches_up(db, sink, relay):
    """The listen connection is terminated; rows committed before it listens again (their
    NOTIFYs are lost) are found by the scan after the reconnect. The work connection is then
    terminated while idle, and delivery goes on."""
    r = relay(db, env=env())
    mark = len(r.log())
    (listen,) = relay_backends(db, LISTEN_APP)
    db.execute("SELECT pg_terminate_backend(%s)", (listen["pid"],))
    lost = insert(db, [{"destinations": [http_dest(sink.url("/lost"))], "payload": str(i)} for i in range(5)])
    r.wait_for_log("listen connection re-established", timeout=20, start=mark)
    wait_processed(db, keys(lost), timeout=10)
    mark = len(r.log())
    (work,) = relay_backends(db, WORK_APP)
    db.execute("SELECT pg_terminate_backend(%s)", (work["pid"],))
    r.wait_for_log("work connection lost", timeout=20, start=mark)
    later = insert(db, [{"destinations": [http_dest(sink.url("/later"))], "payload": "l"}])
    wait_processed(db, keys(later), timeout=20)
    assert_each_once(sink.requests(), keys(lost) + keys(later))
    assert r.alive()


def test_foreign_notifications_are_ignored(db, sink, relay):
    """NOTIFY outbox with a payload that is not a partition key is logged and ignored; one for
    a partition without rows takes and gives back a lease; the relay keeps delivering."""
    r = relay(db, env=env())
    db.execute("NOTIFY outbox, 'hello; DROP TABLE outbox'")
    db.execute("SELECT pg_notify('outbox', %s)", (str(uuid7()),))
    r.wait_for_log("ignoring notification on channel outbox", timeout=10)
    (row,) = insert(db, [{"destinations": [http_dest(sink.url("/after-noise"))], "payload": "n"}])
    wait_processed(db, [row["idempotent_key"]])
    wait_no_leases(db)
    assert r.alive()


def test_json_log_lines_stay_json_across_a_postgres_restart(db, sink, relay, pg_cluster):
    r = relay(db, env=env(OUTBOX_LOG_FORMAT="json"))
    mark = len(r.log())
    pg_cluster.restart()
    r.wait_for_log("connection re-established", timeout=30, start=mark)
    r.wait_for_log("listen connection re-established", timeout=30, start=mark)
    (row,) = insert(db, [{"destinations": [http_dest(sink.url("/j"))], "payload": "j"}])
    try:
        db.scalar("SELECT 1")
    except psycopg2.Error:
        pass
    wait_processed(db, [row["idempotent_key"]], timeout=20)
    assert r.stop() == 0
    bad = []
    for line in r.log().splitlines():
        try:
            assert isinstance(json.loads(line), dict)
        except (ValueError, AssertionError):
            bad.append(line)
    assert not bad, f"{len(bad)} log lines are not JSON objects: {bad[:5]}"


def test_relay_started_before_its_database_exists(pg_cluster, template_db, sink, relay):
    """A relay whose database does not exist yet keeps retrying (never exits) and works once
    the database appears."""
    name = f"late_{uuid7().hex[:12]}"
    r = relay(pg_cluster.url(name), ready=False, env=env())
    try:
        r.wait_for_log("connection lost, reconnecting", timeout=10)
        assert r.alive()
        pg_cluster.create_database(name, template=template_db)
        r.wait_for_log("relay ready", timeout=30)
        conn = pg_cluster.connect(name, autocommit=False)
        try:
            k = str(uuid7())
            with conn.cursor() as cur:
                cur.execute("INSERT INTO outbox (idempotent_key, partition_key, destinations, payload)"
                            " VALUES (%s, %s, %s::jsonb, 'late')",
                            (k, str(uuid7()), json.dumps([http_dest(sink.url("/late-db"))])))
            conn.commit()
            conn.autocommit = True

            def processed():
                with conn.cursor() as cur:
                    cur.execute("SELECT processed_at IS NOT NULL FROM outbox WHERE idempotent_key = %s", (k,))
                    return cur.fetchone()[0]

            wait_until(processed, 10, "the row to be processed")
        finally:
            conn.close()
        assert len(sink.requests(path="/late-db")) == 1
        assert r.stop() == 0
    finally:
        r.stop()
        pg_cluster.drop_database(name)


def test_crashes_keep_order_and_lose_nothing(db, sink, relay):
    """Three relays (1 s leases, 300 ms poll), 30 partitions x 15 rows and 100 ms answers; five
    times, once delivery has progressed, one relay is SIGKILLed (requests in flight) and
    replaced, while more rows are written. Afterwards every row arrived at least once and each
    partition's rows arrived in order: a crash may repeat only the row that was in flight, so
    only consecutive repeats are allowed."""
    sink.rules([{"prefix": "/chaos/", "delay_ms": 100}])
    settings = env(OUTBOX_LEASE_MS=1000, OUTBOX_POLL_INTERVAL_MS=300, OUTBOX_LOG_LEVEL="info")
    live = [relay(db, env=settings) for _ in range(3)]
    parts = [str(uuid7()) for _ in range(30)]
    rng = random.Random(7)
    written = []
    for s in range(5):
        written += insert(db, rows_for(sink.base_url, parts, s, "chaos"))
    seen = 0
    for kill in range(5):
        sink.wait_for_count(seen + 25, timeout=30)
        seen = sink.count()
        victim = live.pop(rng.randrange(len(live)))
        victim.kill()
        live.append(relay(db, env=settings))
        for s in range(5 + 2 * kill, 7 + 2 * kill):
            written += insert(db, rows_for(sink.base_url, parts, s, "chaos"))
    wait_processed(db, keys(written), timeout=60)
    records = sink.requests()
    assert set(by_key(records)) == set(keys(written))
    assert len(records) > len(written), "no row was repeated: the kills hit no request in flight"
    seqs = collapsed_sequences(records)
    bad = {p: s for p, s in seqs.items() if s != list(range(15))}
    assert not bad, f"order broken in {len(bad)} partitions, e.g. {list(bad.items())[:2]}"
    assert all(r.alive() for r in live)
    # the live relays released theirs; a killed one's leases just expire (harmless if left)
    wait_until(lambda: db.scalar("SELECT count(*) FROM outbox_lock WHERE processed_at IS NULL"
                                 " AND processing_until >= now()") == 0, 10, "no live leases")


def test_sigterm_exits_within_grace_even_if_results_cannot_be_written(db, sink, relay):
    """A trigger (the application's, say) makes recording one row's success fail. SIGTERM must
    still stop the relay within OUTBOX_SHUTDOWN_GRACE_MS (the row is sent again later: at
    least once)."""
    db.execute("""
        CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.payload = 'poison' AND NEW.processed_at IS NOT NULL THEN
                RAISE EXCEPTION 'refusing to mark the poison row';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER refuse_poison BEFORE UPDATE ON outbox FOR EACH ROW EXECUTE FUNCTION refuse_poison();
    """)
    r = relay(db, env=env(OUTBOX_SHUTDOWN_GRACE_MS=1000, OUTBOX_LOG_LEVEL="info"))
    insert(db, [{"destinations": [http_dest(sink.url("/poison"))], "payload": "poison"}])
    r.wait_for_log("results statement failed", timeout=10)
    code = r.stop(timeout=4)  # kills and fails if it does not exit within 4 s
    assert code == 0
