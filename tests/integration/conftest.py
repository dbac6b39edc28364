"""Fixtures for outbox-relay's integration tests.

Run by meson (`meson test --suite integration`), which sets the paths below, or by hand from the
repository root after `meson setup build && meson compile -C build`:

    /usr/bin/python3 -m pytest -q tests/integration

(/usr/bin/python3: it has psycopg2; a pyenv python3 earlier on PATH may not.)

Environment:
    OUTBOX_RELAY_BIN    the relay           (default: $OBR_BUILD_ROOT/src/relay/outbox-relay)
    OBR_TEST_SINK_BIN   the HTTP sink       (default: $OBR_BUILD_ROOT/tests/sink/obr-test-sink)
    OBR_SOURCE_ROOT     the repository root (default: two levels above this file)
    OBR_BUILD_ROOT      the build directory (default: $OBR_SOURCE_ROOT/build)
    OBR_PG_BIN          PostgreSQL binaries (default: /usr/lib/postgresql/15/bin)
    OBR_PGBOUNCER_BIN   PgBouncer           (default: /usr/sbin/pgbouncer)
    OBR_NODE_BIN        node                (default: the first on PATH)

Fixtures (scope):
    pg_cluster (session)  PgCluster: a throwaway PostgreSQL 15 on 127.0.0.1
    template_db (session) name of the database `outbox-relay migrate` prepared ("obr_template")
    db (function)         Database made from the template; dropped afterwards
    empty_db (function)   Database made from template0 (no outbox schema); for migration tests
    make_db (function)    make_db(template="template0") -> another Database for this test
    sink (function)       SinkServer: a running obr-test-sink
    make_sink (function)  make_sink(*args) -> another SinkServer (e.g. with --max-body)
    relay (function)      relay(db, *args, env=None, ready=True, ready_timeout=20, **env_vars)
                          -> RelayProcess (own OUTBOX_LISTEN_ADDR port, log scanned at teardown)
    run_relay (function)  run_relay(*args, db=None, env=None, timeout=60) -> CompletedProcess
                          (one-shot subcommands such as migrate/status/requeue)
    fauxqs (session)      Fauxqs: SQS/SNS emulator + consumer.mjs helpers
    pgbouncer (function)  pgbouncer(**settings) -> PgBouncer (transaction pooling, pool 5)

Helpers to import: wait_until, uuid7, http_destination, sqs_destination, sns_destination,
header_values, body_bytes, relay_env, run_relay_command, PortLock, OutboxRow, socket_dir (a
short directory for unix sockets).

How fauxqs 1.9.2 is started (read from node_modules/fauxqs/dist/{cli,app}.js and its README):
    Its own CLI (`npx fauxqs` -> dist/cli.js -> startFauxqs()) takes FAUXQS_PORT (default 4566),
    FAUXQS_HOST (only the host part of the queue URLs it hands out, default "localhost"),
    FAUXQS_DEFAULT_REGION (us-east-1), FAUXQS_LOGGER and FAUXQS_INIT, and always listens on
    0.0.0.0. The tests must bind 127.0.0.1 only, so tests/aws/consumer.mjs has a `serve`
    command that builds the same server with fauxqs' documented buildApp() and calls
    listen({host: "127.0.0.1", port: 0}); it prints "listening PORT" once bound. Readiness is
    then also probed with GET /health.
    One endpoint serves SQS (POST / with Content-Type application/x-amz-json-1.0 and
    X-Amz-Target: AmazonSQS.<Action>), SNS (POST / with application/x-www-form-urlencoded,
    Action=...) and S3. Only the path "/" takes SQS/SNS calls: a client must POST to the
    endpoint root and carry the queue URL in the body, not POST to the queue URL's path.
    Signatures are not checked; the region comes from the SigV4 credential scope of each
    request (fallback us-east-1) and is part of an entity's identity.
    Queue URLs look like  http://sqs.us-east-1.localhost:PORT/000000000000/NAME  and are looked
    up by exact string, so a relay must send the QueueUrl exactly as CreateQueue returned it
    (to the endpoint given by AWS_ENDPOINT_URL[_SQS]). ARNs: arn:aws:sqs:us-east-1:000000000000:NAME,
    arn:aws:sns:us-east-1:000000000000:NAME. Everything is in memory and lives as long as the
    session's server, so tests use unique names (Fauxqs.unique()).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import dataclasses
import datetime as dt
import fcntl
import glob
import http.client
import json
import os
import pwd
import random
import re
import secrets
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

import pytest

try:
    import psycopg2
    import psycopg2.extensions
    import psycopg2.extras
except ImportError:  # pragma: no cover - a clear message beats a collection traceback
    raise ImportError(
        "psycopg2 is missing: run the integration tests with /usr/bin/python3 "
        "(Debian's python3-psycopg2), not a pyenv/venv python"
    )

# ---- paths --------------------------------------------------------------------------------

SOURCE_ROOT = Path(os.environ.get("OBR_SOURCE_ROOT") or Path(__file__).resolve().parents[2])
BUILD_ROOT = Path(os.environ.get("OBR_BUILD_ROOT") or SOURCE_ROOT / "build")
RELAY_BIN = Path(os.environ.get("OUTBOX_RELAY_BIN") or BUILD_ROOT / "src" / "relay" / "outbox-relay")
SINK_BIN = Path(os.environ.get("OBR_TEST_SINK_BIN") or BUILD_ROOT / "tests" / "sink" / "obr-test-sink")
PG_BIN = Path(os.environ.get("OBR_PG_BIN") or "/usr/lib/postgresql/15/bin")
PGBOUNCER_BIN = Path(os.environ.get("OBR_PGBOUNCER_BIN") or "/usr/sbin/pgbouncer")
AWS_DIR = SOURCE_ROOT / "tests" / "aws"
SQL_DIR = SOURCE_ROOT / "sql"

LOCALHOST = "127.0.0.1"
PORT_RANGE = (20000, 30000)
PORT_LOCK_DIR = Path(tempfile.gettempdir()) / "obr-test-ports"
PG_TMP_PREFIX = "obr-pg-"
# A unix socket's address holds at most 107 bytes (sun_path). Directories that hold sockets
# (PostgreSQL's, PgBouncer's, a NOTIFY_SOCKET) are made here, never under the checkout, the
# build tree, pytest's basetemp or $TMPDIR, whose lengths depend on where CI put them.
SOCKET_TMP = Path("/tmp")

# Markers that fail a test when they show up in a daemon's log.
SANITIZER_MARKERS = ("AddressSanitizer", "runtime error:", "LeakSanitizer", "Assertion")

RUNNING_AS_ROOT = os.geteuid() == 0


# ---- generic helpers ----------------------------------------------------------------------


def wait_until(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Polls cond() until it returns something truthy, which is returned; raises after timeout.

    This waits for a condition (bounded), never for an assumed amount of time."""
    deadline = time.monotonic() + timeout
    while True:
        result = cond()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def socket_dir(prefix: str) -> Path:
    """A new, empty directory with a short path, for unix sockets (see SOCKET_TMP); the
    caller removes it."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=SOCKET_TMP))


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def sanitizer_findings(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(m in line for m in SANITIZER_MARKERS)]


_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """preexec_fn: the child gets SIGKILL if pytest dies without cleaning up (e.g. SIGKILL)."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _postgres_user_kwargs() -> dict:
    """subprocess kwargs that run a child as the postgres user when we are root."""
    if not RUNNING_AS_ROOT:
        return {}
    return {"user": "postgres", "group": "postgres", "extra_groups": []}


