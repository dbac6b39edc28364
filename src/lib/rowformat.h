/*
 * rowformat.h: the outbox row format, defined once.
 *
 * liboutbox refuses to build a row that breaks these rules; the relay (which links this file
 * from liboutbox's static library) parks a row in the table that breaks them, and builds its
 * delivery plan from what these functions accept. sql/006_row_format.sql mirrors the same
 * rules for the SQL helpers, and tests/unit/rowformat_cases.json holds the cases all three
 * are tested against. Limits are the OUTBOX_MAX_* of outbox.h.
 *
 * Two modes, because the table may hold rows the crate (outbox-pattern-processor 0.3.6) wrote:
 *   OUTBOX__RF_WRITE  building a row: every rule.
 *   OUTBOX__RF_READ   reading a row: also what the crate's own writers produce and its reader
 *                     accepts, when it is safe to deliver: a destination object with more than
 *                     one of queue_url/topic_arn/url (read as the first, in that order), and a
 *                     headers object naming one header twice in different case (the later
 *                     wins; Outbox::http_post_json adds "Content-Type" beside a "content-type").
 * A row accepted in WRITE mode is always accepted in READ mode.
 */
#ifndef OUTBOX_ROWFORMAT_H
#define OUTBOX_ROWFORMAT_H

#include <stdbool.h>
#include <stddef.h>

#include <json-c/json.h>

#include "outbox.h"

enum outbox__rf_mode { OUTBOX__RF_WRITE, OUTBOX__RF_READ };

enum outbox__dest_kind { OUTBOX__DEST_SQS, OUTBOX__DEST_SNS, OUTBOX__DEST_HTTP };

/* A destination as checked: pointers into the JSON object it came from. */
struct outbox__dest_view {
	enum outbox__dest_kind kind;
	const char *target;             /* queue_url, topic_arn or url */
	enum outbox_http_method method; /* HTTP; POST when absent or null */
	json_object *headers;           /* HTTP: an object, or NULL when absent or null */
	bool no_signing;                 /* HTTP: "signing": false, no webhook signature headers */
};

/* Longest {{NAME}} placeholder name, in bytes. */
#define OUTBOX__ENV_NAME_MAX 127

/* An http:// or https:// URL with a host, no spaces or control characters. what names it. */
enum outbox_rc outbox__check_http_url(const char *what, const char *url, size_t len,
				      struct outbox_error *err);

/* arn:PARTITION:sns:REGION:ACCOUNT:NAME, printable ASCII, no empty field. what names it. */
enum outbox_rc outbox__check_topic_arn(const char *what, const char *arn, size_t len,
				       struct outbox_error *err);

/*
 * A header name (RFC 9110 token, not one the relay sets itself: Content-Length, Host,
 * Transfer-Encoding, Connection, webhook-id, webhook-timestamp, webhook-signature) and value (no control characters but TAB).
 */
enum outbox_rc outbox__check_header_name(const char *name, size_t len, struct outbox_error *err);
enum outbox_rc outbox__check_header_value(const char *name, const char *value, size_t len,
					  struct outbox_error *err);

/*
 * The crate's placeholder: value is exactly {{NAME}}, NAME of A-Z and _ (regex
 * ^\{\{[A-Z_]+}}$). Copies NAME into name (OUTBOX__ENV_NAME_MAX + 1 bytes) and returns it, or
 * returns NULL when value is no placeholder.
 */
const char *outbox__env_placeholder(const char *value, char name[OUTBOX__ENV_NAME_MAX + 1]);

/*
 * Whether a placeholder may never be filled, whatever the relay's configuration: the relay's
 * own settings and credentials (DATABASE_URL, PG*, AWS_*, OUTBOX_*, ...; see rowformat.c).
 */
bool outbox__env_refused(const char *name);

/* Refuses an HTTP destination's header value that asks for a refused variable. */
enum outbox_rc outbox__check_placeholder(const char *what, const char *name, const char *value,
					 struct outbox_error *err);

/*
 * Nesting a row's destinations or headers may have (json-c's default, what the relay always
 * read): a row's JSON is small, and json-c clears a stack of this many levels per parse.
 */
#define OUTBOX__ROW_JSON_DEPTH 32

/*
 * Parses text as exactly one JSON value (strict: no trailing text, comments or single quotes;
 * at most depth nested arrays and objects: OUTBOX_MAX_JSON_DEPTH for a payload,
 * OUTBOX__ROW_JSON_DEPTH for destinations and headers). *out receives the owned value; JSON
 * null gives NULL.
 */
enum outbox_rc outbox__parse_json(const char *what, const char *text, int depth,
				  json_object **out, struct outbox_error *err);

/*
 * A headers object (the row's, or an HTTP destination's when placeholders): every value a
 * string, names and values valid, at most OUTBOX_MAX_HEADERS entries; in WRITE mode no two
 * names equal ignoring case.
 */
enum outbox_rc outbox__check_headers_object(const char *what, json_object *obj, bool placeholders,
					    enum outbox__rf_mode mode, struct outbox_error *err);

/* One element of a destinations array, index for the message. view (may be NULL) receives it. */
enum outbox_rc outbox__check_destination(json_object *dest, size_t index, enum outbox__rf_mode mode,
					 struct outbox__dest_view *view, struct outbox_error *err);

/*
 * A whole row's destinations and headers: an array of 1 to OUTBOX_MAX_DESTINATIONS valid
 * destinations (an empty array goes nowhere: a writer's bug, refused), the row's headers NULL
 * or a valid object, and no HTTP request of more than OUTBOX_MAX_HEADERS headers once the
 * destination's, the row's and x-idempotent-key are merged as the relay merges them. views
 * (may be NULL) receives the destinations as checked.
 */
enum outbox_rc outbox__check_row(json_object *destinations, json_object *headers,
				 enum outbox__rf_mode mode,
				 struct outbox__dest_view views[OUTBOX_MAX_DESTINATIONS],
				 struct outbox_error *err);

#endif /* OUTBOX_ROWFORMAT_H */
