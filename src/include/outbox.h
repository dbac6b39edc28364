/*
 * outbox.h: liboutbox, the client side of outbox-relay.
 *
 * Builds outbox rows in the format of outbox-pattern-processor 0.3.6 and inserts them in
 * the caller's own transaction, so that the business change and the message commit (or roll
 * back) together. The relay daemon delivers them later.
 *
 *     struct outbox_error err;
 *     struct outbox_row *row = NULL;
 *     char pk[OUTBOX_UUID_STRLEN];
 *
 *     outbox_uuid7_text(pk);                 // or a domain UUID: rows of one key keep their order
 *     if (outbox_row_http_post_json(&row, pk, "https://example.com/hook", NULL, 0,
 *                                   "{\"id\":42}", &err) != OUTBOX_OK)
 *         ... err.message ...
 *     PQexec(conn, "BEGIN");  ... business statements ...
 *     if (outbox_insert(conn, &row, 1, &err) != OUTBOX_OK)
 *         ... roll back ...
 *     PQexec(conn, "COMMIT");
 *     outbox_row_free(row);
 *
 * Conventions:
 * - Fallible functions return enum outbox_rc (OUTBOX_OK = 0). On failure they fill the
 *   caller's struct outbox_error when one is given (it may be NULL) and leave out-parameters
 *   untouched; on success err is not written. Nothing here aborts, exits, prints or relies on
 *   errno.
 * - Constructors check everything the relay would otherwise reject later (a row it cannot
 *   decode blocks its partition until parked), so a row that builds is a row that decodes.
 * - Strings passed in are borrowed and copied; nothing keeps a caller's pointer.
 * - A struct outbox_row belongs to one thread at a time. outbox_uuid7() is thread-safe.
 * - Text is passed to PostgreSQL as is: use a connection whose client_encoding is UTF8 (or
 *   another encoding in which '"' and '\' never occur inside a multibyte character;
 *   outbox_insert refuses SJIS, SHIFT_JIS_2004, BIG5, GBK, UHC, GB18030 and JOHAB).
 */
#ifndef OUTBOX_H
#define OUTBOX_H

#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

