"""SigV4 signatures checked by an independent implementation, and every AWS credential source
against a local stand-in: environment (with and without a session token), web identity (STS
AssumeRoleWithWebIdentity), container credentials, EC2 instance metadata (IMDSv2); the chain's
order, refresh before expiry, and that no secret ends up in the log or in last_error.

Every signed request goes through tests/aws/sigv4-verifier.mjs, which recomputes its signature
with the AWS SDK's @smithy/signature-v4 and the secret it knows, and forwards it to fauxqs only
when it matches. The credential stand-ins register each key they hand out with the verifier
before answering. No test reaches 169.254.x: each one disables the instance-metadata source or
points AWS_EC2_METADATA_SERVICE_ENDPOINT at a 127.0.0.1 stand-in (aws_env checks it).
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import secrets
import threading
import time
import urllib.parse

import pytest

from conftest import LOCALHOST, PortLock
from relay_util import insert, keys, wait_processed
from test_aws_delivery import (KEY_ID, SECRET, aws_env, make_verifier,  # noqa: F401 (fixtures)
                               forward_to, receive_all, sns, sqs, standin, verifier, wait_row)


def iso(seconds_from_now: float) -> str:
    t = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=seconds_from_now)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


class Issuer:
    """Hands out numbered temporary credentials (key, secret, session token) that expire after
    `lifetime` seconds; each is registered with the verifier before it is handed out."""

    def __init__(self, verifier, prefix: str, lifetime: float = 3600, register: bool = True) -> None:
        self.verifier = verifier
        self.prefix = prefix
        self.lifetime = lifetime
        self.register = register
        self.issued: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()

    def issue(self) -> tuple[str, str, str, str]:
        with self.lock:
            n = len(self.issued) + 1
            cred = (f"{self.prefix}{n:04d}", f"secret-{secrets.token_hex(16)}", f"token-{secrets.token_hex(32)}")
            self.issued.append(cred)
        if self.register:
            self.verifier.add_keys({cred[0]: (cred[1], cred[2])})
        return (*cred, iso(self.lifetime))

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.issued)

    def secrets(self) -> list[str]:
        return [s for _, s, _ in self.issued] + [t for _, _, t in self.issued]


def creds_json(cred, code: bool = False) -> str:
    key, secret, token, exp = cred
    body = {"AccessKeyId": key, "SecretAccessKey": secret, "Token": token, "Expiration": exp,
            "RoleArn": "arn:aws:iam::000000000000:role/relay"}
    if code:
        body = {"Code": "Success", "LastUpdated": iso(0), "Type": "AWS-HMAC", **body}
    return json.dumps(body)


def container_handler(issuer: Issuer, token: str | None):
    def handle(method, path, headers, body):
        if method != "GET" or path != "/v1/credentials":
            return 404, {}, "not found"
        if token is not None and headers.get("authorization") != token:
            return 401, {}, "bad authorization"
        return 200, {"Content-Type": "application/json"}, creds_json(issuer.issue())
    return handle


class Imds:
    """IMDSv2: PUT /latest/api/token, then the role name and its credentials with that token."""

    def __init__(self, issuer: Issuer, role: str = "relay-role") -> None:
        self.issuer = issuer
        self.role = role
        self.token = f"imds-{secrets.token_hex(16)}"

    def __call__(self, method, path, headers, body):
        if path == "/latest/api/token":
            if method != "PUT" or not headers.get("x-aws-ec2-metadata-token-ttl-seconds"):
                return 400, {}, "token requests are PUT with a TTL"
            return 200, {"Content-Type": "text/plain"}, self.token
        if headers.get("x-aws-ec2-metadata-token") != self.token:
            return 401, {}, "missing or wrong token"
        base = "/latest/meta-data/iam/security-credentials/"
        if method == "GET" and path == base:
            return 200, {"Content-Type": "text/plain"}, self.role + "\n"
        if method == "GET" and path == base + self.role:
            return 200, {"Content-Type": "text/plain"}, creds_json(self.issuer.issue(), code=True)
        return 404, {}, "not found"


class Sts:
    """STS AssumeRoleWithWebIdentity (Query protocol, XML answers)."""

    def __init__(self, issuer: Issuer, web_token: str, role_arn: str, session: str | None = None) -> None:
        self.issuer = issuer
        self.web_token = web_token
        self.role_arn = role_arn
        self.session = session
        self.forms: list[dict] = []

    def __call__(self, method, path, headers, body):
        form = dict(urllib.parse.parse_qsl(body.decode(), keep_blank_values=True))
        self.forms.append(form)
        problems = []
        if method != "POST" or "x-www-form-urlencoded" not in headers.get("content-type", ""):
            problems.append("not a form POST")
        if form.get("Action") != "AssumeRoleWithWebIdentity" or form.get("Version") != "2011-06-15":
            problems.append("wrong action/version")
        if form.get("RoleArn") != self.role_arn:
            problems.append("wrong role")
        if self.session and form.get("RoleSessionName") != self.session or not form.get("RoleSessionName"):
            problems.append("wrong session name")
        if "authorization" in headers:
            problems.append("AssumeRoleWithWebIdentity is not signed")
        if form.get("WebIdentityToken") != self.web_token:
            return 400, {"Content-Type": "text/xml"}, (
                "<ErrorResponse><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code>"
                "<Message>token rejected</Message></Error></ErrorResponse>")
        if problems:
            return 400, {"Content-Type": "text/xml"}, (
                "<ErrorResponse><Error><Type>Sender</Type><Code>ValidationError</Code>"
                f"<Message>{'; '.join(problems)}</Message></Error></ErrorResponse>")
        key, secret, token, exp = self.issuer.issue()
        return 200, {"Content-Type": "text/xml"}, (
            '<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
            "<AssumeRoleWithWebIdentityResult>"
            "<SubjectFromWebIdentityToken>system:serviceaccount:ns:relay</SubjectFromWebIdentityToken>"
            "<AssumedRoleUser><Arn>arn:aws:sts::000000000000:assumed-role/relay/s</Arn>"
            "<AssumedRoleId>AROA:s</AssumedRoleId></AssumedRoleUser>"
            f"<Credentials><SessionToken>{token}</SessionToken><SecretAccessKey>{secret}</SecretAccessKey>"
            f"<Expiration>{exp}</Expiration><AccessKeyId>{key}</AccessKeyId></Credentials>"
            "<Audience>sts.amazonaws.com</Audience></AssumeRoleWithWebIdentityResult>"
            "<ResponseMetadata><RequestId>x</RequestId></ResponseMetadata>"
            "</AssumeRoleWithWebIdentityResponse>")


def no_static_keys(**more) -> dict:
    return {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, **more}


def targets(fauxqs):
    """A queue, and a topic whose raw subscription feeds a second queue."""
    q = fauxqs.create_queue(fauxqs.unique("cq"))
    sub = fauxqs.create_queue(fauxqs.unique("cs"))
    topic = fauxqs.create_topic(fauxqs.unique("ct"))
    fauxqs.subscribe(topic, sub["QueueArn"], raw=True)
    return q, sub, topic


def deliver_both(db, fauxqs, q, sub, topic, n: int = 2) -> list[dict]:
    """n rows to the queue and n to the topic; waits until processed and received."""
    rows = insert(db, [{"destinations": [sqs(q["QueueUrl"])], "payload": f"q{i}"} for i in range(n)] +
                  [{"destinations": [sns(topic)], "payload": f"t{i}"} for i in range(n)])
    wait_processed(db, keys(rows))
    receive_all(fauxqs, q["QueueUrl"], n)
    receive_all(fauxqs, sub["QueueUrl"], n)
    return rows


def assert_secrets_absent(relay_proc, db, values) -> None:
    """None of the secret values appears in the relay's log or any row's last_error."""
    log = relay_proc.log()
    errors = "\n".join(r["last_error"] or "" for r in db.outbox())
    for v in values:
        assert v and v not in log, f"a secret ({v[:6]}...) is in the relay log"
        assert v not in errors, f"a secret ({v[:6]}...) is in last_error"


# ---- signatures ---------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "FwoGZXIvYXdzEXAMPLE-session-token/with+chars="])
def test_signatures_verify_with_and_without_session_token(db, relay, fauxqs, make_verifier, token):
    """SQS and SNS requests signed by libcurl (CURLOPT_AWS_SIGV4) verify with the AWS SDK's
    signer; with AWS_SESSION_TOKEN they carry a signed X-Amz-Security-Token."""
    v = make_verifier({KEY_ID: (SECRET, token)})
    q, sub, topic = targets(fauxqs)
    r = relay(db, env=aws_env(v.endpoint, AWS_SESSION_TOKEN=token))
    deliver_both(db, fauxqs, q, sub, topic)
    recs = v.requests()
    assert {x["service"] for x in recs} == {"sqs", "sns"}
    for x in recs:
        assert x["ok"], x
        assert x["accessKeyId"] == KEY_ID
        assert x["sessionToken"] == (token is not None)
        assert ("x-amz-security-token" in x["signedHeaders"].split(";")) == (token is not None)
    assert_secrets_absent(r, db, [SECRET] + ([token] if token else []))


def test_wrong_secret_fails_with_signature_error_and_is_retried(db, relay, fauxqs, verifier):
    """Signed with a secret the verifier does not know: both services answer 403
    SignatureDoesNotMatch; the rows keep being retried (not parked) with that code in
    last_error, and the secret never shows up."""
    wrong = "wrong-secret-" + secrets.token_hex(8)
    q, sub, topic = targets(fauxqs)
    r = relay(db, env=aws_env(verifier.endpoint, AWS_SECRET_ACCESS_KEY=wrong, OUTBOX_FAILURE_LIMIT=50))
    rq, rt = insert(db, [{"destinations": [sqs(q["QueueUrl"])], "payload": "q"},
                         {"destinations": [sns(topic)], "payload": "t"}])
    for row, svc in ((rq, "SQS"), (rt, "SNS")):
        got = wait_row(db, row["idempotent_key"], lambda x: x["attempts"] >= 2, "two failed attempts")
        assert f"{svc} SignatureDoesNotMatch" in got["last_error"], got["last_error"]
        assert got["dead_at"] is None and got["processed_at"] is None
    assert not any(x["ok"] for x in verifier.requests())
    # the verifier forwards only what it accepted, and it accepted nothing: an empty queue
    # follows from the line above, the short receive only confirms it
    assert fauxqs.receive(q["QueueUrl"], max=1, wait_ms=300) == []
    assert_secrets_absent(r, db, [wrong])


# ---- credential sources ------------------------------------------------------------------------


@pytest.mark.parametrize("token_from", ["file", "env"])
def test_container_credentials(db, relay, fauxqs, verifier, standin, tmp_path, token_from):
    """AWS_CONTAINER_CREDENTIALS_FULL_URI with the Authorization token from
    AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE (EKS Pod Identity) or _TOKEN: the credentials it
    hands out sign SQS and SNS requests, session token included; fetched once (they last an
    hour)."""
    auth = f"Bearer-{secrets.token_hex(12)}"
    issuer = Issuer(verifier, "ASIACONTAINER")
    ep = standin(container_handler(issuer, auth))
    token_env = {}
    if token_from == "file":
        f = tmp_path / "pod-identity-token"
        f.write_text(auth + "\n")
        token_env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"] = str(f)
    else:
        token_env["AWS_CONTAINER_AUTHORIZATION_TOKEN"] = auth
    q, sub, topic = targets(fauxqs)
    r = relay(db, env=aws_env(verifier.endpoint, **no_static_keys(
        AWS_CONTAINER_CREDENTIALS_FULL_URI=ep.url + "/v1/credentials", **token_env)))
    deliver_both(db, fauxqs, q, sub, topic)
    assert issuer.count == 1
    recs = verifier.requests()
    assert recs and all(x["ok"] and x["accessKeyId"] == "ASIACONTAINER0001" and x["sessionToken"] for x in recs)
    r.wait_for_log(r"AWS credentials from container, temporary")
    assert_secrets_absent(r, db, issuer.secrets() + [auth])


def test_instance_metadata_credentials(db, relay, fauxqs, verifier, standin):
    """IMDSv2 through AWS_EC2_METADATA_SERVICE_ENDPOINT: a PUT for the session token, then the
    role name and the role's credentials with that token."""
    issuer = Issuer(verifier, "ASIAIMDS")
    imds = Imds(issuer)
    ep = standin(imds)
    q, sub, topic = targets(fauxqs)
    r = relay(db, env=aws_env(verifier.endpoint, **no_static_keys(
        AWS_EC2_METADATA_DISABLED=None, AWS_EC2_METADATA_SERVICE_ENDPOINT=ep.url)))
    deliver_both(db, fauxqs, q, sub, topic)
    assert issuer.count == 1
    assert [(x["method"], x["path"]) for x in ep.requests] == [
        ("PUT", "/latest/api/token"),
        ("GET", "/latest/meta-data/iam/security-credentials/"),
        ("GET", "/latest/meta-data/iam/security-credentials/relay-role"),
    ]
    assert all(x["ok"] and x["accessKeyId"] == "ASIAIMDS0001" for x in verifier.requests())
    r.wait_for_log(r"AWS credentials from instance metadata")
    assert_secrets_absent(r, db, issuer.secrets() + [imds.token])


