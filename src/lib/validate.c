/* validate.c: see validate.h. */
#include "validate.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "error.h"

/* Longest prefix of user input quoted in a message: enough to recognise it. */
#define QUOTE_MAX 60

/* Printable ASCII only: spaces, controls and other bytes must be percent-encoded in a URL. */
static int
is_url_byte(unsigned char c)
{
	return c > 0x20 && c < 0x7F;
}

/* RFC 9110 tchar. */
static int
is_token_byte(unsigned char c)
{
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
		return 1;
	return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* An embedded NUL can only come from JSON ("\u0000"); PostgreSQL's jsonb refuses it. */
static enum outbox_rc
check_no_nul(const char *what, const char *s, size_t len, struct outbox_error *err)
{
	if (strlen(s) != len)
		return outbox__fail(err, OUTBOX_E_INVALID, "%s contains a NUL character", what);
	return OUTBOX_OK;
}

enum outbox_rc
outbox__check_http_url(const char *what, const char *url, size_t len, struct outbox_error *err)
{
	size_t host;
	size_t authority;
	enum outbox_rc rc;

	if (url == NULL)
		return outbox__fail(err, OUTBOX_E_INVALID, "%s is NULL", what);
	if ((rc = check_no_nul(what, url, len, err)) != OUTBOX_OK)
		return rc;
	if (len == 0)
		return outbox__fail(err, OUTBOX_E_INVALID, "%s is empty", what);
	if (len > OUTBOX_MAX_URL)
		return outbox__fail(err, OUTBOX_E_TOO_BIG, "%s is %zu bytes long, over the limit of %d",
				    what, len, OUTBOX_MAX_URL);
	for (size_t i = 0; i < len; i++)
		if (!is_url_byte((unsigned char)url[i]))
			return outbox__fail(err, OUTBOX_E_INVALID,
					    "%s \"%.*s\" contains a space, control or non-ASCII character at byte %zu",
					    what, (int)(i < QUOTE_MAX ? i : QUOTE_MAX), url, i + 1);
	if (len >= 7 && strncasecmp(url, "http://", 7) == 0)
		host = 7;
	else if (len >= 8 && strncasecmp(url, "https://", 8) == 0)
		host = 8;
	else
		return outbox__fail(err, OUTBOX_E_INVALID,
				    "%s \"%.*s\" does not start with http:// or https://", what,
				    QUOTE_MAX, url);
	authority = strcspn(url + host, "/?#");
	if (authority == 0 || url[host] == ':')
		return outbox__fail(err, OUTBOX_E_INVALID, "%s \"%.*s\" has no host", what, QUOTE_MAX,
				    url);
	/* The relay refuses user:password@host: a secret would sit in the table in clear. */
	if (memchr(url + host, '@', authority) != NULL)
		return outbox__fail(err, OUTBOX_E_INVALID,
				    "%s must not carry credentials (user@host); send them in a header",
				    what);
	return OUTBOX_OK;
}

enum outbox_rc
outbox__check_topic_arn(const char *arn, size_t len, struct outbox_error *err)
{
	/* arn : partition : service : region : account : name */
	size_t field_start[6];
	size_t fields = 1;
	enum outbox_rc rc;

	if (arn == NULL)
		return outbox__fail(err, OUTBOX_E_INVALID, "topic_arn is NULL");
	if ((rc = check_no_nul("topic_arn", arn, len, err)) != OUTBOX_OK)
		return rc;
	if (len == 0)
		return outbox__fail(err, OUTBOX_E_INVALID, "topic_arn is empty");
	if (len > OUTBOX_MAX_ARN)
		return outbox__fail(err, OUTBOX_E_TOO_BIG,
				    "topic_arn is %zu bytes long, over the limit of %d", len,
				    OUTBOX_MAX_ARN);
	for (size_t i = 0; i < len; i++)
		if (!is_url_byte((unsigned char)arn[i]))
			return outbox__fail(err, OUTBOX_E_INVALID,
					    "topic_arn \"%.*s\" contains a space, control or non-ASCII character at byte %zu",
					    (int)(i < QUOTE_MAX ? i : QUOTE_MAX), arn, i + 1);
	if (len < 4 || strncmp(arn, "arn:", 4) != 0)
		return outbox__fail(err, OUTBOX_E_INVALID, "topic_arn \"%.*s\" does not start with arn:",
				    QUOTE_MAX, arn);
	field_start[0] = 0;
	for (size_t i = 0; i < len; i++) {
		if (arn[i] == ':') {
			if (fields == 6)
				return outbox__fail(err, OUTBOX_E_INVALID,
						    "topic_arn \"%.*s\" has more than 6 ':'-separated fields",
						    QUOTE_MAX, arn);
			field_start[fields++] = i + 1;
		}
	}
	if (fields != 6)
		return outbox__fail(err, OUTBOX_E_INVALID,
				    "topic_arn \"%.*s\" is not arn:PARTITION:sns:REGION:ACCOUNT:NAME",
				    QUOTE_MAX, arn);
	if (field_start[3] - field_start[2] != 4 || strncmp(arn + field_start[2], "sns:", 4) != 0)
		return outbox__fail(err, OUTBOX_E_INVALID,
				    "topic_arn \"%.*s\" is not an SNS ARN (third field is not sns)",
				    QUOTE_MAX, arn);
	for (size_t f = 1; f < 6; f++) {
		size_t end = f + 1 < 6 ? field_start[f + 1] - 1 : len;

		if (end == field_start[f])
			return outbox__fail(err, OUTBOX_E_INVALID,
					    "topic_arn \"%.*s\" has an empty field",
					    QUOTE_MAX, arn);
	}
	return OUTBOX_OK;
}

enum outbox_rc
outbox__check_header_name(const char *name, size_t len, struct outbox_error *err)
{
	enum outbox_rc rc;

	if (name == NULL)
		return outbox__fail(err, OUTBOX_E_INVALID, "header name is NULL");
	if ((rc = check_no_nul("header name", name, len, err)) != OUTBOX_OK)
		return rc;
	if (len == 0)
		return outbox__fail(err, OUTBOX_E_INVALID, "header name is empty");
	if (len > OUTBOX_MAX_HEADER_NAME)
		return outbox__fail(err, OUTBOX_E_TOO_BIG,
				    "header name is %zu bytes long, over the limit of %d", len,
				    OUTBOX_MAX_HEADER_NAME);
	for (size_t i = 0; i < len; i++)
		if (!is_token_byte((unsigned char)name[i]))
			return outbox__fail(err, OUTBOX_E_INVALID,
					    "header name \"%.*s\" has an invalid character (0x%02x) at byte %zu",
					    (int)(i < QUOTE_MAX ? i : QUOTE_MAX), name,
					    (unsigned)(unsigned char)name[i], i + 1);
	return OUTBOX_OK;
}

/* name has passed outbox__check_header_name, so it is safe to quote. */
enum outbox_rc
outbox__check_header_value(const char *name, const char *value, size_t len,
			   struct outbox_error *err)
{
	if (value == NULL)
		return outbox__fail(err, OUTBOX_E_INVALID, "value of header \"%.*s\" is NULL",
				    QUOTE_MAX, name);
	if (strlen(value) != len)
		return outbox__fail(err, OUTBOX_E_INVALID,
				    "value of header \"%.*s\" contains a NUL character", QUOTE_MAX,
				    name);
	if (len > OUTBOX_MAX_HEADER_VALUE)
		return outbox__fail(err, OUTBOX_E_TOO_BIG,
				    "value of header \"%.*s\" is %zu bytes long, over the limit of %d",
				    QUOTE_MAX, name, len, OUTBOX_MAX_HEADER_VALUE);
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)value[i];

		/* CR and LF would split the HTTP request: header injection. */
		if ((c < 0x20 && c != '\t') || c == 0x7F)
			return outbox__fail(err, OUTBOX_E_INVALID,
					    "value of header \"%.*s\" has a control character (0x%02x) at byte %zu",
					    QUOTE_MAX, name, (unsigned)c, i + 1);
	}
	return OUTBOX_OK;
}

