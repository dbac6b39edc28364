/* rowformat.c: the row format, one definition for liboutbox and the relay (see rowformat.h). */
#include "rowformat.h"

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

/* For messages: "object", "string", "int", "null" ... */
static const char *
type_name(json_object *obj)
{
	return json_type_to_name(json_object_get_type(obj));
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
outbox__check_topic_arn(const char *what, const char *arn, size_t len, struct outbox_error *err)
{
	/* arn : partition : service : region : account : name */
	size_t field_start[6];
	size_t fields = 1;
	enum outbox_rc rc;

	if (arn == NULL)
		return outbox__fail(err, OUTBOX_E_INVALID, "%s is NULL", what);
	if ((rc = check_no_nul(what, arn, len, err)) != OUTBOX_OK)
		return rc;
	if (len == 0)
		return outbox__fail(err, OUTBOX_E_INVALID, "%s is empty", what);
	if (len > OUTBOX_MAX_ARN)
		return outbox__fail(err, OUTBOX_E_TOO_BIG,
				    "%s is %zu bytes long, over the limit of %d", what, len,
				    OUTBOX_MAX_ARN);
	for (size_t i = 0; i < len; i++)
		if (!is_url_byte((unsigned char)arn[i]))
			return outbox__fail(err, OUTBOX_E_INVALID,
					    "%s \"%.*s\" contains a space, control or non-ASCII character at byte %zu",
					    what, (int)(i < QUOTE_MAX ? i : QUOTE_MAX), arn, i + 1);
	if (len < 4 || strncmp(arn, "arn:", 4) != 0)
		return outbox__fail(err, OUTBOX_E_INVALID, "%s \"%.*s\" does not start with arn:",
				    what, QUOTE_MAX, arn);
	field_start[0] = 0;
	for (size_t i = 0; i < len; i++) {
		if (arn[i] == ':') {
			if (fields == 6)
				return outbox__fail(err, OUTBOX_E_INVALID,
						    "%s \"%.*s\" has more than 6 ':'-separated fields",
						    what, QUOTE_MAX, arn);
			field_start[fields++] = i + 1;
		}
	}
	if (fields != 6)
		return outbox__fail(err, OUTBOX_E_INVALID,
				    "%s \"%.*s\" is not arn:PARTITION:sns:REGION:ACCOUNT:NAME",
				    what, QUOTE_MAX, arn);
	if (field_start[3] - field_start[2] != 4 || strncmp(arn + field_start[2], "sns:", 4) != 0)
		return outbox__fail(err, OUTBOX_E_INVALID,
				    "%s \"%.*s\" is not an SNS ARN (third field is not sns)",
				    what, QUOTE_MAX, arn);
	for (size_t f = 1; f < 6; f++) {
		size_t end = f + 1 < 6 ? field_start[f + 1] - 1 : len;

		if (end == field_start[f])
			return outbox__fail(err, OUTBOX_E_INVALID,
					    "%s \"%.*s\" has an empty field",
					    what, QUOTE_MAX, arn);
	}
	return OUTBOX_OK;
}

/* The message's framing is the relay's: a row that set it could make the endpoint read the body
 * as a different request, or wait for bytes that never come. The Standard Webhooks headers are
 * the relay's too: a row must not pass off its own id, time or signature as the relay's. */
static const char *const relay_set_headers[] = { "Content-Length", "Transfer-Encoding", "Host",
						 "Connection", "webhook-id", "webhook-timestamp",
						 "webhook-signature" };

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
	for (size_t i = 0; i < sizeof(relay_set_headers) / sizeof(relay_set_headers[0]); i++)
		if (strcasecmp(name, relay_set_headers[i]) == 0)
			return outbox__fail(err, OUTBOX_E_INVALID,
					    "header \"%s\" is set by the relay, not by rows", name);
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

const char *
outbox__env_placeholder(const char *value, char name[OUTBOX__ENV_NAME_MAX + 1])
{
	size_t len = strlen(value);
	size_t n;

	if (len < 5 || strncmp(value, "{{", 2) != 0 || strcmp(value + len - 2, "}}") != 0)
		return NULL;
	n = len - 4;
	if (n > OUTBOX__ENV_NAME_MAX)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		char c = value[2 + i];

		if (!((c >= 'A' && c <= 'Z') || c == '_'))
			return NULL;
		name[i] = c;
	}
	name[n] = '\0';
	return name;
}

