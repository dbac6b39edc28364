"""Connecting never hangs and never blocks the loop: an address that drops SYNs is given up
after connect_timeout and the next one is tried (two hosts in the URL, or two addresses of one
name), and a slow name server does not stop /health from answering.

The black hole needs no root: a TCP socket listening on loopback with backlog 0 that never
accepts, whose accept queue is filled first; the kernel drops later SYNs, so connect() hangs
(checked by black_hole() before it is used). The slow name server is a UDP stand-in on
127.0.0.1 that holds every query until the test releases it; the relay is pointed at it with
OBR_TEST_RESOLV_CONF (a resolv.conf naming it), the only way to make a lookup slow on purpose
without root. Nothing here waits for a duration: the tests wait for conditions."""

from __future__ import annotations

import errno
import re
import select
import socket
import struct
import subprocess
import threading
import urllib.parse
import urllib.request

import pytest

from conftest import (BUILD_ROOT, READY_PHRASE, _least_privilege_url, relay_env, sanitizer_findings,
                      wait_until)
from relay_util import ready_code


class BlackHole:
    """A loopback address:port that drops SYNs (see the module docstring)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, port))
        self.listener.listen(0)
        self.host, self.port = self.listener.getsockname()
        self.fillers: list[socket.socket] = []
        # the accept queue of a backlog-0 listener holds one connection: fill it, and a
        # second for good measure (it stays in SYN-SENT)
        for _ in range(2):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.connect_ex((self.host, self.port))
            self.fillers.append(s)
        wait_until(self._hangs, 10, f"a connect to {self.host}:{self.port} to hang")

    def _hangs(self) -> bool:
        """True when a fresh connect() is still in progress after a second."""
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.setblocking(False)
        try:
            rc = probe.connect_ex((self.host, self.port))
            if rc not in (errno.EINPROGRESS, errno.EWOULDBLOCK):
                return False
            _, writable, _ = select.select([], [probe], [], 1.0)
            return not writable
        finally:
            probe.close()

    def close(self) -> None:
        for s in self.fillers:
            s.close()
        self.listener.close()


@pytest.fixture
def black_hole():
    holes: list[BlackHole] = []

    def make(host: str = "127.0.0.1", port: int = 0) -> BlackHole:
        holes.append(BlackHole(host, port))
        return holes[-1]

    yield make
    for h in holes:
        h.close()


class SlowNameServer:
    """A DNS server on 127.0.0.1 (UDP) that answers A queries for `name` with `addrs`, AAAA
    with no data, anything else with NXDOMAIN; while held, it keeps every query unanswered."""

    def __init__(self, name: str, addrs: list[str]) -> None:
        self.name = name.lower()
        self.addrs = addrs
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held = True
        self.queries = 0
        self.waiting: list[tuple[bytes, tuple]] = []
        self.lock = threading.Lock()
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _answer(self, query: bytes) -> bytes:
        qid, _flags, qd = struct.unpack("!HHH", query[:6])
        pos, labels = 12, []
        while query[pos]:
            n = query[pos]
            labels.append(query[pos + 1:pos + 1 + n].decode("ascii", "replace"))
            pos += 1 + n
        qtype, _qclass = struct.unpack("!HH", query[pos + 1:pos + 5])
        question = query[12:pos + 5]
        name = ".".join(labels).lower()
        answers = b""
        count = 0
        rcode = 0
        if name != self.name:
            rcode = 3
        elif qtype == 1:
            for a in self.addrs:
                answers += struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(a)
                count += 1
        return struct.pack("!HHHHHH", qid, 0x8180 | rcode, 1, count, 0, 0) + question + answers

    def _serve(self) -> None:
        self.sock.settimeout(0.05)
        while not self.stopping:
            try:
                data, peer = self.sock.recvfrom(512)
            except socket.timeout:
                data = None
            with self.lock:
                if data is not None and len(data) > 12:
                    self.queries += 1
                    self.waiting.append((data, peer))
                if self.held:
                    continue
                todo, self.waiting = self.waiting, []
            for q, p in todo:
                self.sock.sendto(self._answer(q), p)

    def release(self) -> None:
        with self.lock:
            self.held = False

    def stop(self) -> None:
        self.stopping = True
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def name_server():
    servers: list[SlowNameServer] = []

    def make(name: str, addrs: list[str]) -> SlowNameServer:
        servers.append(SlowNameServer(name, addrs))
        return servers[-1]

    yield make
    for s in servers:
        s.stop()


def relay_role_url(db, hostport: str, query: str) -> str:
    """The URL the relay fixture would use for db (its role granted), with other hosts
    ("h:p,h2:p2") and a query string."""
    user = _least_privilege_url(db).split("://", 1)[1].split("@", 1)[0]
    return f"postgresql://{user}@{hostport}/{db.name}?{query}"


def health_ok(r) -> bool:
    try:
        with urllib.request.urlopen(r.http_url("/health"), timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def test_first_host_black_holes_second_connects(db, relay, black_hole):
    """host=<black hole>,<server>: each connection gives the first up after connect_timeout
    and connects to the second: the relay gets ready."""
    hole = black_hole()
    cluster = db.cluster
    url = relay_role_url(db, f"{hole.host}:{hole.port},{cluster.host}:{cluster.port}",
                         "connect_timeout=2&target_session_attrs=read-write")
    r = relay(url, ready=False, OUTBOX_LOG_LEVEL="info")
    # the kernel would retry the SYN for about two minutes: long before, the relay is ready
    r.wait_for_log(READY_PHRASE, timeout=30)
    assert ready_code(r) == 200
    assert f'connecting to host "{hole.host}" ({hole.host}) port {hole.port}, trying the next' in r.log()


def test_first_host_refuses_second_connects(db, relay):
    """host=<closed port>,<server>: libpq moves on to the second host with a new socket, which
    the relay must watch (it kept watching the first one and stayed "connecting")."""
    closed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    try:
        cluster = db.cluster
        url = relay_role_url(db, f"127.0.0.1:{closed.getsockname()[1]},{cluster.host}:{cluster.port}",
                             "connect_timeout=30")
        r = relay(url, ready=False, OUTBOX_LOG_LEVEL="info")
        r.wait_for_log(READY_PHRASE, timeout=20)
        assert ready_code(r) == 200
        assert "timeout expired" not in r.log()
    finally:
        closed.close()


def test_slow_name_server_health_answers_then_connects(db, relay, black_hole, name_server, tmp_path):
    """The host is a name whose lookup the name server holds: /health answers meanwhile (the
    loop is not blocked) and /ready says 503. Released, the name gives two addresses, the
    first black-holing: the relay skips it after connect_timeout and gets ready."""
    cluster = db.cluster
    # same port as the server, on another loopback address: the name's first address
    hole = black_hole("127.0.0.2", cluster.port)
    ns = name_server("db.obr-connect.test", [hole.host, cluster.host])
    conf = tmp_path / "resolv.conf"
    conf.write_text(f"nameserver 127.0.0.1:{ns.port}\n")
    url = relay_role_url(db, f"db.obr-connect.test:{cluster.port}", "connect_timeout=2")
    r = relay(url, ready=False, OUTBOX_LOG_LEVEL="debug", OBR_TEST_RESOLV_CONF=str(conf))
    wait_until(lambda: ns.queries >= 1, 20, "the relay's first DNS query")
    # the query is held: the loop still serves /health, and /ready tells the truth
    for _ in range(3):
        wait_until(lambda: health_ok(r), 5, "/health to answer while the lookup is held")
    assert ready_code(r) == 503
    assert READY_PHRASE not in r.log()
    ns.release()
    r.wait_for_log(r"timeout expired after 2 s connecting to host \"db\.obr-connect\.test\" \(127\.0\.0\.2\)",
                   timeout=40)
    r.wait_for_log(READY_PHRASE, timeout=40)
    assert ready_code(r) == 200


@pytest.mark.parametrize("how", ["socket_directory", "hosts_file"])
def test_hosts_that_need_no_name_server(db, relay, name_server, tmp_path, how):
    """A Unix socket directory, and a name the hosts file knows (localhost), connect while
    the configured name server holds every query: neither is sent to it."""
    cluster = db.cluster
    ns = name_server("unused.obr-connect.test", [])
    conf = tmp_path / "resolv.conf"
    conf.write_text(f"nameserver 127.0.0.1:{ns.port}\n")
    if how == "socket_directory":
        url = relay_role_url(db, "", f"host={urllib.parse.quote(str(cluster.base), safe='')}&port={cluster.port}")
    else:
        if "localhost" not in open("/etc/hosts").read():
            pytest.skip("/etc/hosts has no localhost entry")
        url = relay_role_url(db, f"localhost:{cluster.port}", "connect_timeout=2")
    r = relay(url, ready=False, OUTBOX_LOG_LEVEL="debug", OBR_TEST_RESOLV_CONF=str(conf))
    r.wait_for_log(READY_PHRASE, timeout=30)
    assert ns.queries == 0


PG_CLIENT_BIN = BUILD_ROOT / "tests" / "pgclient" / "obr-test-pg"


def pg_client(db, scenario: str, url: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs tests/pgclient (one db/pg.c connection) against db as the relay's role."""
    assert PG_CLIENT_BIN.exists(), f"{PG_CLIENT_BIN} is missing: build it (ninja -C build)"
    url = url or relay_role_url(db, f"{db.cluster.host}:{db.cluster.port}", "connect_timeout=5")
    return subprocess.run([str(PG_CLIENT_BIN), url, scenario], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, env=relay_env(None, env))


