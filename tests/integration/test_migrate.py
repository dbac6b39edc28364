"""`outbox-relay migrate`: the product's own command, run against real PostgreSQL 15.

Covers an empty database, running twice, running concurrently, upgrading a database that
outbox-pattern-processor 0.3.6 created (rows untouched, table not rewritten, trigger working),
and the ways it must fail loudly."""

import datetime as dt
import fcntl
import json
import os
import re
import select
import subprocess
import time
from pathlib import Path

import psycopg2
import psycopg2.errors
import pytest

from conftest import (
    PG_BIN,
    SQL_DIR,
    PortLock,
    relay_env,
    require_relay,
    run_relay_command,
    uuid7,
    wait_until,
)

HERE = Path(__file__).resolve().parent
CRATE_SQL = HERE / "crate_0_3_6.sql"

# Every column of outbox after the migrations: (type, NOT NULL).
OUTBOX_COLUMNS = {
    "idempotent_key": ("uuid", True),
    "partition_key": ("uuid", True),
    "destinations": ("jsonb", True),
    "headers": ("jsonb", False),
    "payload": ("text", True),
    "attempts": ("integer", True),
    "created_at": ("timestamp with time zone", True),
    "process_after": ("timestamp with time zone", True),
    "processed_at": ("timestamp with time zone", False),
    "last_error": ("text", False),
    "retry_after": ("timestamp with time zone", False),
    "dead_at": ("timestamp with time zone", False),
    "sent_destinations": ("integer[]", False),
}
CRATE_OUTBOX_COLUMNS = ["idempotent_key", "partition_key", "destinations", "headers", "payload",
                        "attempts", "created_at", "process_after", "processed_at"]
NEW_OUTBOX_COLUMNS = sorted(set(OUTBOX_COLUMNS) - set(CRATE_OUTBOX_COLUMNS))
OUTBOX_LOCK_COLUMNS = {
    "partition_key": ("uuid", True),
    "lock_id": ("uuid", True),
    "processed_at": ("timestamp with time zone", False),
    "processing_until": ("timestamp with time zone", True),
}


def migration_files() -> dict[int, str]:
    files = {}
    for p in sorted(SQL_DIR.glob("*.sql")):
        m = re.match(r"^(\d+)_.+\.sql$", p.name)
        assert m, f"{p.name}: migration files are named NNN_name.sql"
        files[int(m.group(1))] = p.name
    assert files, f"no migrations found in {SQL_DIR}"
    return files


def migrate(db, *args):
    """Runs `outbox-relay migrate *args` with DATABASE_URL = db.url (db: a Database, a URL or
    None for no DATABASE_URL); returns the CompletedProcess."""
    url = db if db is None or isinstance(db, str) else db.url
    return run_relay_command(["migrate", *args], url)


def assert_ok(res):
    assert res.returncode == 0, (f"migrate exited {res.returncode}\nstdout:\n{res.stdout}\n"
                                 f"stderr:\n{res.stderr}")


def columns(db, table):
    return {name: (typ, notnull) for name, typ, notnull in db.query(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull"
        "  FROM pg_attribute a WHERE a.attrelid = %s::regclass AND a.attnum > 0"
        "   AND NOT a.attisdropped", (table,))}


def index_defs(db, table):
    return dict(db.query("SELECT indexname, indexdef FROM pg_indexes"
                         " WHERE schemaname = current_schema() AND tablename = %s", (table,)))


def versions(db):
    return db.query("SELECT version, name, applied_at FROM outbox_relay_schema_version"
                    " ORDER BY version")