#ifdef __cplusplus
extern "C" {
#endif

#define OUTBOX_VERSION_MAJOR 0
#define OUTBOX_VERSION_MINOR 1
#define OUTBOX_VERSION_PATCH 0

#if defined(__GNUC__) || defined(__clang__)
#define OUTBOX_API        __attribute__((visibility("default")))
#define OUTBOX_MUST_CHECK __attribute__((warn_unused_result))
#else
#define OUTBOX_API
#define OUTBOX_MUST_CHECK
#endif

/* ---------------------------------------------------------------------------------------- */
/* Errors                                                                                   */

/* Stable numbers: append only. */
enum outbox_rc {
	OUTBOX_OK = 0,
	OUTBOX_E_INVALID = 1, /* an argument failed validation; the message says which and why */
	OUTBOX_E_NOMEM = 2,   /* out of memory */
	OUTBOX_E_TOO_BIG = 3, /* a size limit was exceeded (OUTBOX_MAX_*) */
	OUTBOX_E_DB = 4,      /* the connection or the server reported an error (see sqlstate) */
};

#define OUTBOX_ERROR_MESSAGE_MAX 256

struct outbox_error {
	enum outbox_rc code;
	char sqlstate[6]; /* five-character SQLSTATE for OUTBOX_E_DB when the server sent one, else "" */
	char message[OUTBOX_ERROR_MESSAGE_MAX]; /* NUL-terminated, lowercase, no trailing period */
};

/* A short constant name for a code ("ok", "invalid argument", ...), never NULL. */
OUTBOX_API const char *outbox_rc_str(enum outbox_rc rc);

/* ---------------------------------------------------------------------------------------- */
/* UUIDs                                                                                    */

#define OUTBOX_UUID_STRLEN 37 /* 36 characters and the NUL */

/*
 * A new UUIDv7 (RFC 9562): 48-bit big-endian Unix milliseconds, version 7, variant 0b10,
 * random bits from libuuid. Strictly increasing (as bytes) within the process: when the clock
 * has not advanced, or went back, the 12-bit rand_a field counts up from a random start, and
 * a counter overflow moves the timestamp 1 ms ahead (RFC 9562 §6.2, method 1). Thread-safe
 * and lock-free.
 */
OUTBOX_API void outbox_uuid7(unsigned char out[16]);

/* The same, as text: a convenient fresh partition key. */
OUTBOX_API void outbox_uuid7_text(char out[OUTBOX_UUID_STRLEN]);

/* 36 lowercase hex characters with dashes (8-4-4-4-12) and the NUL. */
OUTBOX_API void outbox_uuid_format(const unsigned char in[16], char out[OUTBOX_UUID_STRLEN]);

/* Parses exactly the 8-4-4-4-12 form, either case. */
OUTBOX_API OUTBOX_MUST_CHECK enum outbox_rc outbox_uuid_parse(const char *text, unsigned char out[16],
							      struct outbox_error *err);

/* ---------------------------------------------------------------------------------------- */
/* Rows                                                                                     */

/*
 * Limits checked when a row is built (and, for merged headers, when it is inserted). They are
 * the relay's decoding limits, so that a row that builds is a row the relay accepts.
 */
#define OUTBOX_MAX_URL          8192 /* bytes of an HTTP or SQS queue URL */
#define OUTBOX_MAX_ARN          1024 /* bytes of an SNS topic ARN */
#define OUTBOX_MAX_HEADER_NAME  256
#define OUTBOX_MAX_HEADER_VALUE 8192
#define OUTBOX_MAX_HEADERS      64  /* per headers object, and per request once merged (below) */
#define OUTBOX_MAX_DESTINATIONS 64  /* per row */
#define OUTBOX_MAX_JSON_DEPTH   512 /* nesting accepted in a JSON payload; 32 in destinations and headers */

/*
 * One header, borrowed: both strings are copied by the function that takes them. The relay
 * sends an HTTP destination's headers, then the row's (a name in both: the row's value), then
 * x-idempotent-key; together at most OUTBOX_MAX_HEADERS, which outbox_insert checks. A header
 * named x-idempotent-key is ignored by the relay: the row's key is always sent. Content-Length,
 * Host, Transfer-Encoding, Connection and the Standard Webhooks headers webhook-id,
 * webhook-timestamp and webhook-signature are the relay's and refused. In an HTTP destination's
 * headers a value "{{ENV_NAME}}" is filled by the relay from its environment, except for its
 * own settings and credentials (DATABASE_URL, PG*, AWS_*, OUTBOX_*, ...), which are refused.
 */
struct outbox_header {
	const char *name;  /* an RFC 9110 token: letters, digits and !#$%&'*+-.^_`|~ */
	const char *value; /* no control characters except TAB */
};

enum outbox_http_method {
	OUTBOX_HTTP_POST = 0,
	OUTBOX_HTTP_PUT,
	OUTBOX_HTTP_PATCH,
};

/*
 * One outbox row: idempotent_key (a fresh UUIDv7, see outbox_row_set_idempotent_key),
 * partition_key, destinations (a JSON array), headers (a JSON object or NULL), payload,
 * created_at (the client's clock when the row was built, microseconds) and process_after.
 */
struct outbox_row;

/*
 * URLs (HTTP and SQS) are http:// or https://, with a host, printable ASCII only (percent-encode
 * the rest) and no user:password@ part: credentials belong in headers, not in the table.
 *
 * Arguments shared by the constructors:
 *   out            receives the new row on success; free it with outbox_row_free
 *   partition_key  a UUID in text form; rows of one partition are delivered in order
 *   headers        n_headers name/value pairs, or NULL with n_headers == 0; names must be
 *                  unique, compared case-insensitively
 *
 * The HTTP JSON constructors write what the crate's Outbox::http_*_json write: one destination
 * {"url": url, "headers": {...headers, "Content-Type": "application/json"}, "method": M} where
 * M is null for POST, "put" or "patch"; the row's own headers column stays NULL. json_payload
 * must be valid JSON; it is stored as given. If the caller already passes a Content-Type (any
 * case) it is kept instead of being overwritten (the crate would overwrite an exact
 * "Content-Type" and send two for "content-type").
 */
OUTBOX_API OUTBOX_MUST_CHECK enum outbox_rc
outbox_row_http_post_json(struct outbox_row **out, const char *partition_key, const char *url,
			  const struct outbox_header *headers, size_t n_headers,
			  const char *json_payload, struct outbox_error *err);
OUTBOX_API OUTBOX_MUST_CHECK enum outbox_rc
outbox_row_http_put_json(struct outbox_row **out, const char *partition_key, const char *url,
			 const struct outbox_header *headers, size_t n_headers,
			 const char *json_payload, struct outbox_error *err);
OUTBOX_API OUTBOX_MUST_CHECK enum outbox_rc
outbox_row_http_patch_json(struct outbox_row **out, const char *partition_key, const char *url,
			   const struct outbox_header *headers, size_t n_headers,
			   const char *json_payload, struct outbox_error *err);

/*
 * Outbox::sqs / Outbox::sns: one destination {"queue_url": ...} or {"topic_arn": ...}; the
 * headers go into the row's headers column (they become message attributes) and the column
 * is NULL when n_headers is 0. queue_url is an http(s) URL; topic_arn has the form
 * arn:PARTITION:sns:REGION:ACCOUNT:NAME.
 */
OUTBOX_API OUTBOX_MUST_CHECK enum outbox_rc
outbox_row_sqs(struct outbox_row **out, const char *partition_key, const char *queue_url,
	       const struct outbox_header *headers, size_t n_headers, const char *payload,
	       struct outbox_error *err);
OUTBOX_API OUTBOX_MUST_CHECK enum outbox_rc
outbox_row_sns(struct outbox_row **out, const char *partition_key, const char *topic_arn,
	       const struct outbox_header *headers, size_t n_headers, const char *payload,
	       struct outbox_error *err);

/*
 * Outbox::http_and_sqs / http_and_sns: the SQS (SNS) destination first, then an HTTP POST
 * destination built as by outbox_row_http_post_json; headers apply to the HTTP destination only.
 */
OUTBOX_API OUTBOX_MUST_CHECK enum outbox_rc
outbox_row_http_and_sqs(struct outbox_row **out, const char *partition_key, const char *url,
			const char *queue_url, const struct outbox_header *headers,
			size_t n_headers, const char *json_payload, struct outbox_error *err);
OUTBOX_API OUTBOX_MUST_CHECK enum outbox_rc
outbox_row_http_and_sns(struct outbox_row **out, const char *partition_key, const char *url,
			const char *topic_arn, const struct outbox_header *headers,
			size_t n_headers, const char *json_payload, struct outbox_error *err);

/*
 * Outbox::new: the general form. destinations_json is a JSON array of destination objects in
 * the crate's shapes, or NULL for an empty array to fill with outbox_row_add_*. Each element
 * is checked: exactly one of "queue_url", "topic_arn" or "url", with valid values; an HTTP
 * destination's "headers" is null or an object of strings, its "method" null or POST, PUT or
 * PATCH in any case (anything else would silently become POST in the relay), its "signing"
 * null, true or false (false: the relay does not sign its requests, see
 * OUTBOX_WEBHOOK_SECRET). headers_json is NULL or a JSON object whose values are all strings.
 * A row must have at least one destination by the time it is inserted.
 */
OUTBOX_API OUTBOX_MUST_CHECK enum outbox_rc
outbox_row_new(struct outbox_row **out, const char *partition_key, const char *destinations_json,
	       const char *headers_json, const char *payload, struct outbox_error *err);

/*
 * Appends one destination. The HTTP one is written as given: no Content-Type is added (the
 * payload need not be JSON), "headers" is null when n_headers is 0, "method" is null for
 * POST, else "put" or "patch" as the crate writes them.
 */
OUTBOX_API OUTBOX_MUST_CHECK enum outbox_rc
outbox_row_add_http(struct outbox_row *row, const char *url, enum outbox_http_method method,
		    const struct outbox_header *headers, size_t n_headers, struct outbox_error *err);
OUTBOX_API OUTBOX_MUST_CHECK enum outbox_rc
outbox_row_add_sqs(struct outbox_row *row, const char *queue_url, struct outbox_error *err);
OUTBOX_API OUTBOX_MUST_CHECK enum outbox_rc
outbox_row_add_sns(struct outbox_row *row, const char *topic_arn, struct outbox_error *err);

/* Sets a row-level header (the headers column), replacing one of the same name in any case. */
OUTBOX_API OUTBOX_MUST_CHECK enum outbox_rc
outbox_row_set_header(struct outbox_row *row, const char *name, const char *value,
		      struct outbox_error *err);

/*
 * W3C Trace Context: sets the row-level headers traceparent and (when tracestate is neither
 * NULL nor empty) tracestate, which the relay sends as HTTP headers and as SQS/SNS message
 * attributes, so the consumer continues the writer's trace. The same as migration 008 does
 * for a transaction that sets outbox.traceparent, except that a bad value is refused here
 * (OUTBOX_E_INVALID) rather than ignored: traceparent must be version-format
 * "vv-<32 hex>-<16 hex>-<2 hex>", lowercase, version not ff, neither id all zeros; tracestate
 * at most 512 printable ASCII characters. Replaces headers of these names in any case. On
 * failure the row is as it was.
 */
OUTBOX_API OUTBOX_MUST_CHECK enum outbox_rc
outbox_row_set_trace_context(struct outbox_row *row, const char *traceparent, const char *tracestate,
			     struct outbox_error *err);

/*
 * Replaces the generated idempotent key, e.g. with one derived from a business id so that
 * enqueueing the same event twice fails on the primary key instead of sending twice.
 */
OUTBOX_API OUTBOX_MUST_CHECK enum outbox_rc
outbox_row_set_idempotent_key(struct outbox_row *row, const char *idempotent_key,
			      struct outbox_error *err);

/*
 * Outbox::delay: not eligible before unix_ms (absolute, milliseconds since 1970, up to the end
 * of year 9999). Without a delay process_after = created_at, as the crate writes it.
 */
OUTBOX_API OUTBOX_MUST_CHECK enum outbox_rc
outbox_row_delay(struct outbox_row *row, int64_t unix_ms, struct outbox_error *err);

/* Relative form: process_after = created_at + delay_ms (delay_ms >= 0). */
OUTBOX_API OUTBOX_MUST_CHECK enum outbox_rc
outbox_row_delay_by(struct outbox_row *row, int64_t delay_ms, struct outbox_error *err);

/* Accessors. Returned strings belong to the row and live until it is changed or freed. */
OUTBOX_API const char *outbox_row_idempotent_key(const struct outbox_row *row); /* 36 chars */
OUTBOX_API const char *outbox_row_partition_key(const struct outbox_row *row);  /* lowercase */
OUTBOX_API const char *outbox_row_payload(const struct outbox_row *row);
OUTBOX_API int64_t outbox_row_created_at_us(const struct outbox_row *row);
OUTBOX_API int64_t outbox_row_process_after_us(const struct outbox_row *row);
OUTBOX_API size_t outbox_row_destination_count(const struct outbox_row *row);
/*
 * The JSON text exactly as outbox_insert sends it (compact). NULL when out of memory, and for
 * the headers also when the row has none (the column is then NULL). Not thread-safe even on a
 * const row: json-c caches the text inside the row.
 */
OUTBOX_API const char *outbox_row_destinations_json(const struct outbox_row *row);
OUTBOX_API const char *outbox_row_headers_json(const struct outbox_row *row);

/* NULL-safe. */
OUTBOX_API void outbox_row_free(struct outbox_row *row);

/* ---------------------------------------------------------------------------------------- */
/* Insert                                                                                   */

/* What one call may send: PostgreSQL refuses a protocol message of 1 GiB or more. */
#define OUTBOX_MAX_BATCH_BYTES ((size_t)1023 * 1024 * 1024)

/*
 * Inserts n rows with one parameterised statement (one round trip) on conn, inside whatever
 * transaction the caller has open: BEGIN before and COMMIT after are the caller's (without a
 * transaction the statement commits by itself). created_at is the row's client time;
 * process_after its delay, else created_at. n == 0 does nothing and succeeds. Blocks until the
 * server answers (PQexecParams); refuses a connection in pipeline mode, a busy one, or one in
 * a failed transaction. The rows are not changed and stay the caller's. On OUTBOX_E_DB the
 * transaction is usually aborted and must be rolled back; a duplicate idempotent key gives
 * sqlstate "23505".
 */
OUTBOX_API OUTBOX_MUST_CHECK enum outbox_rc
outbox_insert(PGconn *conn, struct outbox_row *const *rows, size_t n, struct outbox_error *err);

#ifdef __cplusplus
}
#endif

#endif /* OUTBOX_H */