def test_web_identity_credentials(db, relay, fauxqs, verifier, standin, tmp_path):
    """AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN (+ AWS_ROLE_SESSION_NAME): an unsigned STS
    AssumeRoleWithWebIdentity at AWS_ENDPOINT_URL_STS; its credentials sign the requests."""
    web_token = "eyJhbGciOiJSUzI1NiJ9." + secrets.token_urlsafe(64) + ".sig"
    tf = tmp_path / "token"
    tf.write_text(web_token)
    role = "arn:aws:iam::000000000000:role/outbox-relay"
    issuer = Issuer(verifier, "ASIASTS")
    sts = Sts(issuer, web_token, role, session="relay-session")
    ep = standin(sts)
    q, sub, topic = targets(fauxqs)
    r = relay(db, env=aws_env(verifier.endpoint, **no_static_keys(
        AWS_WEB_IDENTITY_TOKEN_FILE=str(tf), AWS_ROLE_ARN=role, AWS_ROLE_SESSION_NAME="relay-session",
        AWS_ENDPOINT_URL_STS=ep.url)))
    deliver_both(db, fauxqs, q, sub, topic)
    assert issuer.count == 1
    assert all(x["ok"] and x["accessKeyId"] == "ASIASTS0001" for x in verifier.requests())
    r.wait_for_log(r"AWS credentials from web identity")
    assert_secrets_absent(r, db, issuer.secrets() + [web_token])


