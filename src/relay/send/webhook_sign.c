/*
 * webhook_sign.c - Standard Webhooks signing with libcrypto's HMAC-SHA256 and base64.
 */
#include "send/webhook_sign.h"

#include "send/sender.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PREFIX "whsec_"
#define MIN_KEY 16       /* the scheme asks for 24 to 64 random bytes; fewer is a mistake */

/* Decodes standard base64 (with padding) into out; returns the length or -1. */
static int b64_decode(const char *in, size_t len, unsigned char *out, size_t cap)
{
	if (len == 0 || len % 4 != 0 || len / 4 * 3 > cap + 2)
		return -1;
	/* the standard alphabet, "=" only as the last one or two: EVP_DecodeBlock alone would also
	 * take whitespace around the text, which the scheme's verifiers do not */
	size_t pad = 0;
	for (size_t i = 0; i < len; i++) {
		char c = in[i];
		if (c == '=')
			pad++;
		else if (pad || !((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
		                  c == '/'))
			return -1;
	}
	if (pad > 2)
		return -1;
	unsigned char buf[OBR_WEBHOOK_MAX_KEY + 3];
	if (len / 4 * 3 > sizeof(buf))
		return -1;
	int n = EVP_DecodeBlock(buf, (const unsigned char *)in, (int)len);
	if (n < 0)
		return -1;
	/* EVP_DecodeBlock counts padding as zero bytes */
	if (in[len - 1] == '=')
		n--;
	if (in[len - 2] == '=')
		n--;
	if ((size_t)n > cap) {
		OPENSSL_cleanse(buf, sizeof(buf));
		return -1;
	}
	memcpy(out, buf, (size_t)n);
	OPENSSL_cleanse(buf, sizeof(buf));
	return n;
}

int obr_webhook_keys_parse(const char *spec, struct obr_webhook_keys *out, char *err, size_t errlen)
{
	memset(out, 0, sizeof(*out));
	const char *p = spec;
	size_t index = 0;
	while (*p) {
		while (*p == ' ')
			p++;
		if (!*p)
			break;
		size_t len = strcspn(p, " ");
		index++;
		if (out->n == OBR_WEBHOOK_MAX_SECRETS) {
			snprintf(err, errlen, "invalid value for OUTBOX_WEBHOOK_SECRET: more than %d secrets",
			         OBR_WEBHOOK_MAX_SECRETS);
			goto fail;
		}
		if (len <= strlen(PREFIX) || strncmp(p, PREFIX, strlen(PREFIX)) != 0) {
			snprintf(err, errlen, "invalid value for OUTBOX_WEBHOOK_SECRET: secret %zu does not start with "
			                      "\"" PREFIX "\" (the format is " PREFIX "<base64>)", index);
			goto fail;
		}
		int n = b64_decode(p + strlen(PREFIX), len - strlen(PREFIX), out->key[out->n], OBR_WEBHOOK_MAX_KEY);
		if (n < 0) {
			snprintf(err, errlen, "invalid value for OUTBOX_WEBHOOK_SECRET: secret %zu is not base64 of at "
			                      "most %d bytes", index, OBR_WEBHOOK_MAX_KEY);
			goto fail;
		}
		if (n < MIN_KEY) {
			snprintf(err, errlen, "invalid value for OUTBOX_WEBHOOK_SECRET: secret %zu has %d bytes; use at "
			                      "least %d random bytes (24 to 64 recommended)", index, n, MIN_KEY);
			goto fail;
		}
		out->len[out->n++] = (size_t)n;
		p += len;
	}
	if (out->n == 0) {
		snprintf(err, errlen, "invalid value for OUTBOX_WEBHOOK_SECRET: no secret given");
		goto fail;
	}
	return 0;
fail:
	obr_webhook_keys_clear(out);
	return -1;
}

/* HMAC-SHA256 of prefix || body under key; the body is not copied. */
static int hmac_sha256(const unsigned char *key, size_t keylen, const char *prefix, size_t plen, const char *body,
                       size_t body_len, unsigned char mac[32])
{
	EVP_MAC *hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
	EVP_MAC_CTX *ctx = hmac ? EVP_MAC_CTX_new(hmac) : NULL;
	char digest[] = "SHA256";
	OSSL_PARAM params[] = { OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
	                        OSSL_PARAM_construct_end() };
	size_t outl = 0;
	int ok = ctx && EVP_MAC_init(ctx, key, keylen, params) &&
	         EVP_MAC_update(ctx, (const unsigned char *)prefix, plen) &&
	         EVP_MAC_update(ctx, (const unsigned char *)body, body_len) && EVP_MAC_final(ctx, mac, &outl, 32) &&
	         outl == 32;
	EVP_MAC_CTX_free(ctx);
	EVP_MAC_free(hmac);
	return ok ? 0 : -1;
}

int obr_webhook_sign(const struct obr_webhook_keys *keys, const char *id, int64_t timestamp, const char *body,
                     size_t body_len, char *out, size_t outlen)
{
	char prefix[160];
	int plen = snprintf(prefix, sizeof(prefix), "%s.%" PRId64 ".", id, timestamp);
	if (plen < 0 || (size_t)plen >= sizeof(prefix) || outlen == 0)
		return -1;
	size_t o = 0;
	out[0] = '\0';
	for (size_t i = 0; i < keys->n; i++) {
		unsigned char mac[32];
		if (hmac_sha256(keys->key[i], keys->len[i], prefix, (size_t)plen, body, body_len, mac))
			return -1;
		char b64[45];
		EVP_EncodeBlock((unsigned char *)b64, mac, (int)sizeof(mac));
		int w = snprintf(out + o, outlen - o, "%sv1,%s", i ? " " : "", b64);
		if (w < 0 || (size_t)w >= outlen - o)
			return -1;
		o += (size_t)w;
	}
	return 0;
}

void obr_webhook_keys_clear(struct obr_webhook_keys *keys)
{
	OPENSSL_cleanse(keys, sizeof(*keys));
	keys->n = 0;
}

/* ---- the signing sender: wraps the HTTP sender ---- */

struct signer {
	struct obr_sender base;
	struct obr_sender *inner;
	struct obr_webhook_keys keys;
	int64_t (*now_fn)(void);
};

static int64_t unix_now(void)
{
	return (int64_t)time(NULL);
}

static int signer_submit(void *self, const struct obr_send_request *req, obr_send_done_fn done, void *arg,
                         struct obr_send_result *refused)
{
	struct signer *s = self;
	const struct obr_destination *dest = req->dest;
	if (dest->kind != OBR_DEST_HTTP || dest->no_signing)
		return obr_sender_submit(s->inner, req, done, arg, refused);

	/* the plan's headers plus ours: submit copies everything, so the stack is enough. The row
	 * format keeps rows from setting these names, so nothing is sent twice. */
	struct obr_header headers[OBR_MAX_HEADERS + 3];
	char name_id[] = "webhook-id", name_ts[] = "webhook-timestamp", name_sig[] = "webhook-signature";
	char id[128], ts[24], sig[OBR_WEBHOOK_SIGNATURE_MAX];
	int n = dest->nheaders < OBR_MAX_HEADERS ? dest->nheaders : OBR_MAX_HEADERS;
	int64_t now = s->now_fn();
	snprintf(ts, sizeof(ts), "%" PRId64, now);
	int idlen = snprintf(id, sizeof(id), "%s", req->idempotent_key ? req->idempotent_key : "");
	if (idlen <= 0 || (size_t)idlen >= sizeof(id) ||
	    obr_webhook_sign(&s->keys, id, now, req->payload ? req->payload : "", req->payload_len, sig, sizeof(sig))) {
		/* set by hand: sender.c is not linked where this file is (the engine's unit test) */
		refused->status = OBR_SEND_RETRY;
		refused->retry_after_ms = -1;
		snprintf(refused->message, sizeof(refused->message), "could not sign the request (webhook signature)");
		return -1;
	}
	memcpy(headers, dest->headers, (size_t)n * sizeof(*headers));
	headers[n++] = (struct obr_header){ .name = name_id, .value = id };
	headers[n++] = (struct obr_header){ .name = name_ts, .value = ts };
	headers[n++] = (struct obr_header){ .name = name_sig, .value = sig };
	struct obr_destination signed_dest = *dest;
	signed_dest.headers = headers;
	signed_dest.nheaders = n;
	signed_dest.cap = n;
	struct obr_send_request signed_req = *req;
	signed_req.dest = &signed_dest;
	int rc = obr_sender_submit(s->inner, &signed_req, done, arg, refused);
	OPENSSL_cleanse(sig, sizeof(sig));
	return rc;
}

static int signer_in_flight(const void *self)
{
	const struct signer *s = self;
	return obr_sender_in_flight(s->inner);
}

static void signer_abort_all(void *self)
{
	struct signer *s = self;
	obr_sender_abort_all(s->inner);
}

static void signer_free(void *self)
{
	struct signer *s = self;
	obr_sender_free(s->inner);
	obr_webhook_keys_clear(&s->keys);
	free(s);
}

static const struct obr_sender_ops signer_ops = {
	.submit = signer_submit,
	.in_flight = signer_in_flight,
	.abort_all = signer_abort_all,
	.free = signer_free,
};

struct obr_sender *obr_webhook_signer_new(struct obr_sender *inner, const struct obr_webhook_keys *keys,
                                          int64_t (*now_fn)(void))
{
	struct signer *s = inner ? calloc(1, sizeof(*s)) : NULL;
	if (!s) {
		obr_sender_free(inner);
		return NULL;
	}
	s->base = (struct obr_sender){ &signer_ops, s };
	s->inner = inner;
	s->keys = *keys;
	s->now_fn = now_fn ? now_fn : unix_now;
	return &s->base;
}
