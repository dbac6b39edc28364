/*
 * validate.h: the checks a row's parts pass before they are stored.
 *
 * The relay decodes rows the way the crate does; a row it cannot decode is a poison row that
 * blocks its partition. Rejecting such input here, where the caller still has the context to
 * fix it, is far cheaper than parking it later.
 */
#ifndef OUTBOX_VALIDATE_H
#define OUTBOX_VALIDATE_H

#include <stddef.h>

#include <json-c/json.h>

#include "outbox.h"

/* An http:// or https:// URL with a host, no spaces or control characters. what names it. */
enum outbox_rc outbox__check_http_url(const char *what, const char *url, size_t len,
				      struct outbox_error *err);

/* arn:PARTITION:sns:REGION:ACCOUNT:NAME, no spaces or control characters. */
enum outbox_rc outbox__check_topic_arn(const char *arn, size_t len, struct outbox_error *err);

/* A header name (RFC 9110 token) and value (no control characters but TAB). */
enum outbox_rc outbox__check_header_name(const char *name, size_t len, struct outbox_error *err);
enum outbox_rc outbox__check_header_value(const char *name, const char *value, size_t len,
					  struct outbox_error *err);

/*
 * Parses text as exactly one JSON value (strict: no trailing text, comments or single quotes;
 * nesting up to OUTBOX_MAX_JSON_DEPTH). *out receives the owned value; JSON null gives NULL.
 */
enum outbox_rc outbox__parse_json(const char *what, const char *text, json_object **out,
				  struct outbox_error *err);

/*
 * A headers object (the row's, or an HTTP destination's): every value a string, names and
 * values valid, no two names equal ignoring case, at most OUTBOX_MAX_HEADERS entries.
 */
enum outbox_rc outbox__check_headers_object(const char *what, json_object *obj,
					    struct outbox_error *err);

/* One element of a destinations array, index for the message. */
enum outbox_rc outbox__check_destination(json_object *dest, size_t index, struct outbox_error *err);

#endif /* OUTBOX_VALIDATE_H */
