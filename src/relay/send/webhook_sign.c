/*
 * webhook_sign.c - Standard Webhooks signing with libcrypto's HMAC-SHA256 and base64.
 */
#include "send/webhook_sign.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#define PREFIX "whsec_"
#define MIN_KEY 16       /* the scheme asks for 24 to 64 random bytes; fewer is a mistake */

/* Decodes standard base64 (with padding) into out; returns the length or -1. */
static int b64_decode(const char *in, size_t len, unsigned char *out, size_t cap)
{
	if (len == 0 || len % 4 != 0 || len / 4 * 3 > cap + 2)
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
