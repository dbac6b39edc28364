/*
 * webhook_sign.h - Standard Webhooks signatures (standardwebhooks.com) for HTTP deliveries:
 * webhook-id, webhook-timestamp and webhook-signature, an HMAC-SHA256 of "id.timestamp.body"
 * under each configured secret (OUTBOX_WEBHOOK_SECRET), so receivers can verify the sender and
 * reject replays. HMAC and base64 come from OpenSSL's libcrypto.
 *
 * Secrets are never printed: error messages name the setting and the position of a bad secret,
 * never its text.
 */
#ifndef OBR_SEND_WEBHOOK_SIGN_H
#define OBR_SEND_WEBHOOK_SIGN_H

#include <stddef.h>
#include <stdint.h>

#define OBR_WEBHOOK_MAX_SECRETS 4       /* a rotation needs two; a few more for slow rollouts */
#define OBR_WEBHOOK_MAX_KEY 64          /* bytes of one decoded secret */
/* "v1," + base64 of 32 bytes (44) per secret, separated by spaces, and the NUL */
#define OBR_WEBHOOK_SIGNATURE_MAX (OBR_WEBHOOK_MAX_SECRETS * 48 + 1)

struct obr_webhook_keys {
	size_t n;
	size_t len[OBR_WEBHOOK_MAX_SECRETS];
	unsigned char key[OBR_WEBHOOK_MAX_SECRETS][OBR_WEBHOOK_MAX_KEY];
};

/* Parses "whsec_<base64> [whsec_<base64> ...]" (space-separated). Returns 0, or -1 with a
 * message in err that names OUTBOX_WEBHOOK_SECRET and never quotes a secret. */
int obr_webhook_keys_parse(const char *spec, struct obr_webhook_keys *out, char *err, size_t errlen);

/* Writes the webhook-signature value for one attempt: "v1,<sig>" per key, space-separated.
 * Returns 0, or -1 (out of memory, or out too small). */
int obr_webhook_sign(const struct obr_webhook_keys *keys, const char *id, int64_t timestamp, const char *body,
                     size_t body_len, char *out, size_t outlen);

/* Wipes the keys (they are secrets). */
void obr_webhook_keys_clear(struct obr_webhook_keys *keys);

/* A sender (sender.h) that signs the HTTP deliveries it passes on to inner: each submit (each
 * attempt) adds webhook-id (the row's idempotent_key), webhook-timestamp (now_fn, Unix seconds;
 * NULL: time()) and webhook-signature of the payload, unless the destination opted out
 * ("signing": false). Other kinds go through untouched. Takes inner (freed with the signer, also
 * on failure) and copies keys. Returns NULL when out of memory. */
struct obr_sender;
struct obr_sender *obr_webhook_signer_new(struct obr_sender *inner, const struct obr_webhook_keys *keys,
                                          int64_t (*now_fn)(void));

#endif
