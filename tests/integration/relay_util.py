"""Helpers shared by the relay behaviour tests (test_relay_*.py).

Everything here waits for conditions with deadlines (conftest.wait_until); nothing sleeps to
"give the relay time". A fixed wait appears only in assert_not_within(), which proves that
something does NOT happen within a window.
"""

from __future__ import annotations

import collections
import json
import socket
import threading
import time
import urllib.request
from typing import Any, Iterable

import psycopg2.extras

from conftest import header_values, uuid7, wait_until

# Listen mode with the fallback poll out of the way: whatever is delivered was pushed by NOTIFY
# (or found by the start-up / reconnect catch-up scan, or the due timer). The circuit breaker is
# off: tests of retries count exact attempts of endpoints that keep failing, which an open
# circuit would put off without counting (test_sick_endpoint.py turns it on).
HOUR_MS = 3_600_000
PUSH_ENV = {"OUTBOX_POLL_INTERVAL_MS": HOUR_MS, "OUTBOX_LOG_LEVEL": "debug", "OUTBOX_CIRCUIT_FAILURES": 0}

WORK_APP = "outbox-relay work"
CLAIM_APP = "outbox-relay claim"
LISTEN_APP = "outbox-relay listen"


def env(**overrides: Any) -> dict:
    """PUSH_ENV plus overrides (None removes a setting)."""
    out = dict(PUSH_ENV)
    for k, v in overrides.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


# ---- sink records ----------------------------------------------------------------------------


def key_of(record: dict) -> str:
    """The x-idempotent-key a sink record carries (exactly one is expected)."""
    values = header_values(record, "x-idempotent-key")
    assert len(values) == 1, f"expected one x-idempotent-key, got {values} in {record['headers']}"
    return values[0]


