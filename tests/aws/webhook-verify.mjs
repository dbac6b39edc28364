#!/usr/bin/env node
// Test-only: checks requests the relay signed with the reference verifier of the Standard
// Webhooks scheme, the npm package standardwebhooks (new Webhook(secret).verify(body, headers)).
//
//   node webhook-verify.mjs < input.json
//
// input:  {"secrets": ["whsec_...", ...], "requests": [{"body_base64": "...", "headers": [[name, value], ...]}, ...]}
// output: one JSON array, per request an array with, per secret, "ok" (the payload verified
//         and parsed as JSON equal to the body) or the verifier's error message.
// Secrets are never printed.

import { Webhook } from "standardwebhooks";

let input = "";
for await (const chunk of process.stdin) input += chunk;
const { secrets, requests } = JSON.parse(input);

const out = requests.map((req) => {
  const body = Buffer.from(req.body_base64, "base64").toString("utf8");
  const headers = {};
  for (const [name, value] of req.headers) {
    // a name sent twice would be a relay bug: keep both so the verifier sees the mess
    const key = name.toLowerCase();
    headers[key] = key in headers ? `${headers[key]}, ${value}` : value;
  }
  return secrets.map((secret) => {
    try {
      const parsed = new Webhook(secret).verify(body, headers);
      return JSON.stringify(parsed) === JSON.stringify(JSON.parse(body)) ? "ok" : "verified, but another payload";
    } catch (e) {
      return `${e.name}: ${e.message}`;
    }
  });
});
process.stdout.write(JSON.stringify(out) + "\n");