/*
 * What the relay itself reads from its environment (its settings, libpq's, the AWS
 * credential chain's, libcurl's and OpenSSL's, systemd's), never a placeholder's value: a
 * row could otherwise send the database password or the AWS keys to any URL. Only names of
 * A-Z and _ can be placeholders, so names with digits need no entry.
 */
static const char *const refused_prefixes[] = { "PG", "AWS_", "OUTBOX_", "CURL_", "SSL_CERT_",
						"OPENSSL_" };
static const char *const refused_names[] = {
	"DATABASE_URL", "LOCAL_ENDPOINT", "LOCAL_REGION", "NOTIFY_SOCKET", "WATCHDOG_PID",
	"WATCHDOG_USEC", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "SSLKEYLOGFILE",
};

bool
outbox__env_refused(const char *name)
{
	for (size_t i = 0; i < sizeof(refused_prefixes) / sizeof(refused_prefixes[0]); i++)
		if (strncmp(name, refused_prefixes[i], strlen(refused_prefixes[i])) == 0)
			return true;
	for (size_t i = 0; i < sizeof(refused_names) / sizeof(refused_names[0]); i++)
		if (strcmp(name, refused_names[i]) == 0)
			return true;
	return false;
}

enum outbox_rc
outbox__check_placeholder(const char *what, const char *name, const char *value,
			  struct outbox_error *err)
{
	char var[OUTBOX__ENV_NAME_MAX + 1];

	if (outbox__env_placeholder(value, var) != NULL && outbox__env_refused(var))
		return outbox__fail(err, OUTBOX_E_INVALID,
				    "%s: header \"%.*s\" asks for {{%s}}, one of the relay's own "
				    "settings and credentials, which are never sent",
				    what, QUOTE_MAX, name, var);
	return OUTBOX_OK;
}

