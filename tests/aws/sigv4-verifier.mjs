#!/usr/bin/env node
// Test-only SigV4 checkpoint for outbox-relay's SQS/SNS tests. fauxqs does not check
// signatures, so this endpoint sits in front of it: for every request it recomputes the AWS
// Signature Version 4 with the AWS SDK's own signer (@smithy/signature-v4 with
// @aws-crypto/sha256-js), from exactly what it received (method, path, query, the headers the
// request says it signed, the body bytes) and the secret it knows for the access key. A
// mismatch, an unknown key, a missing or wrong session token, a wrong region or service, or a
// stale date is answered 403 with an AWS-style error (JSON for SQS, XML for SNS); a request
// that verifies is forwarded to the upstream (fauxqs) and its answer relayed as is.
//
//   node sigv4-verifier.mjs --forward URL [--port N] [--region R] [--key AKID:SECRET[:TOKEN]]...
//
// Prints "listening PORT" once bound to 127.0.0.1. Control API (never forwarded):
//   GET  /_verifier/requests   JSON array of records, oldest first: {seq, service, action,
//                              entries, bytes (body size), accessKeyId, sessionToken (bool), signedHeaders, ok,
//                              reason, status}
//   POST /_verifier/keys       body {"AKID": {"secret": "...", "token": "..."|null}, ...}: adds keys
//   POST /_verifier/reset      forgets the records
// Secrets are never printed.

import http from "node:http";
import { SignatureV4 } from "@smithy/signature-v4";
import { HttpRequest } from "@smithy/protocol-http";
import { Sha256 } from "@aws-crypto/sha256-js";

function parseArgs(argv) {
  const opt = { key: [], port: "0", region: "us-east-1" };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith("--") || i + 1 >= argv.length) throw new Error(`bad argument ${a}`);
    const name = a.slice(2);
    const value = argv[++i];
    if (name === "key") opt.key.push(value);
    else opt[name] = value;
  }
  if (!opt.forward) throw new Error("--forward URL is required");
  return opt;
}

const opt = parseArgs(process.argv.slice(2));
const upstream = new URL(opt.forward);
const keys = new Map(); // access key id -> {secret, token}
for (const k of opt.key) {
  const [id, secret, ...token] = k.split(":");
  keys.set(id, { secret, token: token.length ? token.join(":") : null });
}
const records = [];
let seq = 0;

const AUTH_RE =
  /^AWS4-HMAC-SHA256 Credential=([^/]+)\/(\d{8})\/([^/]+)\/([^/]+)\/aws4_request, ?SignedHeaders=([a-z0-9;_.-]+), ?Signature=([0-9a-f]{64})$/;

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => resolve(Buffer.concat(chunks)));
    req.on("error", reject);
  });
}

function amzDate(s) {
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(s ?? "");
  if (!m) return null;
  return new Date(Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +m[6]));
}

// What the request is: service, action and number of batch entries.
function describe(req, body) {
  const ct = req.headers["content-type"] ?? "";
  if (ct.includes("x-amz-json-1.0")) {
    let entries = null;
    try {
      const j = JSON.parse(body.toString("utf8"));
      if (Array.isArray(j.Entries)) entries = j.Entries.length;
    } catch {
      // not JSON: fauxqs will say so
    }
    return { service: "sqs", action: (req.headers["x-amz-target"] ?? "").replace("AmazonSQS.", ""), entries };
  }
  if (ct.includes("x-www-form-urlencoded")) {
    const p = new URLSearchParams(body.toString("utf8"));
    const ids = new Set();
    for (const k of p.keys()) {
      const m = /^PublishBatchRequestEntries\.member\.(\d+)\.Id$/.exec(k);
      if (m) ids.add(m[1]);
    }
    return { service: "sns", action: p.get("Action") ?? "", entries: p.get("Action") === "PublishBatch" ? ids.size : null };
  }
  return { service: "?", action: "", entries: null };
}