def assert_schema_complete(db):
    """Everything the migrations promise is there, exactly once."""
    tables = {r[0] for r in db.query(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}
    assert {"outbox", "outbox_lock", "outbox_relay_schema_version"} <= tables

    assert columns(db, "outbox") == OUTBOX_COLUMNS
    assert columns(db, "outbox_lock") == OUTBOX_LOCK_COLUMNS
    pk = db.query("SELECT a.attname FROM pg_index i JOIN pg_attribute a"
                  "  ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
                  " WHERE i.indrelid = 'outbox'::regclass AND i.indisprimary")
    assert pk == [("idempotent_key",)]

    # The crate's mutual exclusion: one active lease per partition.
    unique, pred, cols = db.query(
        "SELECT i.indisunique, pg_get_expr(i.indpred, i.indrelid),"
        "       array_to_string(array(SELECT attname FROM pg_attribute"
        "           WHERE attrelid = i.indrelid AND attnum = ANY(i.indkey)), ',')"
        "  FROM pg_index i WHERE i.indexrelid = 'unq_outbox_lock_by_partition_key'::regclass")[0]
    assert unique and cols == "partition_key"
    assert pred == "(processed_at IS NULL)"

    # AFTER INSERT, FOR EACH STATEMENT (tgtype: bit 0 row, bit 1 before, bit 2 insert), enabled.
    trig = db.query("SELECT tgtype, tgenabled, tgfoid::regproc::text FROM pg_trigger"
                    " WHERE tgrelid = 'outbox'::regclass AND tgname = 'outbox_notify'")
    assert len(trig) == 1, "trigger outbox_notify on outbox is missing"
    tgtype, enabled, func = trig[0]
    assert tgtype & 0b111 == 0b100, f"outbox_notify must be AFTER INSERT FOR EACH STATEMENT ({tgtype})"
    assert enabled == "O"
    assert func == "outbox_notify"

    # Pending rows must have finite timestamps (007); added NOT VALID, so old rows are not read.
    checks = dict(db.query("SELECT conname, convalidated FROM pg_constraint"
                           " WHERE conrelid = 'outbox'::regclass AND contype = 'c'"))
    assert checks == {"outbox_process_after_finite": False, "outbox_created_at_finite": False}, checks

    files = migration_files()
    recorded = versions(db)
    assert [v for v, _, _ in recorded] == sorted(files), "each migration recorded exactly once"
    for version, name, applied_at in recorded:
        fname = files[version]
        assert name in (fname, fname[:-4], fname[:-4].split("_", 1)[1]), (version, name, fname)
        assert applied_at is not None


def listen(db):
    conn = db.conn()
    with conn.cursor() as cur:
        cur.execute("LISTEN outbox")
    return conn


def notifications_until(conn, barrier, timeout=10):
    """Payloads on channel outbox received before `barrier` (sent by the test after the
    statements under test committed; notifications arrive in commit order, so once the
    barrier is here nothing earlier can still come)."""
    got = []
    deadline = time.monotonic() + timeout
    while True:
        for n in conn.notifies:
            if n.channel == "outbox":
                if n.payload == barrier:
                    conn.notifies.clear()
                    return got
                got.append(n.payload)
        conn.notifies.clear()
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no barrier notification within {timeout}s; got {got}")
        if select.select([conn], [], [], left)[0]:
            conn.poll()


def send_barrier(db):
    token = f"barrier-{uuid7()}"
    db.execute("SELECT pg_notify('outbox', %s)", (token,))
    return token


# ---- a new database ---------------------------------------------------------------------------


def test_migrate_creates_the_schema_on_an_empty_database(empty_db):
    res = migrate(empty_db)
    assert_ok(res)
    assert_schema_complete(empty_db)
    assert empty_db.scalar("SELECT count(*) FROM outbox") == 0


def schema_dump(db):
    out = subprocess.run([str(PG_BIN / "pg_dump"), "--schema-only", "--no-owner", "-d", db.url],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    # pg_dump >= 15.14 brackets the script with \restrict KEY ... \unrestrict KEY, KEY random
    return "\n".join(line for line in out.splitlines()
                     if not line.startswith(("\\restrict ", "\\unrestrict ")))


def test_migrate_twice_changes_nothing(empty_db):
    assert_ok(migrate(empty_db))
    before = schema_dump(empty_db)
    versions_before = versions(empty_db)
    assert "CREATE TABLE public.outbox " in before  # the dump is of the right database

    second = migrate(empty_db)
    assert_ok(second)
    assert schema_dump(empty_db) == before
    assert versions(empty_db) == versions_before, "versions re-recorded or applied_at changed"
    assert_schema_complete(empty_db)


def test_migrate_database_flag_instead_of_environment(empty_db):
    res = migrate(None, "--database", empty_db.url)
    assert_ok(res)
    assert_schema_complete(empty_db)


def _blocked_flock_waiters(inode: int) -> int:
    """Processes blocked on a lock of this inode ("N: -> FLOCK ADVISORY READ pid maj:min:inode ...")."""
    count = 0
    with open("/proc/locks") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 6 and fields[1] == "->" and fields[6].endswith(f":{inode}"):
                count += 1
    return count


def test_migrate_concurrently(empty_db, tmp_path):
    """Six migrate processes released at the same instant on an empty database."""
    n = 6
    gate_path = tmp_path / "gate"
    gate = open(gate_path, "w")
    fcntl.flock(gate, fcntl.LOCK_EX)
    procs = []
    try:
        for _ in range(n):
            # flock(1) waits for our exclusive lock to go, then runs migrate.
            procs.append(subprocess.Popen(
                ["flock", "--shared", str(gate_path), str(require_relay()), "migrate"],
                env=relay_env(empty_db.url), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL, text=True))
        inode = os.stat(gate_path).st_ino
        wait_until(lambda: _blocked_flock_waiters(inode) == n or any(p.poll() is not None for p in procs),
                   10, f"{n} migrate processes waiting at the gate")
        assert all(p.poll() is None for p in procs), "a migrate ran before the gate opened"
    finally:
        fcntl.flock(gate, fcntl.LOCK_UN)
        gate.close()
    results = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError("a concurrent migrate hung (deadlock?)")
        results.append((p.returncode, out, err))
    failed = [r for r in results if r[0] != 0]
    assert not failed, "concurrent migrate failed:\n" + "\n---\n".join(
        f"exit {code}\n{out}{err}" for code, out, err in failed)
    assert_schema_complete(empty_db)


# ---- what the migrations do -------------------------------------------------------------------


def test_one_active_lease_per_partition(db):
    part = uuid7()
    db.execute("INSERT INTO outbox_lock (partition_key, lock_id) VALUES (%s, %s)", (str(part), str(uuid7())))
    with pytest.raises(Exception, match="unq_outbox_lock_by_partition_key"):
        db.execute("INSERT INTO outbox_lock (partition_key, lock_id) VALUES (%s, %s)",
                   (str(part), str(uuid7())))
    db.execute("UPDATE outbox_lock SET processed_at = now() WHERE partition_key = %s", (str(part),))
    db.execute("INSERT INTO outbox_lock (partition_key, lock_id) VALUES (%s, %s)", (str(part), str(uuid7())))
    assert db.scalar("SELECT count(*) FROM outbox_lock WHERE partition_key = %s", (str(part),)) == 2


def test_trigger_notifies_once_per_partition_per_transaction(db):
    listener = listen(db)
    a, b, c = uuid7(), uuid7(), uuid7()
    # one multi-row INSERT: 3 rows of a, 2 of b
    db.insert_rows([{"partition_key": p, "destinations": [], "payload": "x"}
                    for p in (a, a, b, a, b)])
    # one transaction, two statements for c
    conn = db.conn(autocommit=False)
    with conn.cursor() as cur:
        for _ in range(2):
            cur.execute("INSERT INTO outbox (idempotent_key, partition_key, destinations, payload)"
                        " VALUES (%s, %s, '[]', 'y')", (str(uuid7()), str(c)))
    conn.commit()
    # a rolled-back insert notifies nobody
    with conn.cursor() as cur:
        cur.execute("INSERT INTO outbox (idempotent_key, partition_key, destinations, payload)"
                    " VALUES (%s, %s, '[]', 'z')", (str(uuid7()), str(uuid7())))
    conn.rollback()
    got = notifications_until(listener, send_barrier(db))
    assert sorted(got[:2]) == sorted([str(a), str(b)])
    assert got[2:] == [str(c)]


# ---- a database outbox-pattern-processor 0.3.6 already uses -----------------------------------


def crate_rows(now):
    """Rows as the crate's Rust helpers write them (explicit nulls, lowercase put/patch,
    Content-Type added by the http_*_json helpers, created_at = client time)."""
    hook = "http://127.0.0.1:9/success"
    queue = "http://sqs.us-east-1.localhost:4566/000000000000/queue"
    topic = "arn:aws:sns:us-east-1:000000000000:topic"
    json_headers = {"Content-Type": "application/json"}
    rows = [
        # http_post_json: headers go to the destination; row headers stay NULL
        dict(destinations=[{"url": hook, "headers": json_headers, "method": None}], headers=None,
             payload='{"foo":"bar"}', attempts=0),
        dict(destinations=[{"url": hook, "headers": {**json_headers, "X-ENV": "{{X_ENV_VALUE}}"},
                            "method": "put"}], headers=None, payload='{"foo":"put"}', attempts=0),
        # sqs / sns: headers become message attributes
        dict(destinations=[{"queue_url": queue}], headers={"x-tenant": "a"}, payload="plain text",
             attempts=0),
        dict(destinations=[{"topic_arn": topic}], headers={"x-tenant": "b"}, payload="é ü \u2603",
             attempts=0),
        # http_and_sqs: the SQS destination first
        dict(destinations=[{"queue_url": queue}, {"url": hook, "headers": json_headers, "method": "patch"}],
             headers=None, payload='{"both":true}', attempts=0),
        # failed three times, delayed into the future
        dict(destinations=[{"url": "http://127.0.0.1:9/failed", "headers": None, "method": None}],
             headers=None, payload='{"foo":"retry"}', attempts=3,
             process_after=now + dt.timedelta(minutes=5)),
        # processed
        dict(destinations=[{"url": hook, "headers": None, "method": None}], headers=None,
             payload='{"foo":"done"}', attempts=1, processed_at=now),
    ]
    part = uuid7()
    for i, r in enumerate(rows):
        r["idempotent_key"] = str(uuid7())
        r["partition_key"] = str(part if i < 2 else uuid7())
        r["created_at"] = now - dt.timedelta(seconds=len(rows) - i)
        r.setdefault("process_after", r["created_at"])
        r.setdefault("processed_at", None)
    return rows


def snapshot(db, table, cols):
    """Each row's physical location and transaction (unchanged = not rewritten or updated)
    and every given column as text."""
    select_list = ", ".join(f"{c}::text" for c in cols)
    return db.query(f"SELECT ctid::text, xmin::text, {select_list} FROM {table} ORDER BY ctid")


def test_migrate_upgrades_a_crate_0_3_6_database(empty_db):
    db = empty_db
    db.execute(CRATE_SQL.read_text())
    now = dt.datetime.now(dt.timezone.utc)
    rows = crate_rows(now)
    conn = db.conn(autocommit=False)
    with conn.cursor() as cur:
        for r in rows:
            cur.execute(
                "INSERT INTO outbox (idempotent_key, partition_key, destinations, headers, payload,"
                " attempts, created_at, process_after, processed_at)"
                " VALUES (%s, %s, %s::jsonb, %s::jsonb, %s, %s, %s, %s, %s)",
                (r["idempotent_key"], r["partition_key"], json.dumps(r["destinations"]),
                 None if r["headers"] is None else json.dumps(r["headers"]), r["payload"],
                 r["attempts"], r["created_at"], r["process_after"], r["processed_at"]))
        cur.execute("INSERT INTO outbox_lock (partition_key, lock_id, processed_at) VALUES"
                    " (%s, %s, now()), (%s, %s, NULL)",
                    (rows[0]["partition_key"], str(uuid7()), rows[2]["partition_key"], str(uuid7())))
        cur.execute("INSERT INTO outbox_cleaner_schedule (cron_expression) VALUES ('0 0 */3 * * *')")
    conn.commit()

    lock_cols = list(OUTBOX_LOCK_COLUMNS)
    before = {
        "outbox": snapshot(db, "outbox", CRATE_OUTBOX_COLUMNS),
        "outbox_lock": snapshot(db, "outbox_lock", lock_cols),
        "outbox_cleaner_schedule": snapshot(db, "outbox_cleaner_schedule",
                                            ["cron_expression", "last_execution"]),
    }
    filenodes = dict(db.query("SELECT relname, pg_relation_filenode(oid) FROM pg_class WHERE relname"
                              " IN ('outbox', 'outbox_lock', 'outbox_cleaner_schedule')"))
    crate_indexes = {t: index_defs(db, t) for t in ("outbox", "outbox_lock")}
    assert len(crate_indexes["outbox"]) == 6 and len(crate_indexes["outbox_lock"]) == 5

    res = migrate(db)
    assert_ok(res)

    # nothing the crate wrote was touched: same rows, same place, same transaction, same tables
    assert snapshot(db, "outbox", CRATE_OUTBOX_COLUMNS) == before["outbox"]
    assert snapshot(db, "outbox_lock", lock_cols) == before["outbox_lock"]
    assert snapshot(db, "outbox_cleaner_schedule", ["cron_expression", "last_execution"]) == \
        before["outbox_cleaner_schedule"]
    assert dict(db.query("SELECT relname, pg_relation_filenode(oid) FROM pg_class WHERE relname"
                         " IN ('outbox', 'outbox_lock', 'outbox_cleaner_schedule')")) == filenodes, \
        "a table was rewritten"
    for table, defs in crate_indexes.items():
        now_defs = index_defs(db, table)
        assert {k: now_defs.get(k) for k in defs} == defs, f"a crate index on {table} changed"

    # the values the test inserted are what is stored (the snapshot compared like with like)
    stored = {r["idempotent_key"]: r for r in db.outbox()}
    for r in rows:
        s = stored[r["idempotent_key"]]
        assert (s["partition_key"], s["destinations"], s["headers"], s["payload"], s["attempts"],
                s["created_at"], s["process_after"], s["processed_at"]) == \
               (r["partition_key"], r["destinations"], r["headers"], r["payload"], r["attempts"],
                r["created_at"], r["process_after"], r["processed_at"])
        # the new columns are NULL on the crate's rows
        assert {c: s[c] for c in NEW_OUTBOX_COLUMNS} == dict.fromkeys(NEW_OUTBOX_COLUMNS)

    assert_schema_complete(db)

    # a new row written the crate's way wakes a listener with its partition key
    listener = listen(db)
    part = str(uuid7())
    db.execute("INSERT INTO outbox (idempotent_key, partition_key, destinations, headers, payload,"
               " created_at, process_after) VALUES (%s, %s, %s::jsonb, NULL, %s, now(), now())",
               (str(uuid7()), part,
                json.dumps([{"url": "http://127.0.0.1:9/success",
                             "headers": {"Content-Type": "application/json"}, "method": None}]),
                '{"foo":"bar"}'))
    assert notifications_until(listener, send_barrier(db)) == [part]


def test_rows_written_before_the_upgrade_are_delivered(empty_db, sink, relay):
    """Pending rows the crate wrote before the migration go out once the relay runs; the
    processed row and the not-yet-due row do not."""
    db = empty_db
    db.execute(CRATE_SQL.read_text())
    now = dt.datetime.now(dt.timezone.utc)
    part = str(uuid7())
    json_headers = {"Content-Type": "application/json"}
    rows = [
        ("post", part, [{"url": sink.url("/post"), "headers": json_headers, "method": None}], 0, None, None),
        ("put", part, [{"url": sink.url("/put"), "headers": {**json_headers, "X-Env": "{{OBR_TEST_ENV_VALUE}}"},
                        "method": "put"}], 0, None, None),
        ("retried", str(uuid7()), [{"url": sink.url("/retried"), "headers": None, "method": None}], 3, None, None),
        ("done", str(uuid7()), [{"url": sink.url("/done"), "headers": None, "method": None}], 1, now, None),
        ("later", str(uuid7()), [{"url": sink.url("/later"), "headers": None, "method": None}], 0, None,
         now + dt.timedelta(hours=1)),
    ]
    keys = {}
    conn = db.conn(autocommit=False)
    with conn.cursor() as cur:
        for i, (name, pk, dests, attempts, processed_at, process_after) in enumerate(rows):
            keys[name] = str(uuid7())
            created = now - dt.timedelta(seconds=10 - i)
            cur.execute(
                "INSERT INTO outbox (idempotent_key, partition_key, destinations, headers, payload,"
                " attempts, created_at, process_after, processed_at)"
                " VALUES (%s, %s, %s::jsonb, NULL, %s, %s, %s, %s, %s)",
                (keys[name], pk, json.dumps(dests), json.dumps({"row": name}), attempts, created,
                 process_after or created, processed_at))
    conn.commit()
    assert_ok(migrate(db))

    r = relay(db, OBR_TEST_ENV_VALUE="from-env")
    recs = sink.wait_for_count(3, timeout=20)
    by_path = {rec["path"]: rec for rec in recs}
    assert set(by_path) == {"/post", "/put", "/retried"}, [rec["path"] for rec in recs]
    assert [rec["path"] for rec in recs if rec["path"] in ("/post", "/put")] == ["/post", "/put"], \
        "one partition is delivered in order"
    assert by_path["/post"]["method"] == "POST" and by_path["/put"]["method"] == "PUT"
    for name in ("post", "put", "retried"):
        rec = by_path["/" + name]
        assert rec["body"] == json.dumps({"row": name})
        assert [v for k, v in rec["headers"] if k.lower() == "x-idempotent-key"] == [keys[name]]
    assert [v for k, v in by_path["/put"]["headers"] if k == "X-Env"] == ["from-env"]

    wait_until(lambda: db.scalar("SELECT count(*) FROM outbox WHERE processed_at IS NOT NULL") == 4,
               10, "the three delivered rows to be marked processed")
    assert r.stop() == 0
    assert db.scalar("SELECT processed_at IS NULL FROM outbox WHERE idempotent_key = %s", (keys["later"],))
    assert sink.count() == 3, "the processed and the future row were not sent"


def test_migrate_parks_pending_rows_whose_timestamps_are_infinite(empty_db):
    """A crate database may hold rows with process_after or created_at = 'infinity' or
    '-infinity', which no statement can schedule. migrate (007) parks the pending ones with a
    last_error naming the column and its value, leaves every other row as it was (processed
    rows, good rows, extreme finite values), and from then on such rows are refused at INSERT;
    extreme finite values still go in. Running it again changes nothing."""
    db = empty_db
    db.execute(CRATE_SQL.read_text())
    dests = json.dumps([{"url": "http://127.0.0.1:9/x"}])
    rows = {  # name: (created_at, process_after, processed_at)
        "pa_inf": ("now()", "'infinity'", "NULL"),
        "pa_neg": ("now()", "'-infinity'", "NULL"),
        "ca_inf": ("'infinity'", "now()", "NULL"),
        "ca_neg": ("'-infinity'", "now()", "NULL"),
        "done_inf": ("now()", "'infinity'", "now()"),
        "good": ("now()", "now()", "NULL"),
        "max": ("'4713-01-01 00:00:00+00 BC'", "'294276-12-31 23:59:59+00'", "NULL"),
        "min": ("'294276-12-31 23:59:59+00'", "'4713-01-01 00:00:00+00 BC'", "NULL"),
    }
    keys = {name: str(uuid7()) for name in rows}
    for name, (created, after, processed) in rows.items():
        db.execute("INSERT INTO outbox (idempotent_key, partition_key, destinations, payload, created_at,"
                   f" process_after, processed_at) VALUES (%s, %s, %s::jsonb, %s, {created}, {after}, {processed})",
                   (keys[name], str(uuid7()), dests, name))
    def table():  # as JSON: Python's datetime holds neither infinity nor year 294276
        return {r["idempotent_key"]: r for (r,) in db.query("SELECT to_jsonb(o) FROM outbox o")}

    before = table()

    res = migrate(db)
    assert_ok(res)
    assert re.search(r"parked 4 pending row", res.stdout + res.stderr), res.stdout + res.stderr
    after = table()
    for name, column, value in (("pa_inf", "process_after", "infinity"), ("pa_neg", "process_after", "-infinity"),
                                ("ca_inf", "created_at", "infinity"), ("ca_neg", "created_at", "-infinity")):
        row = after[keys[name]]
        assert row["dead_at"] is not None and row["processed_at"] is None, (name, row)
        assert row["last_error"].startswith(f"malformed: {column} is {value},"), (name, row["last_error"])
        assert "requeue" in row["last_error"]
        # nothing else changed
        assert {k: row[k] for k in before[keys[name]]} == before[keys[name]], name
    for name in ("done_inf", "good", "max", "min"):
        row = after[keys[name]]
        assert {k: row[k] for k in before[keys[name]]} == before[keys[name]], name
        assert row["dead_at"] is None and row["last_error"] is None, name
    assert_schema_complete(db)

    # new rows with an infinite timestamp are refused, naming the constraint
    for column, value in (("process_after", "infinity"), ("created_at", "-infinity")):
        with pytest.raises(psycopg2.errors.CheckViolation, match=f"outbox_{column}_finite"):
            db.execute(f"INSERT INTO outbox (idempotent_key, partition_key, destinations, payload, {column})"
                       " VALUES (%s, %s, %s::jsonb, 'x', %s)", (str(uuid7()), str(uuid7()), dests, value))
    # extreme finite values are fine, and so is updating an old bad row that is not pending
    db.execute("INSERT INTO outbox (idempotent_key, partition_key, destinations, payload, created_at, process_after)"
               " VALUES (%s, %s, %s::jsonb, 'x', '4714-11-24 00:00:00+00 BC', '294276-12-31 23:59:59.999999+00')",
               (str(uuid7()), str(uuid7()), dests))
    db.execute("UPDATE outbox SET attempts = attempts + 1 WHERE idempotent_key = %s", (keys["pa_inf"],))

    second = table()
    assert_ok(migrate(db))
    assert table() == second


# ---- failures ---------------------------------------------------------------------------------


def test_the_due_time_index_can_never_serve_a_partitions_heads(db):
    """The relay reads a partition's head rows (HEADS_OF in src/relay/db/store.c: one partition's
    pending rows in delivery order, FOR SHARE) through an index on partition_key. With 004's
    due-time index, whose predicate was the same as the partition index's, the planner could
    instead scan every pending row through the due-time index and filter on partition_key;
    with statistics from before a backlog it did (sql/005: 2 ms instead of 0.3 ms per
    partition in the benchmark's stale-statistics drain). 005's predicate is not implied by
    that query, so even with every other way in taken away (the partition indexes dropped in a
    rolled-back transaction, sequential scans discouraged) the due-time index is not used.
    The due-time queries do use it."""
    conn = db.conn(autocommit=False)
    try:
        with conn.cursor() as cur:
            cur.execute("DROP INDEX outbox_pending_by_partition")
            cur.execute("DROP INDEX idx_outbox_by_part_key_and_proc_after_and_attempt_and_proc_at")
            cur.execute("SET LOCAL enable_seqscan = off")
            cur.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            cur.execute("PREPARE heads(uuid, bigint) AS SELECT o.idempotent_key FROM outbox o"
                        " WHERE o.partition_key = $1 AND o.processed_at IS NULL AND o.dead_at IS NULL"
                        " ORDER BY o.process_after, o.created_at, o.idempotent_key LIMIT $2 FOR SHARE OF o")
            cur.execute("EXPLAIN (COSTS OFF) EXECUTE heads('10000000-0000-4000-8000-000000000007', 32)")
            heads = "\n".join(r[0] for r in cur.fetchall())
            cur.execute("EXPLAIN (COSTS OFF) SELECT min(greatest(process_after, coalesce(retry_after, process_after)))"
                        "  FROM outbox WHERE processed_at IS NULL AND dead_at IS NULL AND process_after IS NOT NULL"
                        "   AND greatest(process_after, coalesce(retry_after, process_after)) > now()")
            due = "\n".join(r[0] for r in cur.fetchall())
    finally:
        conn.rollback()
        conn.close()
    assert "outbox_pending_due" not in heads and "outbox_pending_by_due" not in heads, heads
    assert "outbox_pending_due" in due, due


def test_migrate_fails_clearly_when_the_database_is_unreachable():
    lock = PortLock()  # reserved, and nothing listens on it
    try:
        # migrate() gives up after 60 s (subprocess timeout): a migrate that hangs fails there
        res = migrate(f"postgresql://postgres@127.0.0.1:{lock.port}/nowhere?connect_timeout=5")
    finally:
        lock.release()
    out = res.stdout + res.stderr
    assert res.returncode != 0, f"migrate succeeded against a closed port:\n{out}"
    assert re.search(r"connect", out, re.I) and str(lock.port) in out, \
        f"the message should say it could not connect, and to what:\n{out}"


def test_migrate_fails_without_a_database():
    res = migrate(None)
    assert res.returncode != 0
    assert "DATABASE_URL" in res.stdout + res.stderr


def test_migrate_refuses_an_incompatible_outbox_table(empty_db):
    db = empty_db
    db.execute("CREATE TABLE outbox (idempotent_key uuid PRIMARY KEY, partition_key text NOT NULL,"
               " destinations jsonb NOT NULL, headers jsonb, payload text NOT NULL,"
               " attempts int NOT NULL DEFAULT 0, created_at timestamptz NOT NULL DEFAULT now(),"
               " process_after timestamptz NOT NULL DEFAULT now(), processed_at timestamptz)")
    res = migrate(db)
    out = res.stdout + res.stderr
    assert res.returncode != 0, f"migrate accepted outbox.partition_key text:\n{out}"
    assert "partition_key" in out, f"the message should name the column:\n{out}"
    # and it left nothing half-done
    assert columns(db, "outbox")["partition_key"] == ("text", True)
    assert "last_error" not in columns(db, "outbox")
    assert db.scalar("SELECT to_regclass('outbox_lock') IS NULL")
    assert db.scalar("SELECT count(*) FROM pg_trigger WHERE tgname = 'outbox_notify'") == 0


def test_a_failing_migration_fails_migrate_and_rolls_back(empty_db):
    """outbox_lock exists without processed_at: the partial unique index of 001 cannot be built."""
    db = empty_db
    db.execute("CREATE TABLE outbox_lock (partition_key uuid NOT NULL, lock_id uuid NOT NULL)")
    res = migrate(db)
    out = res.stdout + res.stderr
    assert res.returncode != 0, f"migrate succeeded although a migration failed:\n{out}"
    assert "processed_at" in out, f"the database's error should be in the message:\n{out}"
    assert db.scalar("SELECT to_regclass('outbox') IS NULL"), "001 was half applied"
    if not db.scalar("SELECT to_regclass('outbox_relay_schema_version') IS NULL"):
        assert db.scalar("SELECT count(*) FROM outbox_relay_schema_version") == 0
    # once the obstacle is gone, migrate succeeds
    db.execute("DROP TABLE outbox_lock")
    assert_ok(migrate(db))
    assert_schema_complete(db)


def blocker_conn(db):
    """A session that reads outbox in a transaction it keeps open: it holds ACCESS SHARE on
    outbox, which every ALTER TABLE outbox waits for."""
    conn = db.cluster.connect(db.name, autocommit=False, application_name="obr-test long transaction")
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM outbox")
        cur.execute("SELECT pg_backend_pid()")
        pid = cur.fetchone()[0]
    return conn, pid


def insert_crate_row(db):
    """A writer of outbox (crate columns), given 20 s: without lock_timeout on the migration
    it would wait behind the queued ALTER TABLE until the long transaction ends."""
    conn = db.cluster.connect(db.name, autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute("SET statement_timeout = '20s'")
            cur.execute("INSERT INTO outbox (idempotent_key, partition_key, destinations, payload)"
                        " VALUES (%s, %s, '[]', 'x')", (str(uuid7()), str(uuid7())))
    finally:
        conn.close()


def test_migrate_behind_a_long_transaction_does_not_hold_up_writers(empty_db, tmp_path):
    """A crate database (migrate must ALTER outbox) with a long transaction on outbox: the
    migration's lock waits are bounded by lock_timeout, so a writer gets through meanwhile;
    migrate retries, names the blocking session, and succeeds once it is gone."""
    db = empty_db
    db.execute(CRATE_SQL.read_text())
    blocker, blocker_pid = blocker_conn(db)
    log = tmp_path / "migrate.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([str(require_relay()), "migrate"], env=relay_env(db.url),
                                stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: db.scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
                                     " AND wait_event_type = 'Lock'", (db.name,)) > 0,
                   20, "migrate to wait for a lock on outbox")
        insert_crate_row(db)
        wait_until(lambda: "retrying" in log.read_text() or proc.poll() is not None, 30,
                   "migrate to give up its first attempt")
        assert proc.poll() is None, "migrate ended while the long transaction was still open"
    finally:
        blocker.rollback()
        blocker.close()
    proc.wait(timeout=120)
    out = log.read_text()
    assert proc.returncode == 0, out
    assert re.search(r"a lock was not granted within lock_timeout \(2s\), attempt 1 of 10, retrying", out), out
    assert f"held by: pid {blocker_pid} (user postgres, application \"obr-test long transaction\"" in out, out
    assert_schema_complete(db)


def test_migrate_gives_up_naming_the_blocker(empty_db):
    """The long transaction outlasts every attempt (lock_timeout from the URL, 100 ms):
    migrate fails with a message naming the session, and changes nothing."""
    db = empty_db
    db.execute(CRATE_SQL.read_text())
    blocker, blocker_pid = blocker_conn(db)
    try:
        res = migrate(db.url + "?options=-c%20lock_timeout%3D100ms")
    finally:
        blocker.rollback()
        blocker.close()
    assert res.returncode == 1, res.stdout + res.stderr
    out = res.stdout + res.stderr
    assert re.search(r"gave up after 10 attempts: a lock on the outbox tables was not granted within"
                     r" lock_timeout \(100ms\); held by: pid " + str(blocker_pid), out), out
    assert "outbox (AccessShareLock)" in out, out
    assert sorted(columns(db, "outbox")) == sorted(CRATE_OUTBOX_COLUMNS)
    assert db.scalar("SELECT to_regclass('outbox_relay_schema_version') IS NULL")