def test_web_identity_rejected_token_is_reported(db, relay, fauxqs, verifier, standin, tmp_path):
    """STS refusing the token: the rows fail (retryably) with the chain's message, which names
    the STS error but not the token."""
    tf = tmp_path / "token"
    tf.write_text("not-the-expected-token")
    ep = standin(Sts(Issuer(verifier, "X"), "expected", "arn:aws:iam::000000000000:role/r"))
    q = fauxqs.create_queue(fauxqs.unique("wi"))
    r = relay(db, env=aws_env(verifier.endpoint, **no_static_keys(
        AWS_WEB_IDENTITY_TOKEN_FILE=str(tf), AWS_ROLE_ARN="arn:aws:iam::000000000000:role/r",
        AWS_ENDPOINT_URL_STS=ep.url)))
    (row,) = insert(db, [{"destinations": [sqs(q["QueueUrl"])], "payload": "x"}])
    got = wait_row(db, row["idempotent_key"], lambda x: x["attempts"] >= 1, "a failed attempt")
    assert "no AWS credentials found (tried: environment, web identity, container, instance metadata)" \
        in got["last_error"]
    assert "web identity: HTTP 400, STS InvalidIdentityToken: token rejected" in got["last_error"], got["last_error"]
    assert got["dead_at"] is None
    assert_secrets_absent(r, db, ["not-the-expected-token"])