async function verify(req, body, what) {
  const auth = req.headers["authorization"];
  if (!auth) return { code: "MissingAuthenticationToken", reason: "no Authorization header" };
  const m = AUTH_RE.exec(auth);
  if (!m) return { code: "IncompleteSignature", reason: "malformed Authorization header" };
  const [, accessKeyId, scopeDate, region, service, signedList, signature] = m;
  const rec = { accessKeyId, signedHeaders: signedList };
  const key = keys.get(accessKeyId);
  if (!key) return { ...rec, code: "InvalidClientTokenId", reason: "unknown access key" };
  if (service !== what.service) return { ...rec, code: "SignatureDoesNotMatch", reason: `scope service ${service}` };
  if (region !== opt.region) return { ...rec, code: "SignatureDoesNotMatch", reason: `scope region ${region}` };
  const date = amzDate(req.headers["x-amz-date"]);
  if (!date) return { ...rec, code: "IncompleteSignature", reason: "no valid X-Amz-Date" };
  if (req.headers["x-amz-date"].slice(0, 8) !== scopeDate)
    return { ...rec, code: "SignatureDoesNotMatch", reason: "scope date differs from X-Amz-Date" };
  if (Math.abs(Date.now() - date.getTime()) > 15 * 60 * 1000)
    return { ...rec, code: "RequestExpired", reason: "X-Amz-Date is more than 15 minutes off" };
  const signed = signedList.split(";");
  if (!signed.includes("host") || !signed.includes("x-amz-date"))
    return { ...rec, code: "SignatureDoesNotMatch", reason: "host and x-amz-date must be signed" };
  const token = req.headers["x-amz-security-token"];
  rec.sessionToken = token !== undefined;
  if ((key.token ?? null) !== (token ?? null))
    return { ...rec, code: "InvalidClientTokenId", reason: token ? "wrong or unexpected session token" : "session token missing" };
  if (token !== undefined && !signed.includes("x-amz-security-token"))
    return { ...rec, code: "SignatureDoesNotMatch", reason: "x-amz-security-token must be signed" };

  // The request as received: only the headers it claims to have signed (a signed header that
  // was not sent stays absent, as AWS would see it).
  const url = new URL(req.url, "http://placeholder");
  const headers = {};
  for (const name of signed) {
    const v = req.headers[name];
    if (v !== undefined) headers[name] = Array.isArray(v) ? v.join(",") : v;
  }
  const query = {};
  for (const [k, v] of url.searchParams) query[k] = v;
  const [hostname, port] = (req.headers.host ?? "").split(":");
  const request = new HttpRequest({
    method: req.method,
    protocol: "http:",
    hostname,
    port: port ? Number(port) : undefined,
    path: url.pathname,
    query,
    headers,
    body,
  });
  const signer = new SignatureV4({
    credentials: { accessKeyId, secretAccessKey: key.secret, sessionToken: key.token ?? undefined },
    region,
    service,
    sha256: Sha256,
    uriEscapePath: true,
    applyChecksum: false,
  });
  const out = await signer.sign(request, {
    signingDate: date,
    signableHeaders: new Set(signed),
    signingRegion: region,
    signingService: service,
  });
  const mine = /SignedHeaders=([^,]+), Signature=([0-9a-f]{64})/.exec(out.headers["authorization"]);
  if (!mine || mine[1] !== signedList || mine[2] !== signature)
    return {
      ...rec,
      code: "SignatureDoesNotMatch",
      reason: mine && mine[1] !== signedList ? `signed headers differ: sent ${signedList}, present ${mine[1]}` : "signature differs",
    };
  return { ...rec, ok: true };
}

function reject(res, what, code, reason) {
  const message = `The request signature we calculated does not match the signature you provided (${reason})`;
  if (what.service === "sns") {
    res.writeHead(403, { "content-type": "text/xml" });
    res.end(
      `<ErrorResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/"><Error><Type>Sender</Type>` +
        `<Code>${code}</Code><Message>${message.replace(/[<>&]/g, " ")}</Message></Error>` +
        `<RequestId>verifier</RequestId></ErrorResponse>`,
    );
  } else {
    res.writeHead(403, { "content-type": "application/x-amz-json-1.0" });
    res.end(JSON.stringify({ __type: `com.amazon.coral.service#${code}`, message }));
  }
}

function forward(req, body, res) {
  const headers = { ...req.headers, host: upstream.host, "content-length": String(body.length) };
  const up = http.request(
    { hostname: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers },
    (ur) => {
      res.writeHead(ur.statusCode ?? 502, ur.headers);
      ur.pipe(res);
    },
  );
  up.on("error", (e) => {
    res.writeHead(502, { "content-type": "text/plain" });
    res.end(`upstream: ${e.message}`);
  });
  up.end(body);
}

async function handle(req, res) {
  const body = await readBody(req);
  if (req.url.startsWith("/_verifier/")) {
    if (req.method === "GET" && req.url === "/_verifier/requests") {
      res.writeHead(200, { "content-type": "application/json" });
      return res.end(JSON.stringify(records));
    }
    if (req.method === "POST" && req.url === "/_verifier/keys") {
      for (const [id, k] of Object.entries(JSON.parse(body.toString("utf8"))))
        keys.set(id, { secret: k.secret, token: k.token ?? null });
      res.writeHead(204);
      return res.end();
    }
    if (req.method === "POST" && req.url === "/_verifier/reset") {
      records.length = 0;
      res.writeHead(204);
      return res.end();
    }
    res.writeHead(404);
    return res.end();
  }
  const what = describe(req, body);
  let v;
  try {
    v = await verify(req, body, what);
  } catch (e) {
    v = { code: "SignatureDoesNotMatch", reason: `verifier error: ${e.message}` };
  }
  const rec = {
    seq: ++seq,
    service: what.service,
    action: what.action,
    entries: what.entries,
    bytes: body.length,
    accessKeyId: v.accessKeyId ?? null,
    sessionToken: v.sessionToken ?? false,
    signedHeaders: v.signedHeaders ?? null,
    ok: v.ok === true,
    reason: v.ok ? null : `${v.code}: ${v.reason}`,
  };
  records.push(rec);
  if (!v.ok) {
    rec.status = 403;
    return reject(res, what, v.code, v.reason);
  }
  rec.status = "forwarded";
  forward(req, body, res);
}

const server = http.createServer((req, res) => {
  handle(req, res).catch((e) => {
    res.writeHead(500, { "content-type": "text/plain" });
    res.end(String(e?.message ?? e));
  });
});
server.listen(Number(opt.port), "127.0.0.1", () => {
  process.stdout.write(`listening ${server.address().port}\n`);
});
const stop = () => {
  server.close(() => process.exit(0));
  server.closeAllConnections();
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
