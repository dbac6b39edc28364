"""A database that refuses writes (SQLSTATE 25006: a standby behind a moved address, a primary
fenced or demoted in a failover, default_transaction_read_only) must not send the relay into a
loop of failing statements: each statement kind backs off while it keeps failing, the log says
so once per interval, /ready says why it is not ready, and rows written meanwhile arrive by
themselves once writes work again.

The CPU budget is measured over a fixed window on purpose (a cost per second of outage is
the claim being tested); everything else waits for conditions."""

import os
import time

from conftest import wait_until
from relay_util import (env, http_dest, insert, insert_on, keys, ready_code, ready_text, relay_backends,
                        wait_processed)

WINDOW_S = 4.0
CORE_SHARE = 0.1  # the bound: well under a tenth of a core, relay and PostgreSQL together
TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # fields from 3 (state) on


def relay_cpu_s(pid: int) -> float:
    f = _stat(pid)
    return (int(f[11]) + int(f[12])) / TICK  # utime, stime


def cluster_cpu_s(datadir) -> float:
    """CPU of the postmaster, its live children, and the children it has reaped (backends of
    connections that ended during the window)."""
    postmaster = int((datadir / "postmaster.pid").read_text().split()[0])
    f = _stat(postmaster)
    total = sum(int(x) for x in f[11:15])  # utime, stime, cutime, cstime
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            c = _stat(int(entry))
            if c and int(c[1]) == postmaster:
                total += int(c[11]) + int(c[12])
    return total / TICK


def test_read_only_database_costs_little_and_recovers(db, sink, relay, pg_cluster):
    r = relay(db, env=env(OUTBOX_POLL_INTERVAL_MS=1000))
    first = insert(db, [{"destinations": [http_dest(sink.url("/before"))], "payload": "before"}])
    wait_processed(db, keys(first))

    writer = db.conn(autocommit=False)  # opened before: stays writable
    db.execute(f'ALTER DATABASE "{db.name}" SET default_transaction_read_only = on')
    try:
        # the relay's sessions start anew and get the setting
        for b in relay_backends(db):
            db.execute("SELECT pg_terminate_backend(%s)", (b["pid"],))
        rows = insert_on(writer, [{"destinations": [http_dest(sink.url(f"/during/{i}"))], "payload": str(i)}
                                  for i in range(20)])
        wait_until(lambda: "read-only" in ready_text(r), 30, "/ready to name the read-only database")
        assert ready_code(r) == 503

        log_mark = len(r.log())
        cpu0 = relay_cpu_s(r.pid) + cluster_cpu_s(pg_cluster.datadir)
        t0 = time.monotonic()
        time.sleep(WINDOW_S)
        spent = relay_cpu_s(r.pid) + cluster_cpu_s(pg_cluster.datadir) - cpu0
        elapsed = time.monotonic() - t0
        assert spent < CORE_SHARE * elapsed, \
            f"{spent:.2f} s of CPU in {elapsed:.1f} s while the database was read-only"
        window_log = r.log()[log_mark:]
        failed = [l for l in window_log.splitlines() if "statement failed" in l]
        assert len(failed) <= 2 * len({"claim", "scan", "retention"}), failed  # rate-limited
        assert db.scalar("SELECT count(*) FROM outbox WHERE processed_at IS NULL") == 20
    finally:
        db.execute(f'ALTER DATABASE "{db.name}" RESET default_transaction_read_only')
        writer.close()

    # new sessions take writes again: the rows arrive by themselves
    wait_processed(db, keys(rows), timeout=60)
    wait_until(lambda: ready_code(r) == 200, 30, "/ready to answer 200 again")
    assert "the database takes writes again" in r.log()
    got = {rec["path"] for rec in sink.requests()}
    assert {f"/during/{i}" for i in range(20)} <= got