@pytest.mark.parametrize("source", ["container", "imds", "sts"])
def test_short_lived_credentials_are_refreshed_before_expiry(db, relay, fauxqs, verifier, standin, tmp_path,
                                                             source):
    """Credentials that expire 6 s after they are handed out are fetched again before they
    expire (at half their lifetime), while rows keep flowing: every request verifies, later
    requests use newer keys, and no row fails."""
    issuer = Issuer(verifier, f"ASIA{source.upper()}", lifetime=6)
    extra: dict = {}
    if source == "container":
        ep = standin(container_handler(issuer, None))
        extra["AWS_CONTAINER_CREDENTIALS_FULL_URI"] = ep.url + "/v1/credentials"
    elif source == "imds":
        ep = standin(Imds(issuer))
        extra.update(AWS_EC2_METADATA_DISABLED=None, AWS_EC2_METADATA_SERVICE_ENDPOINT=ep.url)
    else:
        tf = tmp_path / "token"
        tf.write_text("web-token")
        ep = standin(Sts(issuer, "web-token", "arn:aws:iam::000000000000:role/r"))
        extra.update(AWS_WEB_IDENTITY_TOKEN_FILE=str(tf), AWS_ROLE_ARN="arn:aws:iam::000000000000:role/r",
                     AWS_ENDPOINT_URL_STS=ep.url)
    q = fauxqs.create_queue(fauxqs.unique("rf"))
    relay(db, env=aws_env(verifier.endpoint, **no_static_keys(**extra)))
    rows = []
    deadline = time.monotonic() + 20
    while issuer.count < 4 and time.monotonic() < deadline:
        rows += insert(db, [{"destinations": [sqs(q["QueueUrl"])], "payload": f"n{len(rows)}"}])
        time.sleep(0.3)  # paces the stream of rows; the loop waits for the 4th fetch (a condition)
    assert issuer.count >= 4, f"only {issuer.count} fetches in 20 s"
    got = wait_processed(db, keys(rows))
    assert all(x["attempts"] == 1 for x in got.values()), "a row failed while credentials were refreshed"
    recs = verifier.requests()
    assert all(x["ok"] for x in recs), [x for x in recs if not x["ok"]]
    used = [x["accessKeyId"] for x in recs]
    assert len(set(used)) >= 3, used
    receive_all(fauxqs, q["QueueUrl"], len(rows))


