/*
 * aws_credentials.h - the AWS credential chain, in the SDKs' order, on the relay's event loop.
 *
 *   1. environment        AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN
 *   2. web identity       AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN [+ AWS_ROLE_SESSION_NAME]:
 *                         STS AssumeRoleWithWebIdentity (EKS IRSA)
 *   3. container          AWS_CONTAINER_CREDENTIALS_RELATIVE_URI (http://169.254.170.2...) or
 *                         AWS_CONTAINER_CREDENTIALS_FULL_URI, Authorization from
 *                         AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE or _TOKEN (ECS, EKS Pod Identity)
 *   4. instance metadata  IMDSv2: token, role name, role credentials (AWS_EC2_METADATA_SERVICE_ENDPOINT,
 *                         skipped with AWS_EC2_METADATA_DISABLED=true)
 *
 * A source that is not configured is skipped; a configured one that fails is skipped with its
 * reason. Nothing is fetched before the first message needs credentials. Temporary credentials
 * are fetched again before they expire (5 minutes before, or at half their lifetime when they
 * live less than 10 minutes) while the current ones keep being used. Every fetch goes through
 * obr_http_start on the relay's curl multi: nothing blocks the loop (token files are small
 * local reads). Secrets are never logged nor put in error messages.
 */
#ifndef OBR_AWS_CREDENTIALS_H
#define OBR_AWS_CREDENTIALS_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include "send/aws_protocol.h"
#include "send/http.h"

struct event_base;

struct obr_aws_creds {
	char *access_key;
	char *secret_key;
	char *token;       /* session token, NULL for long-term keys */
	char *userpwd;     /* "ACCESS_KEY:SECRET_KEY" for CURLOPT_USERPWD */
	time_t expires;    /* 0: does not expire */
};

void obr_aws_creds_clear(struct obr_aws_creds *c);
/* Frees *s after overwriting it, and sets it to NULL. */
void obr_aws_free_secret(char **s);
/* No control characters: the value can go in a header. */
bool obr_aws_header_safe(const char *s);
/* Copies key/secret/token (token may be NULL) into out, checking them; expiration is ISO 8601
 * or NULL. Returns 0, or -1 with a reason that contains no secret. */
int obr_aws_fill_creds(struct obr_aws_creds *out, const char *key, const char *secret, const char *token,
                       const char *expiration, char *err, size_t errlen);

/* Pure parsers of the sources' answers (unit-tested). Return 0, or -1 with a reason that
 * contains no secret. */
/* Container and instance-metadata JSON: AccessKeyId, SecretAccessKey, Token, Expiration (and
 * Code, which must be "Success" when present). */
int obr_aws_parse_creds_json(const char *body, size_t len, struct obr_aws_creds *out, char *err, size_t errlen);
/* STS AssumeRoleWithWebIdentity XML (Credentials: AccessKeyId, SecretAccessKey, SessionToken,
 * Expiration), or its <Error>. */
int obr_aws_parse_sts_creds(const char *body, size_t len, struct obr_aws_creds *out, char *err, size_t errlen);
/* ISO 8601 / RFC 3339 UTC time: 2024-05-01T12:34:56Z, with optional fractions and offset. */
int obr_aws_parse_time(const char *s, time_t *out);
/* Seconds from now until a refresh: lifetime - 300 when it is over 10 minutes, else half of it
 * (at least 1). -1 when already expired. */
long obr_aws_refresh_delay(time_t now, time_t expires);
/* Until when credentials fetched at now are used without a refresh (a margin before expiry:
 * 60 s, or a quarter of a short lifetime). */
time_t obr_aws_usable_until(time_t now, time_t expires);

/* The container endpoint: http://169.254.170.2 + AWS_CONTAINER_CREDENTIALS_RELATIVE_URI, else
 * AWS_CONTAINER_CREDENTIALS_FULL_URI, which over http:// must be a loopback or ECS/EKS agent host
 * (127.0.0.0/8, localhost, [::1], 169.254.170.2, 169.254.170.23, [fd00:ec2::23]). */
int obr_aws_container_url(const struct obr_aws_config *cfg, char *out, size_t cap, char *why, size_t whylen);

enum obr_aws_cred_state { OBR_CREDS_READY, OBR_CREDS_PENDING, OBR_CREDS_FAILED };

struct obr_aws_credentials;

/* on_change runs (from an event callback, never inside obr_aws_credentials_get) when a fetch
 * ends, successful or not, so waiting messages can go or fail. cfg must outlive the object. */
struct obr_aws_credentials *obr_aws_credentials_new(struct event_base *base, struct obr_http *http,
                                                    const struct obr_aws_config *cfg, void (*on_change)(void *arg),
                                                    void *arg);
/* READY with *out set; PENDING while a fetch runs (on_change follows); FAILED with the reason
 * in err (the chain is walked again after a short pause). Starts the walk when needed. */
enum obr_aws_cred_state obr_aws_credentials_get(struct obr_aws_credentials *c, const struct obr_aws_creds **out,
                                                char *err, size_t errlen);
/* The service said the credentials are expired or invalid: temporary ones are dropped and
 * fetched again on the next use. */
void obr_aws_credentials_invalidate(struct obr_aws_credentials *c);
/* Fetches that completed, for tests and logs. */
unsigned long obr_aws_credentials_fetches(const struct obr_aws_credentials *c);
/* Forgets fetches in flight (their requests belong to obr_http). */
void obr_aws_credentials_abort(struct obr_aws_credentials *c);
void obr_aws_credentials_free(struct obr_aws_credentials *c);

#endif