enum outbox_rc
outbox__parse_json(const char *what, const char *text, json_object **out,
		   struct outbox_error *err)
{
	struct json_tokener *tok;
	json_object *obj;
	enum json_tokener_error jerr;
	size_t end;
	size_t len;

	if (text == NULL)
		return outbox__fail(err, OUTBOX_E_INVALID, "%s is NULL", what);
	len = strlen(text);
	if (len >= OUTBOX_MAX_BATCH_BYTES)
		return outbox__fail(err, OUTBOX_E_TOO_BIG,
				    "%s is %zu bytes long, more than one insert can carry", what, len);
	tok = json_tokener_new_ex(OUTBOX_MAX_JSON_DEPTH);
	if (tok == NULL)
		return outbox__fail(err, OUTBOX_E_NOMEM, "out of memory parsing %s", what);
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
	/* -1: json-c then also uses the terminating NUL to end a top-level number or literal. */
	obj = json_tokener_parse_ex(tok, text, -1);
	jerr = json_tokener_get_error(tok);
	end = json_tokener_get_parse_end(tok);
	json_tokener_free(tok);
	if (jerr == json_tokener_success && end == len) {
		*out = obj;
		return OUTBOX_OK;
	}
	json_object_put(obj);
	if (jerr == json_tokener_continue) /* ran out of input inside a value */
		return outbox__fail(err, OUTBOX_E_INVALID, "%s is not valid JSON: unexpected end of data",
				    what);
	if (jerr == json_tokener_success)
		return outbox__fail(err, OUTBOX_E_INVALID,
				    "%s is not valid JSON: unexpected text at byte %zu", what, end + 1);
	/* json-c reports its own allocation failures as a generic parse error: cannot tell. */
	return outbox__fail(err, OUTBOX_E_INVALID, "%s is not valid JSON: %s at byte %zu", what,
			    json_tokener_error_desc(jerr), end + 1);
}