def test_rejected_temporary_credentials_are_fetched_again(db, relay, fauxqs, verifier, standin):
    """The service rejects the first temporary key (InvalidClientTokenId: the verifier does not
    know it): the relay drops those credentials, fetches new ones, and the retry succeeds."""
    issuer = Issuer(verifier, "ASIAROT")
    first = {"done": False}

    def handler(method, path, headers, body):
        if not first["done"]:
            first["done"] = True
            issuer.register = False   # the first key stays unknown to the verifier
            status = container_handler(issuer, None)(method, path, headers, body)
            issuer.register = True
            return status
        return container_handler(issuer, None)(method, path, headers, body)

    ep = standin(handler)
    q = fauxqs.create_queue(fauxqs.unique("rot"))
    r = relay(db, env=aws_env(verifier.endpoint, **no_static_keys(
        AWS_CONTAINER_CREDENTIALS_FULL_URI=ep.url + "/v1/credentials")))
    (row,) = insert(db, [{"destinations": [sqs(q["QueueUrl"])], "payload": "x"}])
    got = wait_processed(db, [row["idempotent_key"]])[row["idempotent_key"]]
    assert got["attempts"] == 2
    assert issuer.count == 2
    assert [x["accessKeyId"] for x in verifier.requests()] == ["ASIAROT0001", "ASIAROT0002"]
    r.wait_for_log("AWS rejected the credentials from container")