def chown_to_postgres(path: Path) -> None:
    if not RUNNING_AS_ROOT:
        return
    pw = pwd.getpwnam("postgres")
    for root, dirs, files in os.walk(path):
        os.chown(root, pw.pw_uid, pw.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), pw.pw_uid, pw.pw_gid, follow_symlinks=False)


# Everything started by this process, for the atexit/SIGTERM safety net. Fixtures clean up
# their own resources; this only catches what an interrupted session left behind.
_live_processes: set[subprocess.Popen] = set()
_live_clusters: set["PgCluster"] = set()


def _emergency_cleanup() -> None:
    for proc in list(_live_processes):
        with contextlib.suppress(Exception):
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)
    for cluster in list(_live_clusters):
        with contextlib.suppress(Exception):
            cluster.destroy()


atexit.register(_emergency_cleanup)


def _on_sigterm(signum, frame):
    # meson sends SIGTERM on a timeout: turn it into KeyboardInterrupt so pytest unwinds its
    # fixtures, and atexit runs afterwards in any case.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise KeyboardInterrupt(f"signal {signum}")


if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, _on_sigterm)


def spawn(args: list[str], *, log: Path | None = None, stdout=None, as_postgres: bool = False,
          **kwargs) -> subprocess.Popen:
    """Starts a child that dies with us; stdout+stderr go to `log` unless stdout is given.

    "Dies with us" is PR_SET_PDEATHSIG, which follows the thread that forked: spawn from the
    main thread (a child spawned from a helper thread is killed when that thread ends)."""
    logf = None
    if log is not None:
        logf = open(log, "ab")
    try:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=stdout if stdout is not None else (logf or subprocess.DEVNULL),
            stderr=logf or subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
            **(_postgres_user_kwargs() if as_postgres else {}),
            **kwargs,
        )
    finally:
        if logf is not None:
            logf.close()
    _live_processes.add(proc)
    return proc


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
    """Sends sig and waits; SIGKILL after timeout (then raises). Returns the exit code."""
    try:
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
                raise AssertionError(
                    f"pid {proc.pid} ({proc.args[0]}) did not exit within {timeout:g}s of "
                    f"signal {signal.Signals(sig).name}; killed"
                )
        return proc.returncode
    finally:
        _live_processes.discard(proc)


