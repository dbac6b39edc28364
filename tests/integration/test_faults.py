"""Faults that try hard to break at-least-once, per-partition order and no loss: a crash loop
of SIGKILLed instances, database restarts and shutdowns, killed backends, exhausted connection
slots, broken endpoints next to a healthy one, and the listen connection's hold on the
notification queue.

Randomness is seeded: every test prints its seed, and OBR_TEST_SEED=<session seed> replays a
run. OBR_SOAK=1 selects the long crash-loop soak (skipped otherwise).
"""

import collections
import contextlib
import dataclasses
import json
import os
import random
import re
import time
import zlib

import psycopg2
import pytest

from conftest import (PortLock, RelayProcess, relay_env, require_relay, sanitizer_findings, spawn,
                      uuid7, wait_until)
from relay_util import (CLAIM_APP, HOUR_MS, LISTEN_APP, WORK_APP, SequenceWriter, assert_sequences,
                        by_key, db_retry, env, http_dest, insert, key_of, keys, metric, ready_code,
                        relay_backends, rows_by_key, sequence_report, wait_processed,
                        wait_ready_code)

SESSION_SEED = int(os.environ.get("OBR_TEST_SEED") or random.SystemRandom().randrange(2**32))


def seeded(request) -> random.Random:
    """The test's random source, derived from the session seed and the test's name."""
    seed = SESSION_SEED ^ zlib.crc32(request.node.name.encode())
    print(f"\n{request.node.name}: seed {seed} (replay with OBR_TEST_SEED={SESSION_SEED})")
    return random.Random(seed)


def wait_all_processed(db, expected: int, timeout: float) -> None:
    """Waits until the outbox holds `expected` rows, all processed; on timeout names some of
    the rows still pending."""
    def done():
        n, pending = db_retry(lambda: db.query(
            "SELECT count(*), count(*) FILTER (WHERE processed_at IS NULL) FROM outbox")[0])
        assert n == expected, f"the outbox holds {n} rows, {expected} were written"
        return pending == 0

    try:
        wait_until(done, timeout, f"all {expected} rows to be processed", interval=0.1)
    except TimeoutError as e:
        left = db.query_dicts("SELECT idempotent_key, partition_key, attempts, last_error, dead_at"
                              " FROM outbox WHERE processed_at IS NULL LIMIT 5")
        leases = db.query_dicts("SELECT partition_key, lock_id, processed_at, processing_until,"
                                " processing_until > now() AS live FROM outbox_lock WHERE"
                                " partition_key IN (SELECT partition_key FROM outbox WHERE"
                                " processed_at IS NULL)")
        raise AssertionError(f"{e}; still pending (up to 5): {left}; their leases: {leases}") from None


def check_delivery(db, sink, writer, what: str, allow_going_back: bool = False) -> dict:
    """Everything the writer committed is processed, arrived at the sink (nothing else did),
    carries the right key, and arrived in order per partition (see assert_sequences). Returns
    the sequence report."""
    written, counts = writer.snapshot()
    wait_all_processed(db, len(written), timeout=60)
    records = sink.requests()
    got = by_key(records)
    want = {r["idempotent_key"]: r for r in written}
    missing = [k for k in want if k not in got]
    extra = [k for k in got if k not in want]
    assert not missing, f"{what}: {len(missing)} rows never arrived at the sink, e.g. {missing[:5]}"
    assert not extra, f"{what}: {len(extra)} unexpected requests, e.g. {extra[:5]}"
    for k, recs in got.items():  # each request carries its own row's key and payload
        assert all(r["body"] == want[k]["payload"] for r in recs), (k, recs[0]["body"], want[k]["payload"])
    report = sequence_report(records)
    assert_sequences(report, counts, f"{what}: ", allow_going_back)
    return report