enum outbox_rc
outbox__check_headers_object(const char *what, json_object *obj, struct outbox_error *err)
{
	const char *names[OUTBOX_MAX_HEADERS];
	size_t n = 0;
	struct json_object_iterator it;
	struct json_object_iterator it_end;
	enum outbox_rc rc;

	if (!json_object_is_type(obj, json_type_object))
		return outbox__fail(err, OUTBOX_E_INVALID, "%s is not a JSON object", what);
	if (json_object_object_length(obj) > OUTBOX_MAX_HEADERS)
		return outbox__fail(err, OUTBOX_E_TOO_BIG, "%s has %d entries, over the limit of %d",
				    what, json_object_object_length(obj), OUTBOX_MAX_HEADERS);
	it = json_object_iter_begin(obj);
	it_end = json_object_iter_end(obj);
	for (; !json_object_iter_equal(&it, &it_end); json_object_iter_next(&it)) {
		const char *name = json_object_iter_peek_name(&it);
		json_object *val = json_object_iter_peek_value(&it);

		if ((rc = outbox__check_header_name(name, strlen(name), err)) != OUTBOX_OK)
			return rc;
		/* The crate decodes headers as a map of strings: anything else poisons the row. */
		if (!json_object_is_type(val, json_type_string))
			return outbox__fail(err, OUTBOX_E_INVALID,
					    "%s: value of \"%.*s\" is not a string", what, QUOTE_MAX,
					    name);
		rc = outbox__check_header_value(name, json_object_get_string(val),
						(size_t)json_object_get_string_len(val), err);
		if (rc != OUTBOX_OK)
			return rc;
		for (size_t i = 0; i < n; i++)
			if (strcasecmp(names[i], name) == 0)
				return outbox__fail(err, OUTBOX_E_INVALID,
						    "%s: header \"%.*s\" appears twice (names ignore case)",
						    what, QUOTE_MAX, name);
		names[n++] = name;
	}
	return OUTBOX_OK;
}