# ---- the chain ------------------------------------------------------------------------------


def test_chain_order_environment_first(db, relay, fauxqs, verifier, standin, tmp_path):
    """Environment keys win: a configured web identity, container and metadata service are not
    asked at all."""
    asked = standin(lambda *a: (500, {}, "must not be asked"))
    tf = tmp_path / "token"
    tf.write_text("t")
    q = fauxqs.create_queue(fauxqs.unique("env"))
    relay(db, env=aws_env(verifier.endpoint, AWS_CONTAINER_CREDENTIALS_FULL_URI=asked.url + "/v1/credentials",
                          AWS_WEB_IDENTITY_TOKEN_FILE=str(tf), AWS_ROLE_ARN="arn:aws:iam::0:role/r",
                          AWS_ENDPOINT_URL_STS=asked.url, AWS_EC2_METADATA_DISABLED=None,
                          AWS_EC2_METADATA_SERVICE_ENDPOINT=asked.url))
    (row,) = insert(db, [{"destinations": [sqs(q["QueueUrl"])], "payload": "x"}])
    wait_processed(db, [row["idempotent_key"]])
    assert asked.requests == []
    assert all(x["accessKeyId"] == KEY_ID for x in verifier.requests())


def test_chain_order_web_identity_before_container_before_imds(db, relay, fauxqs, verifier, standin, tmp_path):
    """Web identity comes before the container endpoint, which comes before instance metadata;
    a configured source that fails is passed over for the next one."""
    tf = tmp_path / "token"
    tf.write_text("web")
    sts_issuer, c_issuer, i_issuer = Issuer(verifier, "ASIAW"), Issuer(verifier, "ASIAC"), Issuer(verifier, "ASIAI")
    sts = standin(Sts(sts_issuer, "web", "arn:aws:iam::000000000000:role/r"))
    cont = standin(container_handler(c_issuer, None))
    imds = standin(Imds(i_issuer))
    q = fauxqs.create_queue(fauxqs.unique("ord"))
    common = dict(AWS_CONTAINER_CREDENTIALS_FULL_URI=cont.url + "/v1/credentials",
                  AWS_EC2_METADATA_DISABLED=None, AWS_EC2_METADATA_SERVICE_ENDPOINT=imds.url)
    relay(db, env=aws_env(verifier.endpoint, **no_static_keys(
        AWS_WEB_IDENTITY_TOKEN_FILE=str(tf), AWS_ROLE_ARN="arn:aws:iam::000000000000:role/r",
        AWS_ENDPOINT_URL_STS=sts.url, **common)))
    (row,) = insert(db, [{"destinations": [sqs(q["QueueUrl"])], "payload": "x"}])
    wait_processed(db, [row["idempotent_key"]])
    assert (sts_issuer.count, c_issuer.count, i_issuer.count) == (1, 0, 0)
    assert imds.requests == [] and cont.requests == []


def test_failing_container_endpoint_falls_through_to_instance_metadata(db, relay, fauxqs, verifier, standin):
    broken = standin(lambda *a: (500, {"Content-Type": "text/plain"}, "container agent down"))
    issuer = Issuer(verifier, "ASIAFALL")
    imds = standin(Imds(issuer))
    q = fauxqs.create_queue(fauxqs.unique("fall"))
    r = relay(db, env=aws_env(verifier.endpoint, **no_static_keys(
        AWS_CONTAINER_CREDENTIALS_FULL_URI=broken.url + "/v1/credentials",
        AWS_EC2_METADATA_DISABLED=None, AWS_EC2_METADATA_SERVICE_ENDPOINT=imds.url)))
    (row,) = insert(db, [{"destinations": [sqs(q["QueueUrl"])], "payload": "x"}])
    got = wait_processed(db, [row["idempotent_key"]])[row["idempotent_key"]]
    assert got["attempts"] == 1
    assert broken.count() == 1 and issuer.count == 1
    assert all(x["accessKeyId"] == "ASIAFALL0001" for x in verifier.requests())
    r.wait_for_log("AWS credentials from instance metadata")


