"""Security defaults: the destination host allow-list, refusing private addresses, TLS
verification (on unless turned off, with a warning)."""

import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import wait_until
from relay_util import env


def _parked(db, key):
    return db.query_dicts("SELECT dead_at, last_error, attempts FROM outbox WHERE idempotent_key = %s", (key,))[0]


def test_allowed_hosts_parks_rows_for_other_hosts(db, sink, relay):
    port = sink.url("/").split(":")[2].split("/")[0]
    r = relay(db, env=env(OUTBOX_ALLOWED_HOSTS="127.0.0.1, *.example.com"))
    ok = db.insert_http_rows(sink.url("/ok"), 1)[0]
    bad = db.insert_http_rows(f"http://localhost:{port}/not-allowed", 1)[0]
    wait_until(lambda: _parked(db, bad.idempotent_key)["dead_at"] is not None, 10, "the row for localhost parked")
    sink.wait_for_count(1)
    assert [q["path"] for q in sink.requests()] == ["/ok"]
    row = _parked(db, bad.idempotent_key)
    assert "OUTBOX_ALLOWED_HOSTS" in row["last_error"] and "localhost" in row["last_error"]
    wait_until(lambda: db.scalar("SELECT processed_at IS NOT NULL FROM outbox WHERE idempotent_key = %s",
                                 (ok.idempotent_key,)), 10, "the allowed row processed")
    assert r.alive()


def test_deny_private_addresses_refuses_loopback_after_dns(db, sink, relay):
    r = relay(db, env=env(OUTBOX_DENY_PRIVATE_ADDRESSES="true"))
    # "localhost" resolves to a loopback address: refused after DNS, before connecting
    port = sink.url("/").split(":")[2].split("/")[0]
    row = db.insert_http_rows(f"http://localhost:{port}/private", 1)[0]
    wait_until(lambda: _parked(db, row.idempotent_key)["dead_at"] is not None, 10, "the row parked")
    err = _parked(db, row.idempotent_key)["last_error"]
    assert "OUTBOX_DENY_PRIVATE_ADDRESSES" in err and ("127.0.0.1" in err or "::1" in err), err
    assert sink.count() == 0
    assert r.alive()


@pytest.fixture
def tls_server(tmp_path):
    """An HTTPS endpoint on 127.0.0.1 with a self-signed certificate for 'localhost'."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    hits = []

    class H(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length", 0)))
            hits.append(self.path)
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"https://127.0.0.1:{srv.server_address[1]}", cert, hits
    srv.shutdown()


def test_tls_is_verified_by_default(db, relay, tls_server):
    url, cert, hits = tls_server
    relay(db, env=env(OUTBOX_FAILURE_LIMIT="1"))
    row = db.insert_http_rows(url + "/tls", 1)[0]
    wait_until(lambda: _parked(db, row.idempotent_key)["dead_at"] is not None, 10, "the row parked")
    assert "certificate" in _parked(db, row.idempotent_key)["last_error"].lower()
    assert hits == []


def test_tls_with_the_ca_file_succeeds(db, relay, tls_server):
    url, cert, hits = tls_server
    relay(db, env=env(OUTBOX_CA_FILE=str(cert)))
    db.insert_http_rows(url + "/tls", 1)
    wait_until(lambda: hits == ["/tls"], 10, "the HTTPS request")


def test_tls_verify_off_works_and_warns(db, relay, tls_server):
    url, cert, hits = tls_server
    r = relay(db, env=env(OUTBOX_TLS_VERIFY="false"))
    assert "OUTBOX_TLS_VERIFY is off" in r.log()
    db.insert_http_rows(url + "/insecure", 1)
    wait_until(lambda: hits == ["/insecure"], 10, "the HTTPS request")


# ---- proxies: only the operator's, never the environment's ------------------------------------


def test_environment_proxy_is_not_used(db, make_sink, relay):
    """HTTPS_PROXY, HTTP_PROXY, ALL_PROXY in the relay's environment (where a row's request
    would leave through a host nobody checked) are ignored: requests go to the destination."""
    dest, proxy = make_sink(), make_sink()
    p = proxy.url("/").rstrip("/")
    relay(db, env=env(http_proxy=p, HTTP_PROXY=p, HTTPS_PROXY=p, https_proxy=p, ALL_PROXY=p, all_proxy=p,
                      NO_PROXY="", no_proxy=""))
    row = db.insert_http_rows(dest.url("/direct"), 1)[0]
    wait_until(lambda: db.scalar("SELECT processed_at IS NOT NULL FROM outbox WHERE idempotent_key = %s",
                                 (row.idempotent_key,)), 10, "the row processed")
    assert [q["path"] for q in dest.requests()] == ["/direct"]
    assert proxy.count() == 0


def test_configured_proxy_is_used_for_http_destinations(db, make_sink, relay):
    """OUTBOX_HTTP_PROXY carries destination requests (the proxy connects to the host)."""
    proxy = make_sink()
    relay(db, env=env(OUTBOX_HTTP_PROXY=proxy.url("/").rstrip("/")))
    # 192.0.2.1 (TEST-NET-1) is never connected to: the proxy, on 127.0.0.1, answers for it
    row = db.insert_http_rows("http://192.0.2.1/through-the-proxy", 1)[0]
    (rec,) = proxy.wait_for_count(1)
    assert rec["path"] == "/through-the-proxy" and rec["uri"].startswith("http://192.0.2.1/"), rec
    wait_until(lambda: db.scalar("SELECT processed_at IS NOT NULL FROM outbox WHERE idempotent_key = %s",
                                 (row.idempotent_key,)), 10, "the row processed")


def test_private_address_check_applies_to_the_destination_through_a_proxy(db, make_sink, relay):
    """With a proxy curl connects to the proxy (the operator's, allowed on loopback): the
    destination's host is resolved and checked by the relay itself, literal or name."""
    proxy = make_sink()
    relay(db, env=env(OUTBOX_HTTP_PROXY=proxy.url("/").rstrip("/"), OUTBOX_DENY_PRIVATE_ADDRESSES="true"))
    public = db.insert_http_rows("http://192.0.2.1/public", 1)[0]
    literal = db.insert_http_rows("http://127.0.0.1:9/private-literal", 1)[0]
    name = db.insert_http_rows("http://localhost:9/private-name", 1)[0]
    for row in (literal, name):
        wait_until(lambda: _parked(db, row.idempotent_key)["dead_at"] is not None, 10, "the private row parked")
        err = _parked(db, row.idempotent_key)["last_error"]
        assert "OUTBOX_DENY_PRIVATE_ADDRESSES" in err and ("127.0.0.1" in err or "::1" in err), err
    wait_until(lambda: db.scalar("SELECT processed_at IS NOT NULL FROM outbox WHERE idempotent_key = %s",
                                 (public.idempotent_key,)), 10, "the public row processed")
    assert [q["path"] for q in proxy.requests()] == ["/public"]


def test_bad_proxy_setting_stops_the_relay(db, relay):
    r = relay(db, env=env(OUTBOX_HTTP_PROXY="ftp://user:hunter2@proxy:21"), ready=False)
    assert r.wait(20) != 0
    log = r.log()
    assert "OUTBOX_HTTP_PROXY" in log and "hunter2" not in log