def read_line_with_deadline(stream, timeout: float, what: str, proc: subprocess.Popen) -> str:
    """Reads one line from a child's stdout pipe without blocking past the deadline."""
    deadline = time.monotonic() + timeout
    buf = b""
    fd = stream.fileno()
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}; got {buf!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            raise AssertionError(
                f"{what}: the process exited (status {proc.wait(timeout=5)}) before printing it;"
                f" got {buf!r}"
            )
        buf += chunk
    return buf.split(b"\n", 1)[0].decode()


# ---- ports --------------------------------------------------------------------------------


class PortLock:
    """A TCP port in PORT_RANGE reserved for this process.

    Reservation is an flock on /tmp/obr-test-ports/PORT.lock (held until release), so parallel
    pytest processes started by meson never pick the same port; a bind probe skips ports that
    something else is using."""

    def __init__(self) -> None:
        PORT_LOCK_DIR.mkdir(mode=0o1777, exist_ok=True)
        ports = list(range(*PORT_RANGE))
        random.shuffle(ports)
        for port in ports:
            fd = os.open(PORT_LOCK_DIR / f"{port}.lock", os.O_CREAT | os.O_RDWR, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            if self._bindable(port):
                self.port = port
                self._fd = fd
                return
            os.close(fd)
        raise RuntimeError(f"no free port in {PORT_RANGE}")

    @staticmethod
    def _bindable(port: int) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((LOCALHOST, port))
            except OSError:
                return False
        return True

    def release(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None


# ---- PostgreSQL ---------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    """True if pid runs (a zombie, killed but not yet reaped by its parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def _reap_stale_clusters() -> None:
    """Stops and removes clusters left by test sessions that died without cleaning up."""
    for owner in glob.glob(os.path.join(SOCKET_TMP, PG_TMP_PREFIX + "*", "owner.pid")):
        base = Path(owner).parent
        try:
            pid = int(Path(owner).read_text().strip())
        except (OSError, ValueError):
            continue
        if _pid_alive(pid):
            continue
        if (base / "data" / "postmaster.pid").exists():
            subprocess.run([str(PG_BIN / "pg_ctl"), "-D", str(base / "data"), "-m", "immediate",
                            "-w", "stop"], capture_output=True, timeout=60,
                           **_postgres_user_kwargs())
        shutil.rmtree(base, ignore_errors=True)


class PgCluster:
    """A throwaway PostgreSQL 15 cluster listening on 127.0.0.1:port (and a socket in base,
    which is short: see SOCKET_TMP)."""

    def __init__(self) -> None:
        for tool in ("initdb", "pg_ctl", "postgres"):
            if not (PG_BIN / tool).exists():
                pytest.fail(f"PostgreSQL binary {PG_BIN / tool} not found (set OBR_PG_BIN)")
        self._port_lock = PortLock()
        self.port = self._port_lock.port
        self.host = LOCALHOST
        self.base = socket_dir(PG_TMP_PREFIX)
        (self.base / "owner.pid").write_text(f"{os.getpid()}\n")
        self.datadir = self.base / "data"
        self.logfile = self.base / "postgresql.log"
        self.running = False
        _live_clusters.add(self)
        try:
            self._init()
        except BaseException:
            self.destroy()
            raise

    def _init(self) -> None:
        chown_to_postgres(self.base)
        self._pg(["initdb", "-A", "trust", "--nosync", "-U", "postgres", "-E", "UTF8",
                  "--locale=C", "-D", str(self.datadir)], timeout=120)
        with open(self.datadir / "postgresql.conf", "a") as conf:
            conf.write(
                "\n# obr integration tests\n"
                f"listen_addresses = '{LOCALHOST}'\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{self.base}'\n"
                "fsync = off\n"
                "max_connections = 200\n"
                "log_destination = 'stderr'\n"
                "logging_collector = off\n"
                "log_min_messages = warning\n"
                "log_line_prefix = '%m [%p] %q%u@%d '\n"
            )

    def _pg(self, args: list[str], timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(PG_BIN / args[0])] + args[1:]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.base,
                             **_postgres_user_kwargs())
        if check and res.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} failed with {res.returncode}:\n{res.stdout}{res.stderr}\n"
                f"server log:\n{tail(self.log())}"
            )
        return res

    # -- connection strings
    def dsn(self, dbname: str = "postgres") -> str:
        """libpq key=value string (TCP, user postgres)."""
        return f"host={self.host} port={self.port} user=postgres dbname={dbname}"

    def url(self, dbname: str = "postgres") -> str:
        """libpq URI, e.g. postgresql://postgres@127.0.0.1:P/dbname."""
        return f"postgresql://postgres@{self.host}:{self.port}/{urllib.parse.quote(dbname)}"

    def connect(self, dbname: str = "postgres", autocommit: bool = True, **kw):
        conn = psycopg2.connect(self.dsn(dbname), connect_timeout=5, **kw)
        conn.autocommit = autocommit
        return conn

    def log(self) -> str:
        return read_text(self.logfile)

    # -- lifecycle
    def start(self, timeout: float = 60) -> None:
        self._pg(["pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-w",
                  "-t", str(int(timeout)), "start"], timeout=timeout + 10)
        self.running = True
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 60) -> None:
        """Waits until a real connection succeeds and runs a query."""
        last_error: list[str] = []

        def ready():
            try:
                with contextlib.closing(self.connect()) as c, c.cursor() as cur:
                    cur.execute("SELECT 1")
                    return cur.fetchone() == (1,)
            except psycopg2.OperationalError as e:
                last_error[:] = [str(e).strip()]
                return False

        try:
            wait_until(ready, timeout, f"PostgreSQL on port {self.port}", interval=0.05)
        except TimeoutError as e:
            raise AssertionError(f"{e}; last error: {last_error}\n{tail(self.log())}") from None

    def stop(self, mode: str = "fast", timeout: float = 60) -> None:
        """pg_ctl stop; mode is fast, smart or immediate."""
        self._pg(["pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "-t", str(int(timeout)),
                  "stop"], timeout=timeout + 10)
        self.running = False

    def restart(self, mode: str = "fast", timeout: float = 60) -> None:
        self.stop(mode=mode, timeout=timeout)
        self.start(timeout=timeout)

    def destroy(self) -> None:
        try:
            if (self.datadir / "postmaster.pid").exists():
                self._pg(["pg_ctl", "-D", str(self.datadir), "-m", "immediate", "-w", "stop"],
                         check=False)
        finally:
            self.running = False
            shutil.rmtree(self.base, ignore_errors=True)
            self._port_lock.release()
            _live_clusters.discard(self)

    # -- databases
    def create_database(self, name: str, template: str = "template0") -> None:
        with contextlib.closing(self.connect()) as c, c.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')

    def drop_database(self, name: str) -> None:
        with contextlib.closing(self.connect()) as c, c.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_cluster():
    """The session's PostgreSQL 15 cluster. Tests may stop()/start()/restart() it; one left
    stopped is started again at the test's teardown."""
    _reap_stale_clusters()
    cluster = PgCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(autouse=True)
def _cluster_left_running(request):
    yield
    if "pg_cluster" in request.fixturenames:
        cluster = request.getfixturevalue("pg_cluster")
        if not cluster.running:
            cluster.start()


# ---- the relay binary ---------------------------------------------------------------------


def require_relay() -> Path:
    if not RELAY_BIN.exists():
        pytest.fail(
            f"the relay binary {RELAY_BIN} does not exist: build it (meson compile -C build) "
            "or point OUTBOX_RELAY_BIN at it"
        )
    if not os.access(RELAY_BIN, os.X_OK):
        pytest.fail(f"the relay binary {RELAY_BIN} is not executable")
    return RELAY_BIN