enum outbox_rc
outbox__parse_json(const char *what, const char *text, int depth, json_object **out,
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
	tok = json_tokener_new_ex(depth);
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
outbox__check_headers_object(const char *what, json_object *obj, bool placeholders,
			     enum outbox__rf_mode mode, struct outbox_error *err)
{
	const char *names[OUTBOX_MAX_HEADERS];
	size_t n = 0;
	struct json_object_iterator it;
	struct json_object_iterator it_end;
	enum outbox_rc rc;

	if (!json_object_is_type(obj, json_type_object))
		return outbox__fail(err, OUTBOX_E_INVALID, "%s is not a JSON object but %s", what,
				    type_name(obj));
	if (json_object_object_length(obj) > OUTBOX_MAX_HEADERS)
		return outbox__fail(err, OUTBOX_E_TOO_BIG, "%s has %d entries, over the limit of %d",
				    what, json_object_object_length(obj), OUTBOX_MAX_HEADERS);
	it = json_object_iter_begin(obj);
	it_end = json_object_iter_end(obj);
	for (; !json_object_iter_equal(&it, &it_end); json_object_iter_next(&it)) {
		const char *name = json_object_iter_peek_name(&it);
		json_object *val = json_object_iter_peek_value(&it);
		const char *value;
		struct outbox_error why;

		if ((rc = outbox__check_header_name(name, strlen(name), &why)) != OUTBOX_OK)
			return outbox__fail(err, rc, "%s: %s", what, why.message);
		/* The crate decodes headers as a map of strings: anything else poisons the row. */
		if (!json_object_is_type(val, json_type_string))
			return outbox__fail(err, OUTBOX_E_INVALID,
					    "%s: value of \"%.*s\" is not a string but %s", what,
					    QUOTE_MAX, name, type_name(val));
		value = json_object_get_string(val);
		rc = outbox__check_header_value(name, value, (size_t)json_object_get_string_len(val),
						&why);
		if (rc != OUTBOX_OK)
			return outbox__fail(err, rc, "%s: %s", what, why.message);
		if (placeholders && (rc = outbox__check_placeholder(what, name, value, err)) != OUTBOX_OK)
			return rc;
		if (mode == OUTBOX__RF_WRITE)
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
		return outbox__fail(err, OUTBOX_E_INVALID, "%s is not a string but %s", what,
				    type_name(val));
	return OUTBOX_OK;
}

static enum outbox_rc
check_http_destination(json_object *dest, size_t index, json_object *url,
		       enum outbox__rf_mode mode, struct outbox__dest_view *view,
		       struct outbox_error *err)
{
	char what[64];
	json_object *headers;
	json_object *method;
	json_object *signing;
	int present;
	enum outbox_rc rc;

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
		/* The relay fills {{NAME}} in these, and only these. */
		rc = outbox__check_headers_object(what, headers, true, mode, err);
		if (rc != OUTBOX_OK)
			return rc;
	}
	view->method = OUTBOX_HTTP_POST;
	method = member(dest, "method", &present);
	if (method != NULL) {
		const char *m;

		snprintf(what, sizeof(what), "destinations[%zu].method", index);
		if ((rc = check_string_member(what, method, err)) != OUTBOX_OK)
			return rc;
		m = json_object_get_string(method);
		/* The crate sends anything but PUT and PATCH as POST: GET would surprise. */
		if (strcasecmp(m, "put") == 0)
			view->method = OUTBOX_HTTP_PUT;
		else if (strcasecmp(m, "patch") == 0)
			view->method = OUTBOX_HTTP_PATCH;
		else if (strcasecmp(m, "post") != 0)
			return outbox__fail(err, OUTBOX_E_INVALID,
					    "%s \"%.*s\" is not POST, PUT or PATCH", what, QUOTE_MAX,
					    m);
	}
	/* Opting out of the relay's webhook signatures: a boolean or null, nothing that only
	 * looks like false ("false", 0) and would be read as a yes by one writer and a no by another. */
	signing = member(dest, "signing", &present);
	if (signing != NULL && !json_object_is_type(signing, json_type_boolean))
		return outbox__fail(err, OUTBOX_E_INVALID,
				    "destinations[%zu].signing is not true, false or null but %s",
				    index, type_name(signing));
	view->no_signing = signing != NULL && !json_object_get_boolean(signing);
	view->kind = OUTBOX__DEST_HTTP;
	view->target = json_object_get_string(url);
	view->headers = headers;
	return OUTBOX_OK;
}

enum outbox_rc
outbox__check_destination(json_object *dest, size_t index, enum outbox__rf_mode mode,
			  struct outbox__dest_view *view, struct outbox_error *err)
{
	static const char *const keys[] = { "queue_url", "topic_arn", "url" }; /* the crate's order */
	struct outbox__dest_view scratch;
	char what[64];
	json_object *val[3];
	int present[3];
	int kinds;
	enum outbox_rc rc;

	if (view == NULL)
		view = &scratch;
	memset(view, 0, sizeof(*view));
	if (!json_object_is_type(dest, json_type_object))
		return outbox__fail(err, OUTBOX_E_INVALID,
				    "destinations[%zu] is not a JSON object but %s", index,
				    type_name(dest));
	for (size_t k = 0; k < 3; k++)
		val[k] = member(dest, keys[k], &present[k]);
	kinds = present[0] + present[1] + present[2];
	/* The crate reads a mix as the first kind that decodes; a writer that mixes is mistaken. */
	if (kinds == 0 || (kinds > 1 && mode == OUTBOX__RF_WRITE))
		return outbox__fail(err, OUTBOX_E_INVALID,
				    "destinations[%zu] must have exactly one of \"queue_url\" (SQS), "
				    "\"topic_arn\" (SNS) or \"url\" (HTTP)",
				    index);
	if (!present[0] && !present[1])
		return check_http_destination(dest, index, val[2], mode, view, err);

	snprintf(what, sizeof(what), "destinations[%zu].%s", index, present[0] ? keys[0] : keys[1]);
	if ((rc = check_string_member(what, present[0] ? val[0] : val[1], err)) != OUTBOX_OK)
		return rc;
	view->target = json_object_get_string(present[0] ? val[0] : val[1]);
	if (present[0]) {
		view->kind = OUTBOX__DEST_SQS;
		return outbox__check_http_url(what, view->target, strlen(view->target), err);
	}
	view->kind = OUTBOX__DEST_SNS;
	return outbox__check_topic_arn(what, view->target, strlen(view->target), err);
}

/* Whether name (any case) is among the first n of names. */
static bool
seen(const char *const *names, size_t n, const char *name)
{
	for (size_t i = 0; i < n; i++)
		if (strcasecmp(names[i], name) == 0)
			return true;
	return false;
}

/* Adds obj's header names to names, each once (any case), x-idempotent-key never. */
static size_t
collect_names(json_object *obj, const char **names, size_t n)
{
	struct json_object_iterator it;
	struct json_object_iterator end;

	if (obj == NULL)
		return n;
	it = json_object_iter_begin(obj);
	end = json_object_iter_end(obj);
	for (; !json_object_iter_equal(&it, &end); json_object_iter_next(&it)) {
		const char *name = json_object_iter_peek_name(&it);

		if (strcasecmp(name, "x-idempotent-key") != 0 && !seen(names, n, name))
			names[n++] = name;
	}
	return n;
}

enum outbox_rc
outbox__check_row(json_object *destinations, json_object *headers, enum outbox__rf_mode mode,
		  struct outbox__dest_view views[OUTBOX_MAX_DESTINATIONS], struct outbox_error *err)
{
	struct outbox__dest_view scratch[OUTBOX_MAX_DESTINATIONS];
	const char *names[2 * OUTBOX_MAX_HEADERS];
	size_t n;
	enum outbox_rc rc;

	if (views == NULL)
		views = scratch;
	if (!json_object_is_type(destinations, json_type_array))
		return outbox__fail(err, OUTBOX_E_INVALID, "destinations is not a JSON array but %s",
				    type_name(destinations));
	n = json_object_array_length(destinations);
	/* The crate marks such a row delivered without a request: surely a writer's mistake. */
	if (n == 0)
		return outbox__fail(err, OUTBOX_E_INVALID,
				    "destinations is an empty array: the row goes nowhere");
	if (n > OUTBOX_MAX_DESTINATIONS)
		return outbox__fail(err, OUTBOX_E_TOO_BIG,
				    "destinations has %zu entries, over the limit of %d", n,
				    OUTBOX_MAX_DESTINATIONS);
	for (size_t i = 0; i < n; i++) {
		rc = outbox__check_destination(json_object_array_get_idx(destinations, i), i, mode,
					       &views[i], err);
		if (rc != OUTBOX_OK)
			return rc;
	}
	if (headers != NULL &&
	    (rc = outbox__check_headers_object("headers", headers, false, mode, err)) != OUTBOX_OK)
		return rc;
	for (size_t i = 0; i < n; i++) {
		size_t count;

		if (views[i].kind != OUTBOX__DEST_HTTP)
			continue; /* SQS and SNS: only the row's headers, already bounded */
		/* What the relay sends: the destination's, the row's, then x-idempotent-key. */
		count = collect_names(headers, names, collect_names(views[i].headers, names, 0)) + 1;
		if (count > OUTBOX_MAX_HEADERS)
			return outbox__fail(err, OUTBOX_E_TOO_BIG,
					    "destinations[%zu] would be sent %zu headers (its own, the "
					    "row's and x-idempotent-key), over the limit of %d",
					    i, count, OUTBOX_MAX_HEADERS);
	}
	return OUTBOX_OK;
}