def by_key(records: Iterable[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = collections.defaultdict(list)
    for r in records:
        out[key_of(r)].append(r)
    return out


def assert_each_once(records: list[dict], keys: Iterable[str]) -> dict[str, dict]:
    """Every key arrived exactly once and nothing else arrived; returns key -> record."""
    keys = list(keys)
    got = by_key(records)
    dups = {k: len(v) for k, v in got.items() if len(v) > 1}
    missing = [k for k in keys if k not in got]
    extra = [k for k in got if k not in set(keys)]
    assert not dups, f"{len(dups)} rows delivered more than once: {list(dups.items())[:10]}"
    assert not missing, f"{len(missing)} rows never arrived: {missing[:10]}"
    assert not extra, f"{len(extra)} unexpected requests: {extra[:10]}"
    return {k: v[0] for k, v in got.items()}


def arrival_s(record: dict) -> float:
    """The sink's arrival time (CLOCK_REALTIME) in seconds since the epoch."""
    return record["time_us"] / 1e6


# ---- database state --------------------------------------------------------------------------


def rows_by_key(db, keys: Iterable[str]) -> dict[str, dict]:
    keys = [str(k) for k in keys]
    rows = db.query_dicts("SELECT * FROM outbox WHERE idempotent_key = ANY(%s::uuid[])", (keys,))
    return {r["idempotent_key"]: r for r in rows}


def wait_processed(db, keys: Iterable[str], timeout: float = 20) -> dict[str, dict]:
    """Waits until every row in keys has processed_at; returns the rows."""
    keys = [str(k) for k in keys]

    def done():
        n = db.scalar("SELECT count(*) FROM outbox WHERE idempotent_key = ANY(%s::uuid[])"
                      " AND processed_at IS NOT NULL", (keys,))
        return n == len(keys)

    try:
        wait_until(done, timeout, f"{len(keys)} rows to be processed", interval=0.02)
    except TimeoutError as e:
        pending = db.query_dicts(
            "SELECT idempotent_key, partition_key, attempts, last_error, retry_after, dead_at"
            " FROM outbox WHERE idempotent_key = ANY(%s::uuid[]) AND processed_at IS NULL"
            " LIMIT 10", (keys,))
        raise AssertionError(f"{e}; still pending (up to 10): {pending}") from None
    return rows_by_key(db, keys)


def wait_dead(db, keys: Iterable[str], timeout: float = 20) -> dict[str, dict]:
    keys = [str(k) for k in keys]
    wait_until(lambda: db.scalar("SELECT count(*) FROM outbox WHERE idempotent_key = ANY(%s::uuid[])"
                                 " AND dead_at IS NOT NULL", (keys,)) == len(keys),
               timeout, f"{len(keys)} rows to be parked", interval=0.02)
    return rows_by_key(db, keys)


def lock_rows(db) -> list[dict]:
    return db.query_dicts("SELECT * FROM outbox_lock")


def wait_no_leases(db, timeout: float = 10, lock_id: str | None = None) -> None:
    """Waits until outbox_lock holds no active lease (of lock_id, when given)."""
    if lock_id is None:
        wait_until(lambda: db.scalar("SELECT count(*) FROM outbox_lock WHERE processed_at IS NULL") == 0,
                   timeout, "outbox_lock to be empty", interval=0.02)
    else:
        wait_until(lambda: db.scalar("SELECT count(*) FROM outbox_lock WHERE lock_id = %s::uuid",
                                     (lock_id,)) == 0,
                   timeout, f"no leases of instance {lock_id}", interval=0.02)


def relay_backends(db, app: str | None = None) -> list[dict]:
    """The relay's statement connections (work and claim), or only those named app."""
    apps = [app] if app else [WORK_APP, CLAIM_APP]
    return db.query_dicts("SELECT pid, state, wait_event_type, query FROM pg_stat_activity"
                          " WHERE datname = %s AND application_name = ANY(%s)", (db.name, apps))


def metric(relay_proc, name: str) -> float | None:
    """The value of an unlabelled sample on the relay's /metrics, or None."""
    with urllib.request.urlopen(relay_proc.http_url("/metrics"), timeout=5) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == name:
            return float(parts[1])
    return None


def wait_scanned(relay_proc, count: int = 1, timeout: float = 15) -> None:
    """Waits until the relay finished `count` scans (outbox_relay_polls_total on /metrics; the
    first is the catch-up scan at start). After the first, a row that no notification
    announces is delivered only by a later scan (poll or due timer)."""
    wait_until(lambda: (metric(relay_proc, "outbox_relay_polls_total") or 0) >= count, timeout,
               f"{count} finished scans of the relay")


def wait_claim_blocked_or_done(db, relay_proc, timeout: float = 10) -> str:
    """Waits until the relay's claim statement waits for a lock ("blocked"), or a claim has
    finished ("done", outbox_relay_claims_total on /metrics)."""
    def state():
        if any(b["wait_event_type"] == "Lock" for b in relay_backends(db)):
            return "blocked"
        if (metric(relay_proc, "outbox_relay_claims_total") or 0) >= 1:
            return "done"
        return None

    return wait_until(state, timeout, "the relay's claim to wait for a lock or to finish", interval=0.005)


def instance_id(relay_proc) -> str:
    """The relay's lock_id, from its start-up log line."""
    m = relay_proc.wait_for_log(r"instance ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")
    return m.group(1)


def assert_not_within(cond, seconds: float, what: str) -> None:
    """Proves that cond() stays false for `seconds` (a short fixed window, checked often)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert not cond(), f"{what} happened within {seconds:g}s"
        time.sleep(0.05)
    assert not cond(), f"{what} happened within {seconds:g}s"


# ---- writing rows ----------------------------------------------------------------------------


def http_dest(url: str, headers: dict | None = None, method: str | None = None) -> dict:
    return {"url": url, "headers": headers, "method": method}

INSERT_SQL = ("INSERT INTO outbox (idempotent_key, partition_key, destinations, headers, payload,"
              " attempts, process_after) VALUES %s")
INSERT_TEMPLATE = ("(%s::uuid, %s::uuid, %s::jsonb, %s::jsonb, %s, %s,"
                   " COALESCE(%s::timestamptz, now()))")


def insert_on(conn, rows: list[dict]) -> list[dict]:
    """One multi-row INSERT in one transaction on an existing (non-autocommit) connection.
    Each row: destinations (list or raw JSON text via destinations_json), payload,
    partition_key, idempotent_key (default uuid7), headers, attempts, process_after.
    Returns the rows with their keys filled in (as strings)."""
    made = []
    for r in rows:
        row = dict(r)
        row["idempotent_key"] = str(row.get("idempotent_key") or uuid7())
        row["partition_key"] = str(row.get("partition_key") or uuid7())
        made.append(row)
    values = []
    for r in made:
        dests = r["destinations_json"] if "destinations_json" in r else json.dumps(r["destinations"])
        if "headers_json" in r:
            headers = r["headers_json"]
        else:
            headers = None if r.get("headers") is None else json.dumps(r["headers"])
        values.append((r["idempotent_key"], r["partition_key"], dests, headers, r["payload"],
                       r.get("attempts", 0), r.get("process_after")))
    with conn.cursor() as cur:
        psycopg2.extras.execute_values(cur, INSERT_SQL, values, template=INSERT_TEMPLATE,
                                       page_size=1000)
    conn.commit()
    return made


def insert(db, rows: list[dict]) -> list[dict]:
    """insert_on() on a fresh connection of db."""
    conn = db.conn(autocommit=False)
    try:
        return insert_on(conn, rows)
    finally:
        conn.close()


def keys(rows: Iterable[Any]) -> list[str]:
    return [r["idempotent_key"] if isinstance(r, dict) else r.idempotent_key for r in rows]


class RawHttpServer:
    """A minimal HTTP/1.1 server on 127.0.0.1 answering each request with the next of the
    canned raw responses (bytes, the last one repeated), one request per connection; for
    answers the sink cannot give (e.g. bodies that are not UTF-8). .url(path), .requests."""

    def __init__(self, responses: list[bytes]) -> None:
        self.responses = list(responses)
        self.requests: list[bytes] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                data = b""
                try:
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    head, _, body = data.partition(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n")[1:]:
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value.strip())
                    while len(body) < length:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        body += chunk
                    self.requests.append(head + b"\r\n\r\n" + body)
                    idx = min(len(self.requests) - 1, len(self.responses) - 1)
                    conn.sendall(self.responses[idx])
                except OSError:
                    pass

    def close(self) -> None:
        self._stop = True
        self.thread.join(5)
        self.sock.close()


# ---- fault tests: sequences, readiness, writers that survive outages ---------------------------
# (added for test_faults.py / test_secrets.py; generic enough for others)

import contextlib  # noqa: E402  (appended section)
import random  # noqa: E402
import urllib.error  # noqa: E402

import psycopg2  # noqa: E402
import psycopg2.errors  # noqa: E402


def ready_code(relay_proc, timeout: float = 2) -> int | None:
    """The status of GET /ready on the relay (200 or 503), None if it could not be asked."""
    try:
        with urllib.request.urlopen(relay_proc.http_url("/ready"), timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def wait_ready_code(relay_proc, code: int, timeout: float = 20) -> None:
    """Waits until GET /ready answers `code`; fails if the relay exits meanwhile."""
    def check():
        assert relay_proc.alive(), f"the relay exited ({relay_proc.proc.returncode})"
        return ready_code(relay_proc) == code
    wait_until(check, timeout, f"/ready to answer {code}", interval=0.01)


def db_retry(fn, attempts: int = 3):
    """Calls fn() (a Database call), retrying when the test's own connection died with a
    PostgreSQL restart (the first call on a dead connection fails, the next reconnects)."""
    for i in range(attempts):
        try:
            return fn()
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            if i == attempts - 1:
                raise


def sequence_report(records: list[dict]) -> dict:
    """Analyses sink records whose JSON bodies are {"p": partition, "s": sequence} (the
    sequence of a row within its partition, 0, 1, 2, ... in the order the rows were written).

    Per partition, the records are taken in the sink's arrival order (seq). The partition's
    order holds when that list of sequences is non-decreasing: a value may repeat (at least
    once: the row that was in flight when its sender died is sent again), but a lower value
    never follows a higher one. Because every repeat then sits right after the row's first
    arrival, the first arrivals alone must be 0, 1, ..., n-1 (nothing skipped, nothing lost).

    Returns {"partitions": {p: [s, ...]}, "backwards": {p: (i, prev, s)} (first place where
    the order goes back), "firsts": {p: [s of first arrivals]}, "duplicates": [(p, s,
    [time_us of each arrival])] (rows received more than once), "duplicate_count": number of
    arrivals beyond the first, "total": records}."""
    per: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
    for rec in sorted(records, key=lambda r: r["seq"]):
        body = json.loads(rec["body"])
        per[body["p"]].append((int(body["s"]), rec["time_us"]))
    backwards, firsts, dups = {}, {}, []
    dup_count = 0
    for p, arrivals in per.items():
        seen: dict[int, list[int]] = {}
        first = []
        for i, (s, t) in enumerate(arrivals):
            if i and s < arrivals[i - 1][0] and p not in backwards:
                backwards[p] = (i, arrivals[i - 1][0], s)
            if s in seen:
                seen[s].append(t)
                dup_count += 1
            else:
                seen[s] = [t]
                first.append(s)
        firsts[p] = first
        dups += [(p, s, ts) for s, ts in seen.items() if len(ts) > 1]
    return {"partitions": {p: [s for s, _ in a] for p, a in per.items()}, "backwards": backwards,
            "firsts": firsts, "duplicates": dups, "duplicate_count": dup_count,
            "total": len(records)}


def assert_sequences(report: dict, expected: dict[str, int], what: str = "",
                     allow_going_back: bool = False) -> None:
    """Order holds in every partition of a sequence_report() and partition p received exactly
    the sequences 0..expected[p]-1 (first arrivals), nothing else. allow_going_back=True checks
    only what a receiver that deduplicates on the key sees: every row, first arrivals in order
    (an older row may be sent again after newer ones)."""
    bad = {} if allow_going_back else report["backwards"]
    assert not bad, (f"{what}order went back in {len(bad)} partitions, e.g. "
                     + "; ".join(f"{p}: arrival #{i} is {s} after {prev} "
                                 f"(sequence {report['partitions'][p][max(0, i - 5):i + 5]})"
                                 for p, (i, prev, s) in list(bad.items())[:3]))
    assert set(report["firsts"]) == set(expected), (
        f"{what}partitions at the sink differ: missing {list(set(expected) - set(report['firsts']))[:5]},"
        f" unexpected {list(set(report['firsts']) - set(expected))[:5]}")
    wrong = {p: f for p, f in report["firsts"].items() if f != list(range(expected[p]))}
    assert not wrong, (f"{what}{len(wrong)} partitions incomplete or out of order, e.g. "
                       + "; ".join(f"{p}: {f[:10]}...{f[-5:]} ({len(f)} of {expected[p]})"
                                   for p, f in list(wrong.items())[:3]))


class SequenceWriter:
    """A writer thread: rounds of one row per partition (payload {"p", "s"}: the partition's
    next sequence number), one transaction per round, to HTTP destination
    {base_url}/{tag}/{partition}. It survives database outages: a round that fails is retried
    with the same keys until it commits (a unique violation means the earlier, ambiguous
    commit did succeed), so every partition's sequence is gapless and in order.

    Bounded: at most max_rounds rounds and `deadline_s` seconds; one round every `interval`
    seconds (pacing the load, 0: as fast as it goes). .written (committed rows),
    .counts {partition: rows}, .rounds, .errors (unexpected exceptions), .retries."""

    def __init__(self, db, base_url: str, parts: list[str], tag: str, *, max_rounds: int,
                 interval: float = 0.0, deadline_s: float = 120.0, seed: int = 0,
                 parts_per_round: int | None = None) -> None:
        self.db, self.base_url, self.parts, self.tag = db, base_url, list(parts), tag
        self.max_rounds, self.interval, self.deadline_s = max_rounds, interval, deadline_s
        self.parts_per_round = parts_per_round
        self.rng = random.Random(seed)
        self.written: list[dict] = []
        self.counts: dict[str, int] = {p: 0 for p in self.parts}
        self.rounds = 0
        self.retries = 0
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"writer-{tag}")

    def start(self) -> "SequenceWriter":
        self.thread.start()
        return self

    def stop(self, timeout: float = 30) -> None:
        self._stop.set()
        self.join(timeout)

    def join(self, timeout: float = 120) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"writer {self.tag} did not finish within {timeout:g}s"
        assert not self.errors, f"writer {self.tag} failed: {self.errors[:3]}"

    def wait_rounds(self, n: int, timeout: float = 30) -> None:
        wait_until(lambda: self.rounds >= n or self.errors or not self.thread.is_alive(),
                   timeout, f"writer {self.tag} to finish {n} rounds")
        assert not self.errors, self.errors[:3]

    def snapshot(self) -> tuple[list[dict], dict[str, int]]:
        with self._lock:
            return list(self.written), {p: c for p, c in self.counts.items() if c}

    def _connect(self, give_up: float):
        while True:
            try:
                return self.db.cluster.connect(self.db.name, autocommit=False)
            except psycopg2.OperationalError:
                if time.monotonic() >= give_up:
                    raise
                self.retries += 1
                time.sleep(0.05)  # back off while the server is down

    def _run(self) -> None:
        start = time.monotonic()
        give_up = start + self.deadline_s
        conn = None
        try:
            while self.rounds < self.max_rounds and not self._stop.is_set():
                if time.monotonic() >= give_up:
                    raise TimeoutError(f"writer {self.tag}: {self.rounds} rounds in {self.deadline_s:g}s")
                if self.interval:
                    self._stop.wait(max(0.0, start + self.rounds * self.interval - time.monotonic()))
                    if self._stop.is_set():
                        break
                parts = self.parts
                if self.parts_per_round:
                    parts = self.rng.sample(self.parts, self.parts_per_round)
                rows = [{"idempotent_key": str(uuid7()), "partition_key": p,
                         "destinations": [http_dest(f"{self.base_url}/{self.tag}/{p}")],
                         "payload": json.dumps({"p": p, "s": self.counts[p]})} for p in parts]
                while True:  # the same keys until the round is known to be committed
                    try:
                        if conn is None or conn.closed:
                            conn = self._connect(give_up)
                        insert_on(conn, rows)
                        break
                    except psycopg2.errors.UniqueViolation:
                        conn.rollback()  # the earlier attempt's commit had succeeded
                        break
                    except (psycopg2.OperationalError, psycopg2.InterfaceError):
                        self.retries += 1
                        with contextlib.suppress(Exception):
                            conn.close()
                        conn = None
                        # a round is never abandoned (stop or not): its commit may have
                        # happened, and only a retry tells
                        if time.monotonic() >= give_up:
                            raise
                        time.sleep(0.05)
                with self._lock:
                    self.written.extend(rows)
                    for p in parts:
                        self.counts[p] += 1
                    self.rounds += 1
        except BaseException as e:  # reported by join()
            self.errors.append(e)
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()


CLAIM_APP = "outbox-relay claim"  # the connection that runs claims and scans (listen mode)


# ---- the notify commit lock ------------------------------------------------------------------


class NotifyLockHeld:
    """with NotifyLockHeld(db) as held: a writer that wrote and notified is left in its commit,
    holding the cluster-wide notify commit lock, by a synchronous standby that never comes.
    held.waiter() adds a writer whose commit after its NOTIFY waits for that lock. On exit the
    standby setting is reset, every commit goes through, and the connections are closed."""

    def __init__(self, db) -> None:
        self.db = db
        self.conns: list = []
        self.threads: list[threading.Thread] = []

    def _commit_after_notify(self, write: bool) -> tuple[threading.Thread, int]:
        c = self.db.conn(autocommit=False)
        self.conns.append(c)
        with c.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            pid = cur.fetchone()[0]
            if write:  # WAL: the commit waits for the standby
                cur.execute(f"CREATE TEMP TABLE obr_lock_holder_{len(self.conns)} (x int)")
            cur.execute("NOTIFY obr_lock_test")
        t = threading.Thread(target=c.commit, daemon=True)
        t.start()
        self.threads.append(t)
        return t, pid

    def _holds(self) -> bool:
        t, pid = self._commit_after_notify(write=True)
        while t.is_alive():
            if self.db.scalar("SELECT wait_event FROM pg_stat_activity WHERE pid = %s", (pid,)) == "SyncRep":
                return True
        return False  # committed: the reload had not reached the checkpointer yet

    def waiter(self) -> None:
        self._commit_after_notify(write=False)

    def __enter__(self) -> "NotifyLockHeld":
        self.db.execute("ALTER SYSTEM SET synchronous_standby_names = 'obr_nobody'")
        self.db.execute("SELECT pg_reload_conf()")
        try:
            wait_until(self._holds, 20, "a writer's commit to wait for the standby with the notify lock held")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.db.execute("ALTER SYSTEM RESET synchronous_standby_names")
        self.db.execute("SELECT pg_reload_conf()")
        for t in self.threads:
            t.join(timeout=30)
        for c in self.conns:
            c.close()
        assert not any(t.is_alive() for t in self.threads), "a commit still waits after the reset"


def ready_text(relay_proc, timeout: float = 2) -> str:
    """The body of GET /ready (its reason when not ready)."""
    try:
        with urllib.request.urlopen(relay_proc.http_url("/ready"), timeout=timeout) as resp:
            return resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.read().decode()