def assert_clean(res: subprocess.CompletedProcess) -> None:
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    assert not sanitizer_findings(res.stderr), res.stderr


def test_statement_timeout_option_and_sqlstate(db):
    """obr_pg_set_statement_timeout applies to every session; the owner sees the SQLSTATE."""
    res = pg_client(db, "statement-timeout")
    assert_clean(res)
    assert res.stdout.splitlines() == ["sqlstate 57014"], res.stdout + res.stderr


def test_free_does_not_call_the_owner_back(db):
    """obr_pg_free while a statement runs drops it without calling the owner (which is being
    torn down), and leaks nothing."""
    res = pg_client(db, "free-pending")
    assert_clean(res)
    assert res.stdout.splitlines() == ["freed"], res.stdout + res.stderr


def test_reset_right_after_connect_backs_off_exponentially(db):
    """A session reset right after it came up (a read-only server, say) does not clear the
    backoff: the delays the log announces double (with jitter in [d/2, d])."""
    res = pg_client(db, "reset-backoff")
    assert_clean(res)
    delays = [int(d) for d in re.findall(r"connection lost, reconnecting in (\d+) ms: test reset", res.stderr)]
    assert len(delays) == 4, res.stderr
    for i, d in enumerate(delays):
        assert 100 * 2 ** i // 2 <= d <= 100 * 2 ** i, delays


def test_service_file_hosts_are_left_to_libpq(db, tmp_path):
    """service=NAME: the hosts are in pg_service.conf, which only libpq reads; the relay
    passes the connection string through and libpq connects."""
    user = _least_privilege_url(db).split("://", 1)[1].split("@", 1)[0]
    services = tmp_path / "pg_service.conf"
    services.write_text(f"[obrtest]\nhost={db.cluster.host}\nport={db.cluster.port}\n"
                        f"dbname={db.name}\nuser={user}\n")
    res = pg_client(db, "statement-timeout", url="service=obrtest", env={"PGSERVICEFILE": str(services)})
    assert_clean(res)
    assert res.stdout.splitlines() == ["sqlstate 57014"], res.stdout + res.stderr