/* An optional member: absent and JSON null both give NULL. */
static json_object *
member(json_object *obj, const char *key, int *present)
{
	json_object *val = NULL;

	*present = json_object_object_get_ex(obj, key, &val);
	return val;
}

static enum outbox_rc
check_string_member(const char *what, json_object *val, struct outbox_error *err)
{
	if (!json_object_is_type(val, json_type_string))
		return outbox__fail(err, OUTBOX_E_INVALID, "%s is not a string", what);
	return OUTBOX_OK;
}

enum outbox_rc
outbox__check_destination(json_object *dest, size_t index, struct outbox_error *err)
{
	char what[64];
	json_object *queue_url;
	json_object *topic_arn;
	json_object *url;
	json_object *headers;
	json_object *method;
	int has_queue_url;
	int has_topic_arn;
	int has_url;
	int present;
	enum outbox_rc rc;

	if (!json_object_is_type(dest, json_type_object))
		return outbox__fail(err, OUTBOX_E_INVALID, "destinations[%zu] is not a JSON object",
				    index);
	queue_url = member(dest, "queue_url", &has_queue_url);
	topic_arn = member(dest, "topic_arn", &has_topic_arn);
	url = member(dest, "url", &has_url);
	/* The crate would quietly pick the first kind that decodes; a mix is surely a mistake. */
	if (has_queue_url + has_topic_arn + has_url != 1)
		return outbox__fail(err, OUTBOX_E_INVALID,
				    "destinations[%zu] must have exactly one of \"queue_url\" (SQS), "
				    "\"topic_arn\" (SNS) or \"url\" (HTTP)",
				    index);

	if (has_queue_url) {
		snprintf(what, sizeof(what), "destinations[%zu].queue_url", index);
		if ((rc = check_string_member(what, queue_url, err)) != OUTBOX_OK)
			return rc;
		return outbox__check_http_url(what, json_object_get_string(queue_url),
					      (size_t)json_object_get_string_len(queue_url), err);
	}
	if (has_topic_arn) {
		snprintf(what, sizeof(what), "destinations[%zu].topic_arn", index);
		if ((rc = check_string_member(what, topic_arn, err)) != OUTBOX_OK)
			return rc;
		return outbox__check_topic_arn(json_object_get_string(topic_arn),
					       (size_t)json_object_get_string_len(topic_arn), err);
	}

	snprintf(what, sizeof(what), "destinations[%zu].url", index);
	if ((rc = check_string_member(what, url, err)) != OUTBOX_OK)
		return rc;
	rc = outbox__check_http_url(what, json_object_get_string(url),
				    (size_t)json_object_get_string_len(url), err);
	if (rc != OUTBOX_OK)
		return rc;
	headers = member(dest, "headers", &present);
	if (headers != NULL) {
		snprintf(what, sizeof(what), "destinations[%zu].headers", index);
		if ((rc = outbox__check_headers_object(what, headers, err)) != OUTBOX_OK)
			return rc;
	}
	method = member(dest, "method", &present);
	if (method != NULL) {
		const char *m;

		snprintf(what, sizeof(what), "destinations[%zu].method", index);
		if ((rc = check_string_member(what, method, err)) != OUTBOX_OK)
			return rc;
		m = json_object_get_string(method);
		/* The relay, like the crate, sends anything but PUT and PATCH as POST. */
		if (strcasecmp(m, "post") != 0 && strcasecmp(m, "put") != 0 &&
		    strcasecmp(m, "patch") != 0)
			return outbox__fail(err, OUTBOX_E_INVALID,
					    "%s \"%.*s\" is not POST, PUT or PATCH", what, QUOTE_MAX,
					    m);
	}
	return OUTBOX_OK;
}