def test_container_full_uri_must_be_local_over_http(db, relay, fauxqs, verifier):
    """An http:// FULL_URI on a host that is neither loopback nor the ECS/EKS agent is refused
    (the token would travel in clear text): the source fails with that reason."""
    q = fauxqs.create_queue(fauxqs.unique("far"))
    relay(db, env=aws_env(verifier.endpoint, **no_static_keys(
        AWS_CONTAINER_CREDENTIALS_FULL_URI="http://192.0.2.1/creds", AWS_CONTAINER_AUTHORIZATION_TOKEN="t")))
    (row,) = insert(db, [{"destinations": [sqs(q["QueueUrl"])], "payload": "x"}])
    got = wait_row(db, row["idempotent_key"], lambda x: x["attempts"] >= 1, "a failed attempt")
    assert "container: AWS_CONTAINER_CREDENTIALS_FULL_URI must be https://" in got["last_error"], got["last_error"]


def test_no_credentials_fail_retryably(db, relay, fauxqs, verifier):
    """No source configured (metadata disabled): SQS and SNS rows fail with the chain's message
    and are retried, not parked; nothing is sent."""
    q = fauxqs.create_queue(fauxqs.unique("none"))
    topic = fauxqs.create_topic(fauxqs.unique("nonet"))
    relay(db, env=aws_env(verifier.endpoint, **no_static_keys()))
    rows = insert(db, [{"destinations": [sqs(q["QueueUrl"])], "payload": "q"},
                       {"destinations": [sns(topic)], "payload": "t"}])
    for row in rows:
        got = wait_row(db, row["idempotent_key"], lambda x: x["attempts"] >= 2, "two failed attempts")
        assert got["last_error"].endswith(
            "no AWS credentials found (tried: environment, web identity, container, instance metadata)"), \
            got["last_error"]
        assert got["dead_at"] is None
    assert verifier.requests() == []