def relay_env(database_url: str | None = None, extra: dict | None = None) -> dict:
    """The environment for a relay child: ours without the developer's DATABASE_URL, PG*,
    AWS_*, OBR_* and OUTBOX_* variables, plus DATABASE_URL and the overrides (None: unset)."""
    env = {k: v for k, v in os.environ.items()
           if not (k == "DATABASE_URL" or k.startswith(("PG", "AWS_", "OBR_", "OUTBOX_")))}
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    # never let a test relay ask the real instance metadata service (169.254.169.254): only a
    # test that points AWS_EC2_METADATA_SERVICE_ENDPOINT at a local stand-in gets one
    if not (extra or {}).get("AWS_EC2_METADATA_SERVICE_ENDPOINT"):
        env["AWS_EC2_METADATA_DISABLED"] = "true"
    for k, v in (extra or {}).items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = str(v)
    return env


def run_relay_command(args: list[str], database_url: str | None, env: dict | None = None,
                      timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(require_relay())] + list(args), env=relay_env(database_url, env),
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def migrate(database_url: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Runs `outbox-relay migrate` against database_url and asserts it succeeded."""
    res = run_relay_command(["migrate"], database_url, timeout=timeout)
    assert res.returncode == 0, (
        f"outbox-relay migrate exited {res.returncode} for {database_url}\n"
        f"stdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    )
    return res


@pytest.fixture
def run_relay(pg_cluster):
    """run_relay(*args, db=None, env=None, timeout=60): runs a one-shot relay subcommand
    (migrate, status, requeue...) with DATABASE_URL=db.url; returns the CompletedProcess."""

    def run(*args: str, db: "Database | None" = None, env: dict | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
        return run_relay_command(list(args), db.url if db is not None else None, env, timeout)

    return run


# ---- databases ----------------------------------------------------------------------------

TEMPLATE_DB = "obr_template"


@pytest.fixture(scope="session")
def template_db(pg_cluster) -> str:
    """The database `outbox-relay migrate` prepared; tests copy it (CREATE DATABASE TEMPLATE)."""
    require_relay()
    pg_cluster.create_database(TEMPLATE_DB)
    migrate(pg_cluster.url(TEMPLATE_DB))
    # the relay runs as the least-privilege role of sql/roles/outbox_relay.sql (see Database.relay_url)
    conn = pg_cluster.connect(TEMPLATE_DB)
    try:
        with conn.cursor() as cur:
            cur.execute((SOURCE_ROOT / "sql" / "roles" / "outbox_relay.sql").read_text())
    finally:
        conn.close()  # CREATE DATABASE ... TEMPLATE needs the template without connections
    return TEMPLATE_DB


_uuid7_lock = threading.Lock()
_uuid7_last = [0, 0]  # unix ms, 12-bit counter


def uuid7() -> uuid.UUID:
    """A UUIDv7 (RFC 9562 §5.7): 48-bit Unix milliseconds, version 7, a 12-bit counter in
    rand_a (method 1 of §6.2) so keys made in the same millisecond still sort in creation
    order, variant 10, 62 random bits."""
    with _uuid7_lock:
        ms = time.time_ns() // 1_000_000
        last_ms, counter = _uuid7_last
        if ms <= last_ms:
            ms = last_ms
            counter += 1
            if counter > 0xFFF:  # counter exhausted: borrow the next millisecond
                ms += 1
                counter = secrets.randbits(11)
        else:
            counter = secrets.randbits(11)  # top bit clear leaves room to count up
        _uuid7_last[:] = [ms, counter]
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= counter << 64
    value |= 0b10 << 62
    value |= secrets.randbits(62)
    return uuid.UUID(int=value)


def http_destination(url: str, headers: dict | None = None, method: str | None = None) -> dict:
    """An HTTP destination as the crate's Rust helpers serialize it (None -> explicit null)."""
    return {"url": url, "headers": headers, "method": method}


def sqs_destination(queue_url: str) -> dict:
    return {"queue_url": queue_url}


def sns_destination(topic_arn: str) -> dict:
    return {"topic_arn": topic_arn}


@dataclasses.dataclass
class OutboxRow:
    """A row as inserted by Database.insert_rows (keys as strings, as receivers see them)."""
    idempotent_key: str
    partition_key: str
    destinations: list
    headers: dict | None
    payload: str
    process_after: dt.datetime | None = None
    attempts: int = 0


class Database:
    """One test database. .dsn (libpq key=value), .url (libpq URI), .name, .cluster."""

    def __init__(self, cluster: PgCluster, name: str) -> None:
        self.cluster = cluster
        self.name = name
        self.dsn = cluster.dsn(name)
        self.url = cluster.url(name)
        # what relays started by the `relay` fixture connect as: the role of sql/roles/outbox_relay.sql
        self.relay_url = self.url.replace("postgresql://postgres@", "postgresql://outbox_relay@", 1)
        self._conns: list = []
        self._shared = None

    def conn(self, autocommit: bool = True):
        """A new connection (autocommit by default), closed at teardown."""
        c = self.cluster.connect(self.name, autocommit=autocommit)
        self._conns.append(c)
        return c

    def _cursor(self):
        if self._shared is None or self._shared.closed:
            self._shared = self.conn()
        return self._shared.cursor()

    def query(self, sql: str, params: Any = None) -> list[tuple]:
        """Runs sql (autocommit) and returns all rows."""
        with self._cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description is not None else []

    def query_dicts(self, sql: str, params: Any = None) -> list[dict]:
        with self._cursor() as cur:
            cur.execute(sql, params)
            cols = [d.name for d in cur.description]
            return [dict(zip(cols, row)) for row in cur.fetchall()]

    def scalar(self, sql: str, params: Any = None) -> Any:
        """The first column of the single row sql returns."""
        rows = self.query(sql, params)
        assert len(rows) == 1, f"expected one row from {sql!r}, got {len(rows)}"
        return rows[0][0]

    def execute(self, sql: str, params: Any = None) -> int:
        """Runs sql (autocommit); returns the row count."""
        with self._cursor() as cur:
            cur.execute(sql, params)
            return cur.rowcount

    def insert_rows(self, rows: Iterable[dict | OutboxRow]) -> list[OutboxRow]:
        """Inserts outbox rows the way the crate's insert_all does (one multi-row INSERT, one
        transaction). Each row: destinations (list, required), payload (str, required),
        partition_key (default: new UUIDv7), idempotent_key (default: new UUIDv7), headers
        (dict or None), process_after (datetime or None: now()), attempts (default 0)."""
        made: list[OutboxRow] = []
        for r in rows:
            if isinstance(r, OutboxRow):
                made.append(r)
                continue
            unknown = set(r) - {f.name for f in dataclasses.fields(OutboxRow)}
            assert not unknown, f"unknown outbox row fields {unknown}"
            made.append(OutboxRow(
                idempotent_key=str(r.get("idempotent_key") or uuid7()),
                partition_key=str(r.get("partition_key") or uuid7()),
                destinations=r["destinations"],
                headers=r.get("headers"),
                payload=r["payload"],
                process_after=r.get("process_after"),
                attempts=r.get("attempts", 0),
            ))
        if not made:
            return made
        c = self.conn(autocommit=False)
        try:
            with c.cursor() as cur:
                psycopg2.extras.execute_values(
                    cur,
                    "INSERT INTO outbox (idempotent_key, partition_key, destinations, headers,"
                    " payload, attempts, process_after) VALUES %s",
                    [(r.idempotent_key, r.partition_key, json.dumps(r.destinations),
                      None if r.headers is None else json.dumps(r.headers), r.payload,
                      r.attempts, r.process_after) for r in made],
                    template="(%s::uuid, %s::uuid, %s::jsonb, %s::jsonb, %s, %s,"
                             " COALESCE(%s::timestamptz, now()))",
                    page_size=1000,
                )
            c.commit()
        finally:
            c.close()
            self._conns.remove(c)
        return made

    def insert_http_rows(self, url: str, n: int = 1, *, partition_key: Any = None,
                         payload: str | Callable[[int], str] = '{"foo":"bar"}',
                         dest_headers: dict | None = None, headers: dict | None = None,
                         method: str | None = None,
                         process_after: dt.datetime | None = None) -> list[OutboxRow]:
        """n rows with one HTTP destination each, in the crate's format. partition_key: one
        key for all rows (ordered delivery), or None for a new partition per row. payload may
        be a function of the row index."""
        dest = http_destination(url, dest_headers, method)
        return self.insert_rows([{
            "partition_key": partition_key or uuid7(),
            "destinations": [dest],
            "headers": headers,
            "payload": payload(i) if callable(payload) else payload,
            "process_after": process_after,
        } for i in range(n)])

    def outbox(self, where: str = "TRUE", params: Any = None) -> list[dict]:
        """Outbox rows as dicts (psycopg2 returns uuid columns as str), oldest first."""
        return self.query_dicts(
            f"SELECT * FROM outbox WHERE {where} ORDER BY created_at, idempotent_key", params)

    def close(self) -> None:
        for c in self._conns:
            with contextlib.suppress(Exception):
                c.close()
        self._conns.clear()
        self._shared = None


class _DbMaker:
    def __init__(self, cluster: PgCluster, request) -> None:
        self.cluster = cluster
        self.request = request
        self.made: list[Database] = []

    def __call__(self, template: str = "template0") -> Database:
        slug = re.sub(r"[^a-z0-9]+", "_", self.request.node.name.lower()).strip("_")[:36]
        name = f"t{len(self.made)}_{slug}_{secrets.token_hex(3)}"
        self.cluster.create_database(name, template=template)
        database = Database(self.cluster, name)
        self.made.append(database)
        return database

    def cleanup(self) -> None:
        for database in self.made:
            database.close()
            if self.cluster.running:
                self.cluster.drop_database(database.name)


@pytest.fixture
def make_db(pg_cluster, request):
    """make_db(template="template0") -> Database; every database is dropped at teardown."""
    maker = _DbMaker(pg_cluster, request)
    try:
        yield maker
    finally:
        maker.cleanup()


@pytest.fixture
def db(template_db, make_db) -> Database:
    """A fresh, migrated database for one test (a copy of obr_template)."""
    return make_db(template=template_db)


@pytest.fixture
def empty_db(make_db) -> Database:
    """A fresh database without the outbox schema."""
    return make_db()


# ---- the HTTP sink ------------------------------------------------------------------------


def header_values(record: dict, name: str) -> list[str]:
    """All values of header `name` (case-insensitive) in a sink record, in arrival order."""
    return [v for k, v in record["headers"] if k.lower() == name.lower()]


def body_bytes(record: dict) -> bytes:
    """The exact request body of a sink record."""
    if "body_base64" in record:
        return base64.b64decode(record["body_base64"])
    return record["body"].encode("utf-8")


class SinkServer:
    """A running obr-test-sink. .port, .base_url, .url(path)."""

    def __init__(self, tmp: Path, *args: str) -> None:
        if not SINK_BIN.exists():
            pytest.fail(f"the sink {SINK_BIN} does not exist: build it or set OBR_TEST_SINK_BIN")
        self.stderr_path = tmp / f"sink-{secrets.token_hex(3)}.log"
        self.proc = spawn([str(SINK_BIN), "--port", "0", *args], log=self.stderr_path,
                          stdout=subprocess.PIPE)
        try:
            line = read_line_with_deadline(self.proc.stdout, 10, "the sink's 'listening PORT' line",
                                           self.proc)
            m = re.fullmatch(r"listening (\d+)", line)
            assert m, f"unexpected first line from the sink: {line!r}"
        except BaseException:
            stop_process(self.proc, signal.SIGKILL)
            raise
        self.port = int(m.group(1))
        self.base_url = f"http://{LOCALHOST}:{self.port}"
        self.exit_code: int | None = None

    def url(self, path: str = "/") -> str:
        return self.base_url + path

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url(path), data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            raise AssertionError(f"sink {method} {path}: {e.code} {e.read().decode(errors='replace')}")

    def requests(self, since: int | None = None, path: str | None = None) -> list[dict]:
        """Recorded requests (oldest first), optionally only seq > since and/or one path."""
        q = f"?since={since}" if since is not None else ""
        records = self._call("GET", "/_sink/requests" + q)
        return [r for r in records if path is None or r["path"] == path]

    def count(self) -> int:
        return self._call("GET", "/_sink/count")["count"]

    def pending(self) -> int:
        """Answers still waiting on a delay or a drop."""
        return self._call("GET", "/_sink/count")["pending"]

    def reset(self) -> None:
        self._call("POST", "/_sink/reset")

    def rules(self, rules: list[dict]) -> None:
        """Replaces the answer rules (see tests/sink/sink.c for the rule format)."""
        self._call("POST", "/_sink/rules", rules)

    def get_rules(self) -> list[dict]:
        return self._call("GET", "/_sink/rules")

    def wait_for_count(self, n: int, timeout: float = 15) -> list[dict]:
        """Waits until at least n requests were recorded; returns the records."""
        try:
            wait_until(lambda: self.count() >= n, timeout, f"{n} requests at the sink",
                       interval=0.01)
        except TimeoutError as e:
            got = self.requests()
            raise AssertionError(
                f"{e}: got {len(got)}: " + ", ".join(f"{r['method']} {r['uri']}" for r in got[:20])
            ) from None
        return self.requests()

    def log(self) -> str:
        return read_text(self.stderr_path)

    def stop(self, timeout: float = 10) -> int:
        if self.exit_code is None:
            self.exit_code = stop_process(self.proc, signal.SIGTERM, timeout)
            self.proc.stdout.close()
        return self.exit_code


@pytest.fixture
def make_sink(tmp_path):
    """make_sink(*extra_args) -> SinkServer; each is stopped at teardown and must exit 0
    without sanitizer findings."""
    sinks: list[SinkServer] = []

    def make(*args: str) -> SinkServer:
        s = SinkServer(tmp_path, *args)
        sinks.append(s)
        return s

    yield make
    problems = []
    for s in sinks:
        try:
            code = s.stop()
        except AssertionError as e:
            problems.append(str(e))
            continue
        findings = sanitizer_findings(s.log())
        if code != 0 or findings:
            problems.append(f"sink on port {s.port} exited {code}:\n{tail(s.log())}")
    if problems:
        pytest.fail("\n".join(problems))


@pytest.fixture
def sink(make_sink) -> SinkServer:
    return make_sink()


# ---- the relay daemon ---------------------------------------------------------------------

READY_PHRASE = "relay ready"


class RelayProcess:
    """A running `outbox-relay run`; its stdout+stderr go to .log_path. .listen_addr is its
    /health /ready /metrics endpoint ("host:port", or "off")."""

    def __init__(self, proc: subprocess.Popen, log_path: Path, env: dict) -> None:
        self.proc = proc
        self.log_path = log_path
        self.env = env
        self.listen_addr = env.get("OUTBOX_LISTEN_ADDR", "")
        self.exit_code: int | None = None

    def http_url(self, path: str = "/health") -> str:
        """URL of the relay's own HTTP endpoint, e.g. http_url("/metrics")."""
        assert self.listen_addr and self.listen_addr != "off", "this relay's HTTP endpoint is off"
        return f"http://{self.listen_addr}{path}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return read_text(self.log_path)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait_for_log(self, pattern: str, timeout: float = 15, start: int = 0) -> re.Match:
        """Waits until the regex pattern matches the log (from character `start`)."""
        rx = re.compile(pattern)

        def found():
            m = rx.search(self.log(), start)
            if m is None and not self.alive():
                raise AssertionError(
                    f"the relay exited ({self.proc.returncode}) while waiting for /{pattern}/:\n"
                    f"{tail(self.log())}")
            return m

        try:
            return wait_until(found, timeout, f"/{pattern}/ in the relay log", interval=0.02)
        except TimeoutError as e:
            raise AssertionError(f"{e}\n{tail(self.log())}") from None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        """Sends sig (SIGTERM: graceful shutdown), waits; returns the exit code."""
        if self.exit_code is None:
            self.exit_code = stop_process(self.proc, sig, timeout)
        return self.exit_code

    def kill(self) -> int:
        return self.stop(signal.SIGKILL, 10)

    def wait(self, timeout: float = 20) -> int:
        """Waits for the relay to exit on its own; returns the exit code."""
        try:
            self.exit_code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the relay did not exit within {timeout:g}s\n{tail(self.log())}")
        _live_processes.discard(self.proc)
        return self.exit_code


def _least_privilege_url(db: "Database") -> str:
    """The URL a relay uses for db: the role of sql/roles/outbox_relay.sql, granted here (the
    script is idempotent) so databases made without the template (a crate upgrade, say) work
    too. A database without the outbox tables cannot take the grants: the relay then connects
    as postgres and meets the missing tables itself."""
    try:
        db.execute((SOURCE_ROOT / "sql" / "roles" / "outbox_relay.sql").read_text())
    except psycopg2.Error:
        return db.url
    return db.relay_url


@pytest.fixture
def relay(tmp_path, make_db, make_sink):
    """relay(db, *args, env=None, ready=True, ready_timeout=20, **env_vars) -> RelayProcess.

    Starts `outbox-relay run *args` with DATABASE_URL=db.url (db: a Database or a URL string)
    plus env/env_vars (None removes a variable), logs to tmp_path/relay-N.log and, with
    ready=True, waits for the log line containing 'relay ready'. Unless the test sets
    OUTBOX_LISTEN_ADDR, each relay gets its own reserved port for its HTTP endpoint (the
    default 9095 would collide between relays and between parallel test files); see
    RelayProcess.http_url(). Every relay is stopped at
    teardown, and the test fails if a log shows sanitizer or assertion messages.

    (make_db and make_sink are requested for the teardown order only: relays stop before the
    test's databases are dropped and its sinks stopped.)"""
    relays: list[RelayProcess] = []
    ports: list[PortLock] = []

    def start(db: "Database | str", *args: str, env: dict | None = None, ready: bool = True,
              ready_timeout: float = 20, **env_vars: Any) -> RelayProcess:
        binary = require_relay()
        url = db if isinstance(db, str) else _least_privilege_url(db)
        overrides = {**(env or {}), **env_vars}
        if "OUTBOX_LISTEN_ADDR" not in overrides and not any(
                a == "--listen-addr" or a.startswith("--listen-addr=") for a in args):
            ports.append(PortLock())
            overrides["OUTBOX_LISTEN_ADDR"] = f"{LOCALHOST}:{ports[-1].port}"
        child_env = relay_env(url, overrides)
        log_path = tmp_path / f"relay-{len(relays)}.log"
        proc = spawn([str(binary), "run", *args], log=log_path, env=child_env)
        r = RelayProcess(proc, log_path, child_env)
        relays.append(r)
        if ready:
            r.wait_for_log(re.escape(READY_PHRASE), ready_timeout)
        return r

    yield start
    problems = []
    for r in relays:
        try:
            r.stop()
        except AssertionError as e:
            problems.append(str(e))
        findings = sanitizer_findings(r.log())
        if findings:
            problems.append(f"{r.log_path.name}: " + "\n".join(findings[:10]) + "\n" + tail(r.log()))
    for p in ports:
        p.release()
    if problems:
        pytest.fail("relay teardown:\n" + "\n".join(problems))


# ---- fauxqs (SQS/SNS) ---------------------------------------------------------------------


class Fauxqs:
    """fauxqs on 127.0.0.1 plus helpers that call tests/aws/consumer.mjs (the AWS SDK)."""

    REGION = "us-east-1"
    ACCESS_KEY = "obr-test"
    SECRET_KEY = "obr-test-secret"

    def __init__(self, log_path: Path) -> None:
        self.node = os.environ.get("OBR_NODE_BIN") or shutil.which("node")
        if not self.node:
            pytest.fail("node is not on PATH (set OBR_NODE_BIN); the SQS/SNS tests need Node 20")
        if not (AWS_DIR / "node_modules" / "fauxqs" / "package.json").exists():
            pytest.fail(f"{AWS_DIR}/node_modules is missing: run `npm ci` in tests/aws first")
        self.log_path = log_path
        self.proc = spawn([self.node, "consumer.mjs", "serve", "--port", "0"], log=log_path,
                          stdout=subprocess.PIPE, cwd=AWS_DIR)
        try:
            line = read_line_with_deadline(self.proc.stdout, 30, "fauxqs' 'listening PORT' line",
                                           self.proc)
            m = re.fullmatch(r"listening (\d+)", line)
            assert m, f"unexpected first line from fauxqs: {line!r}"
            self.port = int(m.group(1))
            self.endpoint = f"http://{LOCALHOST}:{self.port}"
            wait_until(self._healthy, 30, f"fauxqs /health on {self.endpoint}", interval=0.05)
        except BaseException:
            stop_process(self.proc, signal.SIGKILL)
            raise

    def _healthy(self) -> bool:
        conn = http.client.HTTPConnection(LOCALHOST, self.port, timeout=2)
        try:
            conn.request("GET", "/health")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def log(self) -> str:
        return read_text(self.log_path)

    def env(self) -> dict:
        """AWS_* variables that point a relay at this emulator."""
        return {
            "AWS_ACCESS_KEY_ID": self.ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": self.SECRET_KEY,
            "AWS_REGION": self.REGION,
            "AWS_ENDPOINT_URL": self.endpoint,
        }

    @staticmethod
    def unique(prefix: str = "q") -> str:
        return f"{prefix}-{secrets.token_hex(4)}"

    def consumer(self, *args: str, timeout: float = 60) -> Any:
        """Runs consumer.mjs against this endpoint; returns its parsed JSON output."""
        cmd = [self.node, "consumer.mjs", "--endpoint", self.endpoint, "--region", self.REGION,
               *args]
        res = subprocess.run(cmd, cwd=AWS_DIR, capture_output=True, text=True, timeout=timeout,
                             env={**os.environ,
                                  "AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED": "true"})
        if res.returncode != 0:
            raise AssertionError(f"consumer.mjs {' '.join(args)} exited {res.returncode}:\n"
                                 f"{res.stderr}{res.stdout}")
        return json.loads(res.stdout)

    def create_queue(self, name: str, fifo: bool = False, content_dedup: bool = False) -> dict:
        """Returns {"QueueUrl", "QueueArn"}; a FIFO name gets its .fifo suffix."""
        return self.consumer("create-queue", name, *(["--fifo"] if fifo else []),
                             *(["--content-dedup"] if content_dedup else []))

    def create_topic(self, name: str, fifo: bool = False) -> str:
        return self.consumer("create-topic", name, *(["--fifo"] if fifo else []))["TopicArn"]

    def subscribe(self, topic_arn: str, queue_arn: str, raw: bool = False) -> str:
        return self.consumer("subscribe", topic_arn, queue_arn,
                             *(["--raw"] if raw else []))["SubscriptionArn"]

    def receive(self, queue_url: str, max: int = 10, wait_ms: int = 2000) -> list[dict]:
        """Reads until `max` messages or `wait_ms` without one; deletes what it read. Each:
        {MessageId, Body, MessageAttributes: {name: {DataType, StringValue}}, and for FIFO
        MessageGroupId, MessageDeduplicationId, SequenceNumber}."""
        return self.consumer("receive", queue_url, "--max", str(max), "--wait-ms", str(wait_ms),
                             timeout=wait_ms / 1000 + 60)

    def send(self, queue_url: str, body: str, group: str | None = None,
             dedup: str | None = None, attrs: dict | None = None) -> str:
        """SendMessage through the SDK; returns the MessageId."""
        return self._message("send", queue_url, body, group, dedup, attrs)

    def publish(self, topic_arn: str, body: str, group: str | None = None,
                dedup: str | None = None, attrs: dict | None = None) -> str:
        """SNS Publish through the SDK; returns the MessageId."""
        return self._message("publish", topic_arn, body, group, dedup, attrs)

    def _message(self, command, target, body, group, dedup, attrs) -> str:
        args = [command, target, body]
        if group is not None:
            args += ["--group", group]
        if dedup is not None:
            args += ["--dedup", dedup]
        for k, v in (attrs or {}).items():
            args += ["--attr", f"{k}={v}"]
        return self.consumer(*args)["MessageId"]

    def stop(self) -> int:
        code = stop_process(self.proc, signal.SIGTERM, 15)
        self.proc.stdout.close()
        return code


@pytest.fixture(scope="session")
def fauxqs(tmp_path_factory):
    server = Fauxqs(tmp_path_factory.mktemp("fauxqs") / "fauxqs.log")
    try:
        yield server
    finally:
        server.stop()


# ---- PgBouncer ----------------------------------------------------------------------------


class PgBouncer:
    """A PgBouncer in front of pg_cluster (any database name is forwarded)."""

    def __init__(self, cluster: PgCluster, workdir: Path, settings: dict) -> None:
        if not PGBOUNCER_BIN.exists():
            pytest.fail(f"{PGBOUNCER_BIN} not found (apt-get install pgbouncer or set "
                        "OBR_PGBOUNCER_BIN)")
        self.cluster = cluster
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self._port_lock = PortLock()
        self.port = self._port_lock.port
        self.logfile = self.dir / "pgbouncer.log"
        conf = {
            "listen_addr": LOCALHOST,
            "listen_port": self.port,
            "unix_socket_dir": str(self.dir),
            "auth_type": "trust",
            "auth_file": str(self.dir / "userlist.txt"),
            "admin_users": "postgres",
            "pool_mode": "transaction",
            "max_client_conn": 500,
            "default_pool_size": 5,
            "ignore_startup_parameters": "extra_float_digits,options",
            "logfile": str(self.logfile),
            "pidfile": str(self.dir / "pgbouncer.pid"),
        }
        conf.update(settings)
        (self.dir / "userlist.txt").write_text('"postgres" ""\n')
        lines = ["[databases]", f"* = host={cluster.host} port={cluster.port} user=postgres", "",
                 "[pgbouncer]"] + [f"{k} = {v}" for k, v in conf.items()]
        self.ini = self.dir / "pgbouncer.ini"
        self.ini.write_text("\n".join(lines) + "\n")
        chown_to_postgres(self.dir)
        self.proc = spawn([str(PGBOUNCER_BIN), str(self.ini)], log=self.dir / "pgbouncer.out",
                          as_postgres=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        last: list[str] = []

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"pgbouncer exited {self.proc.returncode}:\n"
                                     f"{read_text(self.dir / 'pgbouncer.out')}{tail(self.log())}")
            try:
                with contextlib.closing(psycopg2.connect(self.dsn("postgres"), connect_timeout=2)) as c:
                    with c.cursor() as cur:
                        cur.execute("SELECT 1")
                        return True
            except psycopg2.OperationalError as e:
                last[:] = [str(e).strip()]
                return False

        try:
            wait_until(ready, 30, f"pgbouncer on port {self.port}", interval=0.05)
        except TimeoutError as e:
            raise AssertionError(f"{e}; last error {last}\n{tail(self.log())}") from None

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host={LOCALHOST} port={self.port} user=postgres dbname={dbname}"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@{LOCALHOST}:{self.port}/{urllib.parse.quote(dbname)}"

    def admin(self, command: str) -> list[tuple]:
        """Runs a console command (SHOW POOLS, SHOW CONFIG...) on the admin database."""
        with contextlib.closing(psycopg2.connect(self.dsn("pgbouncer"), connect_timeout=5)) as c:
            c.autocommit = True
            with c.cursor() as cur:
                cur.execute(command)
                return cur.fetchall() if cur.description else []

    def log(self) -> str:
        return read_text(self.logfile)

    def stop(self) -> int:
        try:
            # SIGINT: safe shutdown (wait for transactions); SIGTERM: immediate.
            return stop_process(self.proc, signal.SIGTERM, 15)
        finally:
            self._port_lock.release()


@pytest.fixture
def pgbouncer(pg_cluster):
    """pgbouncer(**settings) -> PgBouncer (transaction pooling, default_pool_size=5 unless
    overridden); stopped at teardown."""

    def start(**settings: Any) -> PgBouncer:
        # Not under tmp_path: pgbouncer runs as postgres and pytest's tmp dirs are root-only,
        # and its unix socket needs a short path.
        workdir = socket_dir("obr-pgbouncer-")
        dirs.append(workdir)
        b = PgBouncer(pg_cluster, workdir, settings)
        bouncers.append(b)
        return b

    bouncers: list[PgBouncer] = []
    dirs: list[Path] = []
    try:
        yield start
    finally:
        for b in bouncers:
            b.stop()
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