def tcp_ports_to(pid: int, remote_port: int) -> set[int]:
    """Local ports of process pid's TCP connections to remote_port (from /proc), so a request
    the sink recorded (its peer_port) can be traced to the instance that sent it."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if cols[9] in inodes and int(cols[2].rsplit(":", 1)[1], 16) == remote_port:
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


# ---- 1. the crash loop -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CrashLoop:
    parts: int     # partitions
    rounds: int    # writer transactions
    per_round: int  # rows per transaction, each of another random partition
    kills: int     # SIGKILLs, each followed by a restart
    gap: tuple     # seconds between kills, uniform in [a, b]
    write_s: float  # the writer spreads its rounds over this long


SHORT = CrashLoop(parts=200, rounds=1000, per_round=20, kills=24, gap=(0.3, 0.9), write_s=18)
SOAK = CrashLoop(parts=1000, rounds=15000, per_round=20, kills=300, gap=(0.3, 2.5), write_s=420)
MAX_IN_FLIGHT = 32
LEASE_MS = 2000
SINK_DELAY_MS = 30


@pytest.mark.parametrize("size", [
    pytest.param(SHORT, id="short"),
    pytest.param(SOAK, id="soak", marks=pytest.mark.skipif(
        os.environ.get("OBR_SOAK") != "1",
        reason="the crash-loop soak (300,000 rows, 1,000 partitions, 300 kills, ~8 min) runs"
               " only with OBR_SOAK=1")),
])
def test_crash_loop_keeps_order_and_loses_nothing(db, sink, relay, request, tmp_path, size):
    """Three instances (2 s leases, fallback poll every 250 ms, 32 partitions in flight each)
    deliver a stream of rows over many partitions (answers take 30 ms, so requests are always
    in flight) while a writer keeps inserting; a random instance is SIGKILLed at random moments
    and restarted at once, again and again.

    Afterwards: every row is processed (once in the database: attempts 1, no error, none
    parked) and arrived at the sink; per partition the arrivals never go back (a row may
    repeat only right after itself, see relay_util.sequence_report) and the first arrivals are
    the whole sequence; every repeated row was first received before a kill and again after
    it (in flight at that kill), or else a relay logged losing leases it held; the repeats one
    kill caused (each traced by the TCP port of the arrival before it to the killed instance) are at
    most OUTBOX_MAX_IN_FLIGHT, and all repeats at most OUTBOX_MAX_IN_FLIGHT x kills."""
    rng = seeded(request)
    sink.rules([{"prefix": "/crash/", "delay_ms": SINK_DELAY_MS}])
    settings = env(OUTBOX_LEASE_MS=LEASE_MS, OUTBOX_POLL_INTERVAL_MS=250,
                   OUTBOX_MAX_IN_FLIGHT=MAX_IN_FLIGHT, OUTBOX_LOG_LEVEL="info")
    t_start = time.monotonic()
    live = [relay(db, env=settings) for _ in range(3)]
    relays_started = list(live)
    parts = [str(uuid7()) for _ in range(size.parts)]
    # The writer keeps its pace until the last kill (and at least size.rounds rounds), so every
    # kill strikes while rows are written, however long the restarts take on a loaded machine.
    writer = SequenceWriter(db, sink.base_url, parts, "crash", max_rounds=size.rounds * 100,
                            interval=size.write_s / size.rounds, parts_per_round=size.per_round,
                            deadline_s=size.write_s * 100, seed=rng.randrange(2**32)).start()
    kills = []  # {"before", "after": wall clock around the SIGKILL, "ports": the victim's
    #              connections to the sink, "delivered": sink count}
    for _ in range(size.kills):
        # a random moment: the relays deliver meanwhile (this sleep waits for no condition; it
        # picks when to strike)
        time.sleep(rng.uniform(*size.gap))
        # the stream flows through the kills: something was delivered since the last one (a
        # kill can leave partitions leased by the dead instance for a lease time, so delivery
        # may pause; a stall of 15 lease times is a defect)
        last = kills[-1]["delivered"] if kills else 0
        wait_until(lambda: sink.count() > last, 15 * LEASE_MS / 1000,
                   f"delivery to go on after kill {len(kills)}")
        victim = live.pop(rng.randrange(len(live)))
        assert victim.alive(), f"relay {victim.pid} exited on its own:\n{victim.log()[-2000:]}"
        k = {"delivered": sink.count(), "ports": tcp_ports_to(victim.pid, sink.port),
             "before": time.time()}
        victim.kill()
        k["after"] = time.time()
        kills.append(k)
        live.append(relay(db, env=settings))
        relays_started.append(live[-1])
    kill_phase = time.monotonic() - t_start
    assert writer.thread.is_alive(), "the writer stopped before the last kill"
    writer.wait_rounds(size.rounds, timeout=size.write_s * 2 + 60)
    writer.stop()
    written, counts = writer.snapshot()
    assert len(written) >= size.rounds * size.per_round

    report = check_delivery(db, sink, writer, "crash loop")
    drained = time.monotonic() - t_start
    stats = db.query_dicts("SELECT max(attempts) AS max_attempts, count(*) FILTER (WHERE dead_at IS"
                           " NOT NULL) AS parked, count(*) FILTER (WHERE last_error IS NOT NULL)"
                           " AS with_error FROM outbox")[0]
    assert stats == {"max_attempts": 1, "parked": 0, "with_error": 0}, stats

    # Every repeat (an arrival after the row's previous one) is charged to the kill that caused
    # it: the kill whose victim held the TCP connection the previous arrival came on, else the
    # first kill at or after the previous arrival (the sink may record a request that was on the
    # wire a moment after its sender died: 250 ms of slack). A row that two kills in a row caught
    # in flight is charged once to each. A repeat with no kill between the two arrivals was not
    # caused by a kill: it is allowed only when a relay logged losing leases it still held (a
    # live instance starved past OUTBOX_LEASE_MS, taken over by another), and counted.
    key_at = {(row["partition_key"], json.loads(row["payload"])["s"]): row["idempotent_key"]
              for row in written}
    ports_of = collections.defaultdict(list)
    for rec in sorted(sink.requests(), key=lambda r: r["seq"]):
        ports_of[key_of(rec)].append(rec["peer_port"])
    per_kill = collections.Counter()
    lease_loss, by_port, traced = [], 0, []
    for p, s, times in report["duplicates"]:
        key = key_at[(p, s)]
        for i in range(len(times) - 1):
            t1, t2 = times[i] / 1e6, times[i + 1] / 1e6
            port = ports_of[key][i]
            owner = [j for j, k in enumerate(kills)
                     if port in k["ports"] and t1 <= k["after"] + 1.0 and k["before"] <= t2]
            after = [j for j, k in enumerate(kills) if t1 <= k["after"] + 0.25 and k["before"] <= t2]
            charged = owner[0] if owner else (after[0] if after else None)
            by_port += bool(owner)
            traced.append({"partition": p, "s": s, "key": key, "times_us": times[i:i + 2], "port": port,
                           "kill": charged, "by_port": bool(owner)})
            if charged is None:
                lease_loss.append((p, s, times))
            else:
                per_kill[charged] += 1
    # for post-mortems: every kill and every repeat, in the test's temporary directory
    (tmp_path / "crash-loop.json").write_text(json.dumps(
        {"kills": [{**k, "ports": sorted(k["ports"])} for k in kills], "repeats": traced}, indent=1))
    takeovers = sum(len(re.findall(r"expired and was taken over|was lost to another instance", x.log()))
                    for x in relays_started)
    dup = report["duplicate_count"]
    worst = max(per_kill.values(), default=0)
    print(f"crash loop: {len(written)} rows over {size.parts} partitions, {len(kills)} kills in"
          f" {kill_phase:.1f}s, all delivered after {drained:.1f}s; {dup} duplicates"
          f" ({dup / len(kills):.1f} per kill, at most {worst} for one kill, {by_port} traced by"
          f" TCP port; bound {MAX_IN_FLIGHT} per kill); {len(lease_loss)} repeats not caused by a"
          f" kill, {takeovers} leases of live instances taken over; per kill:"
          f" {[per_kill[i] for i in range(len(kills))]}")
    assert not lease_loss or takeovers, (
        f"{len(lease_loss)} rows were received twice without a kill in between and no relay"
        f" lost a lease, e.g. {lease_loss[:3]}")
    assert dup > 0, "no row was repeated: the kills hit no request in flight"
    assert worst <= MAX_IN_FLIGHT, f"one kill repeated {worst} rows: {per_kill}"
    assert dup <= MAX_IN_FLIGHT * len(kills)
    for r in live:
        assert r.alive(), r.log()[-2000:]
    for r in live:
        assert r.stop() == 0


@contextlib.contextmanager
def unwatched_relay(db, tmp_path, **env_vars):
    """A relay started outside the `relay` fixture, for a test marked xfail: the fixture fails
    its teardown on a sanitizer report, an error that xfail does not cover; the test checks
    the log itself (conftest.sanitizer_findings)."""
    port = PortLock()
    child_env = relay_env(db.relay_url, {**env_vars, "OUTBOX_LISTEN_ADDR": f"127.0.0.1:{port.port}"})
    log = tmp_path / "relay-unwatched.log"
    r = RelayProcess(spawn([str(require_relay()), "run"], log=log, env=child_env), log, child_env)
    try:
        r.wait_for_log("relay ready")
        yield r
    finally:
        with contextlib.suppress(AssertionError):
            r.stop(timeout=10)
        port.release()


# ---- 2. database faults ----------------------------------------------------------------------


def relay_log_since(r, mark: int) -> str:
    return r.log()[mark:]


def reconnect_delays(log: str, conn: str = "work") -> list[int]:
    """The delays of the "<conn> connection lost, reconnecting in N ms" lines, in order."""
    return [int(m) for m in re.findall(rf"outbox-relay {conn} connection lost, reconnecting in (\d+) ms", log)]


def test_postgres_restarted_and_shut_down_repeatedly(db, sink, relay, pg_cluster, request):
    """Five cycles while a writer keeps inserting (rows in flight at every stop: answers take
    20 ms): PostgreSQL restarted (fast shutdown, start at once) and shut down (fast) and left
    down until the relay has failed to reconnect twice, alternately. Each time /ready turns
    503 while the database is away and 200 once the relay is back by itself; the relay never
    exits. Afterwards nothing is lost and the order holds in every partition (a fast shutdown
    loses no commit: not even a repeat is expected, though one would be allowed)."""
    rng = seeded(request)
    sink.rules([{"prefix": "/pgdown/", "delay_ms": 20}])
    r = relay(db, env=env(OUTBOX_LOG_LEVEL="info"))
    parts = [str(uuid7()) for _ in range(20)]
    writer = SequenceWriter(db, sink.base_url, parts, "pgdown", max_rounds=5000, interval=0.02,
                            parts_per_round=5, deadline_s=150, seed=rng.randrange(2**32)).start()
    cycles = [0, 2, 0, 2, 0]  # failed reconnects to wait for while the server is down
    outages = []
    try:
        for failed_attempts in cycles:
            seen = sink.count()
            wait_until(lambda: sink.count() >= seen + 20, 30, "delivery to go on")
            mark = len(r.log())
            t0 = time.monotonic()
            pg_cluster.stop(mode="fast")
            wait_ready_code(r, 503, timeout=10)
            if failed_attempts:  # down for a while: the relay retries against a dead server
                r.wait_for_log(r"(?s)(work connection lost, reconnecting.*){%d}" % (failed_attempts + 1),
                               timeout=20, start=mark)
                assert ready_code(r) == 503
            pg_cluster.start()
            wait_ready_code(r, 200, timeout=30)
            outages.append(round(time.monotonic() - t0, 2))
            assert r.alive()
    finally:
        if not pg_cluster.running:
            pg_cluster.start()
    seen = sink.count()
    wait_until(lambda: sink.count() >= seen + 20, 30, "delivery to go on after the last cycle")
    writer.stop()
    report = check_delivery(db, sink, writer, "postgres restarts")
    reconnects = metric(r, "outbox_relay_reconnects_total")
    print(f"postgres restarts: {len(writer.written)} rows, outages {outages} s, "
          f"{report['duplicate_count']} duplicates, {writer.retries} writer retries,"
          f" {reconnects:.0f} relay reconnects")
    assert reconnects >= 3 * len(cycles)  # listen, claim and work each time
    assert r.alive()
    assert r.stop() == 0


@pytest.mark.parametrize("synchronous_commit", ["true", "false"])
def test_postgres_crashes_repeatedly(db, sink, relay, pg_cluster, request, synchronous_commit):
    """Three PostgreSQL crashes (immediate shutdown: no checkpoint, commits not yet flushed are
    lost) while a writer keeps inserting; the relay reconnects by itself each time, /ready
    503 then 200, nothing is lost.

    With OUTBOX_SYNCHRONOUS_COMMIT=true a result or lease change the relay was told is
    committed survives the crash: order holds strictly (a row may repeat only right after
    itself), and the catch-up scan after the reconnect finds everything (no fallback poll).
    With the default false, what the relay committed in the last moments before the crash can
    be lost (README, Design notes): a result (the row is sent again, possibly after newer rows
    of its partition) or a lease release (the lease comes back, and the partition waits for
    it to expire and for the fallback poll: hence a 2 s lease and a 1 s poll here). Every row
    still arrives, first arrivals in order (what a receiver that deduplicates on
    x-idempotent-key sees); the repeats are printed."""
    rng = seeded(request)
    sink.rules([{"prefix": "/crashdb/", "delay_ms": 20}])
    settings = env(OUTBOX_LOG_LEVEL="info", OUTBOX_SYNCHRONOUS_COMMIT=synchronous_commit)
    if synchronous_commit == "false":
        settings.update(OUTBOX_LEASE_MS=2000, OUTBOX_POLL_INTERVAL_MS=1000)
    r = relay(db, env=settings)
    parts = [str(uuid7()) for _ in range(20)]
    writer = SequenceWriter(db, sink.base_url, parts, "crashdb", max_rounds=5000, interval=0.02,
                            parts_per_round=5, deadline_s=150, seed=rng.randrange(2**32)).start()
    crashes = []
    try:
        for _ in range(3):
            seen = sink.count()
            wait_until(lambda: sink.count() >= seen + 30, 30, "delivery to go on")
            crashes.append(time.time())
            pg_cluster.stop(mode="immediate")
            wait_ready_code(r, 503, timeout=10)
            pg_cluster.start()
            wait_ready_code(r, 200, timeout=30)
            assert r.alive()
    finally:
        if not pg_cluster.running:
            pg_cluster.start()
    seen = sink.count()
    wait_until(lambda: sink.count() >= seen + 20, 30, "delivery to go on after the last crash")
    writer.stop()
    report = check_delivery(db, sink, writer, f"crashes (synchronous_commit={synchronous_commit})",
                            allow_going_back=synchronous_commit == "false")
    lost = r.log().count("was lost to another instance")
    print(f"postgres crashes, OUTBOX_SYNCHRONOUS_COMMIT={synchronous_commit}:"
          f" {len(writer.written)} rows, {report['duplicate_count']} duplicates,"
          f" {lost} leases 'lost to another instance' (there is none: lost in the crash),"
          f" {len(report['backwards'])} partitions where an older row came again after newer ones"
          f" {list(report['backwards'].values())[:5]}")
    # every repeat was first received before a crash and again after it
    for p, s, times in report["duplicates"]:
        assert any(times[0] <= c * 1e6 + 1e6 and c * 1e6 <= times[-1] for c in crashes), (p, s, times)
    assert r.alive()
    assert r.stop() == 0


def test_claim_backend_terminated_while_its_statement_runs(db, sink, tmp_path):
    """The claim connection's backend is terminated while the claim statement runs (it waits
    for a lock the test holds on outbox_lock): the relay handles the failed statement,
    reconnects, claims again and delivers the row; no sanitizer report."""
    with unwatched_relay(db, tmp_path, **env(OUTBOX_LOG_LEVEL="info")) as r:
        locker = db.conn(autocommit=False)
        with locker.cursor() as cur:
            # EXCLUSIVE: blocks the claim's writes, not the reads of the writers' trigger (sql/010)
            cur.execute("LOCK TABLE outbox_lock IN EXCLUSIVE MODE")
        mark = len(r.log())
        try:
            (row,) = insert(db, [{"destinations": [http_dest(sink.url("/mid-statement"))], "payload": "m"}])
            wait_until(lambda: [b for b in relay_backends(db, CLAIM_APP)
                                if b["wait_event_type"] == "Lock" and "obr_claim" in b["query"]],
                       10, "the claim to wait for the lock")
            db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s"
                       " AND application_name = %s", (db.name, CLAIM_APP))
            r.wait_for_log("claim connection lost", timeout=15, start=mark)
        finally:
            locker.rollback()
        r.wait_for_log("claim connection re-established", timeout=15, start=mark)
        wait_processed(db, [row["idempotent_key"]], timeout=15)
        log = r.log()
        assert not sanitizer_findings(log), "\n".join(sanitizer_findings(log)[:5])
        assert "claim statement failed" in log[mark:]
        assert r.alive()
        assert len(sink.requests(path="/mid-statement")) == 1
        assert r.stop() == 0


def test_relay_backends_terminated_repeatedly(db, sink, relay, request):
    """pg_terminate_backend on the relay's listen, claim or work connection, or all three, twelve
    times (at random) while rows flow: it reconnects by itself each time (new backends,
    /ready 200). Then all are terminated while the role may not connect (CONNECTION LIMIT 0):
    /ready says 503 until the limit is lifted, then 200. Nothing lost, order holds, the relay
    never exits."""
    rng = seeded(request)
    sink.rules([{"prefix": "/term/", "delay_ms": 10}])
    r = relay(db, env=env(OUTBOX_LOG_LEVEL="info"))
    parts = [str(uuid7()) for _ in range(20)]
    writer = SequenceWriter(db, sink.base_url, parts, "term", max_rounds=5000, interval=0.02,
                            parts_per_round=5, deadline_s=150, seed=rng.randrange(2**32)).start()
    apps = {"listen": [LISTEN_APP], "claim": [CLAIM_APP], "work": [WORK_APP],
            "all": [LISTEN_APP, CLAIM_APP, WORK_APP]}

    def pids(app):
        return {b["pid"] for b in relay_backends(db, app)}

    def terminate(target):
        old = {app: pids(app) for app in apps[target]}
        assert all(len(p) == 1 for p in old.values()), old
        for app in apps[target]:
            db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s"
                       " AND application_name = %s", (db.name, app))
        return old

    def replaced(old):
        """Each terminated connection has exactly one backend again, and it is a new one. One
        look per connection: the old backend may exit between two looks, and the relay notices
        only when it reads the EOF, so until a new backend shows up /ready may still say 200
        from before the loss."""
        assert r.alive(), f"the relay exited ({r.proc.returncode}):\n{r.log()[-3000:]}"
        now = {app: pids(app) for app in old}
        return all(len(now[app]) == 1 and not now[app] & old[app] for app in old)

    targets = [rng.choice(list(apps)) for _ in range(12)]
    try:
        for target in targets:
            seen = sink.count()
            wait_until(lambda: sink.count() >= seen + 10, 20, "delivery to go on")
            old = terminate(target)
            wait_until(lambda: replaced(old), 20, f"new {target} backends")
            wait_ready_code(r, 200, timeout=20)
        # the same with reconnecting refused for a while: /ready must say so
        mark = len(r.log())
        db.execute("ALTER ROLE outbox_relay CONNECTION LIMIT 0")
        terminate("all")
        wait_ready_code(r, 503, timeout=10)
        r.wait_for_log(r"(?s)(work connection lost, reconnecting.*){3}", timeout=20, start=mark)
        assert "too many connections for role" in relay_log_since(r, mark)
        assert ready_code(r) == 503
    finally:
        db.execute("ALTER ROLE outbox_relay CONNECTION LIMIT -1")
    wait_ready_code(r, 200, timeout=20)
    seen = sink.count()
    wait_until(lambda: sink.count() >= seen + 20, 30, "delivery to go on after the last cycle")
    writer.stop()
    report = check_delivery(db, sink, writer, "terminated backends")
    print(f"terminated backends: {targets} + all (blocked): {len(writer.written)} rows,"
          f" {report['duplicate_count']} duplicates,"
          f" {metric(r, 'outbox_relay_reconnects_total'):.0f} relay reconnects")
    assert r.alive()
    assert r.stop() == 0


@pytest.mark.parametrize("how", ["role_connection_limit", "max_connections"])
def test_no_connection_slot_at_start(db, sink, relay, pg_cluster, how):
    """The relay starts while it cannot get a connection: its role's CONNECTION LIMIT is 0, or
    every slot of max_connections a non-superuser may use is taken by idle connections. It
    keeps retrying with exponential backoff (each delay in [b/2, b], b doubling from 100 ms:
    every delay at least twice the one two attempts before), is alive and not ready (/ready
    503) meanwhile; once slots are free it becomes ready by itself and delivers the rows
    written before and during the outage, in order."""
    fillers = []
    parts = [str(uuid7()) for _ in range(10)]
    writer = SequenceWriter(db, sink.base_url, parts, "slots", max_rounds=2000, interval=0.02,
                            parts_per_round=3, deadline_s=120).start()
    writer.wait_rounds(5)  # its connection is open before the slots run out
    try:
        if how == "role_connection_limit":
            db.execute("ALTER ROLE outbox_relay CONNECTION LIMIT 0")
        else:
            max_conn, reserved = (int(db.scalar(f"SHOW {s}"))
                                  for s in ("max_connections", "superuser_reserved_connections"))
            free = max_conn - reserved - db.scalar("SELECT count(*) FROM pg_stat_activity"
                                                   " WHERE backend_type = 'client backend'")
            assert 0 < free <= max_conn
            for _ in range(free):
                fillers.append(pg_cluster.connect("postgres"))
        with pytest.raises(psycopg2.OperationalError, match="too many connections|reserved"):
            psycopg2.connect(db.relay_url, connect_timeout=5).close()

        r = relay(db, ready=False, env=env(OUTBOX_LOG_LEVEL="info"))
        r.wait_for_log(r"(?s)(work connection lost, reconnecting.*){5}", timeout=20)
        assert r.alive()
        assert ready_code(r) == 503
        log = r.log()
        assert "relay ready" not in log
        assert re.search(r"too many connections for role|remaining connection slots are reserved", log), log[-2000:]
    finally:
        with contextlib.suppress(Exception):
            db.execute("ALTER ROLE outbox_relay CONNECTION LIMIT -1")
        for c in fillers:
            c.close()
    delays = reconnect_delays(r.log())
    assert all(0 < d <= 10000 for d in delays), delays
    assert all(delays[i + 2] >= 2 * delays[i] for i in range(len(delays) - 2)), delays
    r.wait_for_log("relay ready", timeout=30)
    wait_ready_code(r, 200, timeout=10)
    seen = sink.count()
    wait_until(lambda: sink.count() >= seen + 10, 30, "delivery after the slots were freed")
    writer.stop()
    report = check_delivery(db, sink, writer, how)
    print(f"{how}: reconnect delays {delays} ms; {len(writer.written)} rows,"
          f" {report['duplicate_count']} duplicates")
    assert report["duplicate_count"] == 0
    assert r.alive()
    assert r.stop() == 0


# ---- 3. endpoint faults ----------------------------------------------------------------------

FAILURE_LIMIT = 4
RETRY_BASE_MS = 1500
HTTP_TIMEOUT_MS = 500


def test_bad_endpoints_retry_park_and_never_stall_the_others(db, sink, make_sink, relay):
    """Five kinds of broken endpoint at once, three rows each (each row heads its own
    partition, with a row for a healthy endpoint behind it), next to a healthy endpoint:
      storm    answers 500 to the first six requests, then 200
      slow     answers after 3 s, beyond OUTBOX_HTTP_TIMEOUT_MS (500 ms)
      reset    resets the connection without an answer
      resolve  a host name that does not resolve (does-not-exist.invalid)
      refused  a port on 127.0.0.1 nobody listens on
    First a relay whose retries wait an hour: once every broken row has failed once, 500 rows
    of healthy partitions are all delivered while every broken row waits for its retry (one
    bad endpoint never stalls other partitions; the hour makes "meanwhile" a fact, not a race
    against the retry timer). Then, the retries made due, a relay with a failure limit of 4
    and a retry base of 1.5 s: the storm rows are delivered on their third attempt; the
    others retry and are parked after exactly four requests, with a last_error that names
    what went wrong, and the rows behind them go out after."""
    good = make_sink()
    refused = PortLock()  # reserved, never listened on
    sink.rules([{"prefix": "/storm/", "status": 500, "times": 6, "body": "storm"},
                {"prefix": "/slow/", "delay_ms": 3000},
                {"prefix": "/reset/", "drop": True}])
    settings = env(OUTBOX_LOG_LEVEL="info", OUTBOX_FAILURE_LIMIT=FAILURE_LIMIT,
                   OUTBOX_RETRY_BASE_MS=RETRY_BASE_MS, OUTBOX_HTTP_TIMEOUT_MS=HTTP_TIMEOUT_MS)
    try:
        first = relay(db, env={**settings, "OUTBOX_RETRY_BASE_MS": HOUR_MS, "OUTBOX_RETRY_MAX_MS": HOUR_MS})
        targets = {
            "storm": lambda i: sink.url(f"/storm/{i}"),
            "slow": lambda i: sink.url(f"/slow/{i}"),
            "reset": lambda i: sink.url(f"/reset/{i}"),
            "resolve": lambda i: f"http://does-not-exist.invalid/resolve/{i}",
            "refused": lambda i: f"http://127.0.0.1:{refused.port}/refused/{i}",
        }
        bad, behind = {}, {}
        rows = []
        for kind, url in targets.items():
            for i in range(3):
                part = str(uuid7())
                rows += [{"partition_key": part, "destinations": [http_dest(url(i))], "payload": f"{kind} {i}"},
                         {"partition_key": part, "destinations": [http_dest(good.url(f"/behind/{kind}/{i}"))],
                          "payload": f"behind {kind} {i}"}]
        made = insert(db, rows)
        for head, after in zip(made[0::2], made[1::2]):
            kind = head["payload"].split()[0]
            bad[head["idempotent_key"]] = kind
            behind[after["idempotent_key"]] = head["idempotent_key"]
        bad_keys = list(bad)
        wait_until(lambda: db.scalar("SELECT count(*) FROM outbox WHERE idempotent_key = ANY(%s::uuid[])"
                                     " AND attempts >= 1", (bad_keys,)) == len(bad_keys),
                   15, "every broken row to fail once")

        # the healthy stream, while the broken rows wait for their retries
        t0 = time.monotonic()
        healthy = insert(db, [{"partition_key": p, "destinations": [http_dest(good.url(f"/ok/{p}"))],
                               "payload": str(s)}
                              for s in range(5) for p in [str(uuid7()) for _ in range(100)]])
        wait_processed(db, keys(healthy), timeout=30)
        took = time.monotonic() - t0
        during = rows_by_key(db, bad_keys)
        waiting = {k: (bad[k], v["attempts"], v["dead_at"], v["processed_at"]) for k, v in during.items()
                   if v["attempts"] != 1 or v["dead_at"] or v["processed_at"] or not v["retry_after"]}
        assert not waiting, f"broken rows not waiting for their first retry: {waiting}"
        assert all("HTTP 500" in v["last_error"] and "storm" in v["last_error"]
                   for k, v in during.items() if bad[k] == "storm"), during
        assert not any(v["processed_at"] for v in rows_by_key(db, list(behind)).values()), \
            "a row behind a failing one went out"
        assert first.stop() == 0

        # the retries made due (as if the hour had passed), a relay with the 1.5 s retry base
        db.execute("UPDATE outbox SET retry_after = now() WHERE idempotent_key = ANY(%s::uuid[])", (bad_keys,))
        r = relay(db, env=settings)

        # the end: storm rows delivered, the others parked at the limit, the rows behind them out
        wait_processed(db, list(behind), timeout=40)
        final = rows_by_key(db, bad_keys + list(behind))
    finally:
        refused.release()
    # libcurl's reasons (7.88), after "destinations[0] http <url>: "
    expect = {"slow": r"(?i)timed out after \d+ milliseconds",
              "reset": r"Empty reply from server|[Rr]eset|Recv failure",
              "resolve": r"Could not resolve host: does-not-exist\.invalid",
              "refused": rf"port {refused.port}.*\(Connection refused\)$"}
    errors = {}
    for k, kind in bad.items():
        row = final[k]
        if kind == "storm":
            assert row["processed_at"] is not None and row["dead_at"] is None and row["attempts"] == 3, row
            continue
        assert row["dead_at"] is not None and row["processed_at"] is None, (kind, row)
        assert row["attempts"] == FAILURE_LIMIT, (kind, row)
        assert row["retry_after"] is None
        where, _, reason = row["last_error"].partition(": ")
        errors[kind] = reason
        assert where.startswith("destinations[0] http ") and where.endswith(row["payload"].replace(" ", "/")), where
        assert re.search(expect[kind], reason), (kind, row["last_error"])
    for k, head in behind.items():  # the partition moved on only after its head was settled
        settled = final[head]["dead_at"] or final[head]["processed_at"]
        assert final[k]["processed_at"] >= settled, (bad[head], final[k], final[head])
    reqs = sink.requests()
    counts = {f"/{kind}/{i}": len([x for x in reqs if x["path"] == f"/{kind}/{i}"])
              for kind in ("storm", "slow", "reset") for i in range(3)}
    for path, got in counts.items():
        if path.startswith("/storm/"):
            assert got == 3, counts
        elif path.startswith("/slow/"):
            assert got == FAILURE_LIMIT, counts
        else:  # libcurl sends a request once more on a fresh connection when a reused one
            #     dies before answering: an attempt may reach a resetting endpoint twice
            assert FAILURE_LIMIT <= got <= 2 * FAILURE_LIMIT, counts
    print(f"endpoint faults: 500 healthy rows in {took:.2f}s while 15 broken rows retried;"
          f" requests {counts}; last_error: {errors}")
    assert r.alive()


# ---- 4. the notification queue ---------------------------------------------------------------

QUEUE_RUN_S = 30  # how long the load runs (a load profile; nothing asserts a rate)
SAMPLE_S = 0.2
MIN_SAMPLES = 120  # 24 s worth: the samples must cover the run, however slow a sample is
LISTEN_QUERIES = ("LISTEN ", "SELECT 1")  # all the listen connection ever runs
IN_TRANSACTION = ("idle in transaction", "idle in transaction (aborted)")


def sample_backends(db, apps) -> list[dict]:
    return db.query_dicts(
        "SELECT application_name AS app, pid, state, wait_event_type, backend_xid::text AS xid,"
        " backend_xmin::text AS xmin, extract(epoch FROM clock_timestamp() - state_change) AS for_s,"
        " left(query, 80) AS query, pg_notification_queue_usage() AS usage"
        " FROM pg_stat_activity WHERE datname = %s AND application_name = ANY(%s)", (db.name, list(apps)))


def test_listen_connection_never_holds_the_notification_queue(db, sink, relay, request):
    """30 s of steady writes (paced at about 1,000 rows and 400 notifying transactions a second;
    a loaded machine writes less, and the rate is printed, not asserted) with a listen-connection
    health check every second. Every 200 ms (and at least 120 times) pg_stat_activity is
    sampled: the listen connection is never 'idle in transaction', never holds a transaction id
    or snapshot, never waits for a lock and never runs anything but LISTEN and its health
    check; the claim and work connections are never 'idle in transaction';
    pg_notification_queue_usage() stays near 0 (a queue the listener keeps up with is
    trimmed). A control at the end proves the probes see the failure: a second listener left
    idle in a transaction is caught by the same checks, and the queue then grows."""
    rng = seeded(request)
    r = relay(db, env=env(OUTBOX_LOG_LEVEL="info", OUTBOX_HEALTH_CHECK_MS=1000))
    parts = [str(uuid7()) for _ in range(200)]
    rounds = int(QUEUE_RUN_S / 0.0025)  # 400 transactions a second, stopped after QUEUE_RUN_S
    writer = SequenceWriter(db, sink.base_url, parts, "queue", max_rounds=rounds, interval=0.0025,
                            parts_per_round=2, deadline_s=QUEUE_RUN_S * 10,
                            seed=rng.randrange(2**32)).start()
    apps = (LISTEN_APP, CLAIM_APP, WORK_APP)
    problems, usage, samples, listen_active = [], [], 0, 0
    idle_xmin: dict = {}  # listen pid -> xmin seen while not active in the last sample
    t0 = time.monotonic()
    while time.monotonic() - t0 < QUEUE_RUN_S or samples < MIN_SAMPLES:
        time.sleep(max(0.0, t0 + (samples + 1) * SAMPLE_S - time.monotonic()))  # the sampling rate
        rows = sample_backends(db, apps)
        samples += 1
        assert {b["app"] for b in rows} == set(apps), f"relay connections missing: {rows}"
        for b in rows:
            usage.append(b["usage"])
            if b["state"] in IN_TRANSACTION:
                problems.append(b)
            if b["app"] == LISTEN_APP:
                if b["xid"]:
                    problems.append(b)
                # a snapshot held while idle: the same xmin in two samples in a row. One sample
                # alone proves nothing: pg_stat_activity reads state and xmin at different
                # moments, so it can pair "idle" with the xmin of the next health check
                held = b["xmin"] if b["state"] != "active" else None
                if held and held == idle_xmin.get(b["pid"]):
                    problems.append(b)
                idle_xmin[b["pid"]] = held
                # what it runs and whether it waits, not for how long it has been active
                if not b["query"].startswith(LISTEN_QUERIES) or b["wait_event_type"] == "Lock":
                    problems.append(b)
                if b["state"] == "active":
                    listen_active += 1
        assert r.alive()
    took = time.monotonic() - t0
    writer.stop()
    written = len(writer.written)
    wait_all_processed(db, written, timeout=30)
    print(f"notification queue: {samples} samples over {took:.1f}s, {written} rows written"
          f" ({written / took:.0f}/s), listen connection active in {listen_active} samples,"
          f" queue usage max {max(usage):.2e}")
    assert not problems, f"{len(problems)} bad samples, e.g. {problems[:5]}"
    usage_bound = 2e-5  # 20 pages of the 8 GB queue; what the run wrote is several times that
    assert max(usage) <= usage_bound, max(usage)

    # the control: a listener that sits in a transaction holds the queue back
    lazy = db.conn(autocommit=False)
    with lazy.cursor() as cur:
        cur.execute("LISTEN outbox")
        lazy.commit()
        cur.execute("SELECT 1")  # now idle in transaction
    # notifications of another channel: the relay holds (lingers on) the partitions written
    # above, so their writers skip NOTIFY (sql/010); any channel fills the one queue
    notifier = db.conn(autocommit=True)
    with notifier.cursor() as cur:
        for t in range(30):
            cur.execute("SELECT count(pg_notify('outbox_control', %s || i || repeat('x', 100)))"
                        " FROM generate_series(1, 500) i", (f"{t}:",))
    notifier.close()
    try:
        rows = sample_backends(db, apps) + db.query_dicts(
            "SELECT 'control' AS app, state, pg_notification_queue_usage() AS usage"
            " FROM pg_stat_activity WHERE pid = %s", (lazy.get_backend_pid(),))
        assert [b["state"] for b in rows if b["app"] == "control"] == ["idle in transaction"]
        assert rows[-1]["usage"] > usage_bound, (
            f"the control did not grow the queue ({rows[-1]['usage']:.2e}): the usage probe"
            " cannot tell a held queue")
    finally:
        lazy.rollback()
        lazy.close()
    assert r.alive()