def test_secrets_never_logged_or_stored(db, relay, fauxqs, verifier, standin, tmp_path):
    """A run at debug level with known secret values (secret key, session token, a container
    authorization token) in which every request is refused, so errors are logged and stored:
    none of the secrets appears in the log, in last_error or in /metrics."""
    token = "session-" + secrets.token_hex(20)
    wrong_secret = "wrong-" + secrets.token_hex(20)
    auth = "auth-" + secrets.token_hex(20)
    q, sub, topic = targets(fauxqs)
    # the verifier knows the key with another token: every request fails, errors get logged
    verifier.add_keys({KEY_ID: (SECRET, "another-token")})
    admin = PortLock()
    try:
        r = relay(db, env=aws_env(verifier.endpoint, AWS_SECRET_ACCESS_KEY=wrong_secret, AWS_SESSION_TOKEN=token,
                                  AWS_CONTAINER_AUTHORIZATION_TOKEN=auth, OUTBOX_FAILURE_LIMIT=2,
                                  OUTBOX_LISTEN_ADDR=f"{LOCALHOST}:{admin.port}"))
    finally:
        admin.release()
    rows = insert(db, [{"destinations": [sqs(q["QueueUrl"])], "payload": "q"},
                       {"destinations": [sns(topic)], "payload": "t"}])
    for row in rows:
        got = wait_row(db, row["idempotent_key"], lambda x: x["dead_at"] is not None, "the row parked")
        assert "InvalidClientTokenId" in got["last_error"], got["last_error"]
    assert_secrets_absent(r, db, [token, wrong_secret, auth])
    conn = http.client.HTTPConnection(LOCALHOST, admin.port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        metrics = resp.read().decode()
    finally:
        conn.close()
    assert resp.status == 200 and "outbox_relay_parked_total" in metrics
    for v in (token, wrong_secret, auth, SECRET):
        assert v not in metrics


# ---- OUTBOX_DENY_PRIVATE_ADDRESSES ------------------------------------------------------------


def test_deny_private_addresses_applies_to_queue_urls_not_to_configured_endpoints(db, relay, fauxqs, verifier,
                                                                                   standin):
    """With OUTBOX_DENY_PRIVATE_ADDRESSES=true a queue URL from a row that points at a private
    address is refused (and parked) before connecting (without an endpoint override it is not
    an https:// AWS host either, which is refused first); endpoints the operator configured
    (AWS_ENDPOINT_URL_*) and credential sources are not row data and still work."""
    issuer = Issuer(verifier, "ASIADENY")
    creds = standin(container_handler(issuer, None))
    q = fauxqs.create_queue(fauxqs.unique("deny"))
    private_q = f"http://127.0.0.1:{fauxqs.port}/000000000000/{fauxqs.unique('private')}"
    r1 = relay(db, env=aws_env(None, OUTBOX_DENY_PRIVATE_ADDRESSES="true"))
    (row,) = insert(db, [{"destinations": [sqs(private_q)], "payload": "x"}])
    got = wait_row(db, row["idempotent_key"], lambda x: x["dead_at"] is not None, "the row parked")
    assert "not an AWS endpoint" in got["last_error"], got["last_error"]
    assert got["attempts"] == 1
    r1.stop()

    topic = fauxqs.create_topic(fauxqs.unique("denyt"))
    fauxqs.subscribe(topic, q["QueueArn"], raw=True)
    relay(db, env=aws_env(verifier.endpoint, **no_static_keys(
        OUTBOX_DENY_PRIVATE_ADDRESSES="true", AWS_CONTAINER_CREDENTIALS_FULL_URI=creds.url + "/v1/credentials")))
    rows = insert(db, [{"destinations": [sqs(q["QueueUrl"])], "payload": "q"},
                       {"destinations": [sns(topic)], "payload": "t"}])
    wait_processed(db, keys(rows))
    receive_all(fauxqs, q["QueueUrl"], 2)
    assert issuer.count == 1


# ---- OUTBOX_HTTP_PROXY ------------------------------------------------------------------------


def test_credential_requests_never_use_the_proxy(db, relay, fauxqs, verifier, standin):
    """OUTBOX_HTTP_PROXY carries SQS/SNS requests, never credential requests: the container
    endpoint is asked directly, the proxy sees only the signed SQS request."""
    issuer = Issuer(verifier, "ASIAPROXY")
    creds = standin(container_handler(issuer, None))

    def forward_proxy(method, path, headers, body):
        u = urllib.parse.urlsplit(path)  # a proxy gets the absolute URL
        return forward_to(f"{u.scheme}://{u.netloc}", method, u.path or "/", headers, body)

    proxy = standin(forward_proxy)
    q = fauxqs.create_queue(fauxqs.unique("proxied"))
    relay(db, env=aws_env(verifier.endpoint, **no_static_keys(
        OUTBOX_HTTP_PROXY=proxy.url, AWS_CONTAINER_CREDENTIALS_FULL_URI=creds.url + "/v1/credentials")))
    (row,) = insert(db, [{"destinations": [sqs(q["QueueUrl"])], "payload": "through the proxy"}])
    wait_processed(db, [row["idempotent_key"]])
    receive_all(fauxqs, q["QueueUrl"], 1)
    assert issuer.count == 1 and creds.count("GET", "/v1/credentials") == 1
    seen = [r["path"] for r in proxy.requests]
    assert seen and all(p.startswith(verifier.endpoint) for p in seen), seen
