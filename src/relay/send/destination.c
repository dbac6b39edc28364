/*
 * destination.c - parsing and validation of a row's destinations and headers.
 */
#include "send/destination.h"

#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MAX_TARGET_LEN 8192
#define MAX_HEADER_NAME 256
#define MAX_HEADER_VALUE 8192

const char *obr_dest_kind_name(enum obr_dest_kind kind)
{
	switch (kind) {
	case OBR_DEST_HTTP: return "http";
	case OBR_DEST_SQS: return "sqs";
	case OBR_DEST_SNS: return "sns";
	}
	return "?";
}

const char *obr_http_method_name(enum obr_http_method method)
{
	switch (method) {
	case OBR_POST: return "POST";
	case OBR_PUT: return "PUT";
	case OBR_PATCH: return "PATCH";
	}
	return "?";
}

void obr_plan_clear(struct obr_plan *plan)
{
	for (int i = 0; i < plan->ndests; i++) {
		struct obr_destination *d = &plan->dests[i];
		free(d->target);
		for (int h = 0; h < d->nheaders; h++) {
			free(d->headers[h].name);
			free(d->headers[h].value);
		}
		free(d->headers);
	}
	free(plan->dests);
	memset(plan, 0, sizeof(*plan));
}

/* RFC 9110 token characters: what a header name may contain. */
static bool is_token(const char *s)
{
	if (!*s)
		return false;
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p <= 32 || *p >= 127 || strchr("()<>@,;:\\\"/[]?={}", *p))
			return false;
	}
	return true;
}

static bool valid_header_value(const char *s)
{
	for (const unsigned char *p = (const unsigned char *)s; *p; p++)
		if (*p == '\r' || *p == '\n' || (*p < 32 && *p != '\t') || *p == 127)
			return false;
	return true;
}

/* The crate's placeholder: the whole value is {{UPPER_SNAKE}} (regex ^\{\{[A-Z_]+}}$). */
static const char *env_placeholder(const char *value, char *name, size_t cap)
{
	size_t len = strlen(value);
	if (len < 5 || strncmp(value, "{{", 2) || strcmp(value + len - 2, "}}"))
		return NULL;
	size_t n = len - 4;
	if (n >= cap)
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

/* Adds or replaces (case-insensitively) a header; a later source wins, a name is never sent twice. */
static int put_header(struct obr_destination *d, const char *name, const char *value, char *err, size_t errlen)
{
	for (int i = 0; i < d->nheaders; i++) {
		if (!strcasecmp(d->headers[i].name, name)) {
			char *v = strdup(value);
			if (!v)
				goto oom;
			free(d->headers[i].value);
			d->headers[i].value = v;
			return 0;
		}
	}
	if (d->nheaders >= OBR_MAX_HEADERS) {
		snprintf(err, errlen, "too many headers (more than %d)", OBR_MAX_HEADERS);
		return -1;
	}
	if (d->nheaders == d->cap) {
		int cap = d->cap ? d->cap * 2 : 8;
		struct obr_header *grown = realloc(d->headers, (size_t)cap * sizeof(*grown));
		if (!grown)
			goto oom;
		d->headers = grown;
		d->cap = cap;
	}
	d->headers[d->nheaders].name = strdup(name);
	d->headers[d->nheaders].value = strdup(value);
	d->nheaders++;
	if (!d->headers[d->nheaders - 1].name || !d->headers[d->nheaders - 1].value)
		goto oom;
	return 0;
oom:
	snprintf(err, errlen, "out of memory");
	return -1;
}

/* Checks one headers object and adds its entries. where names it in messages. */
static int add_headers(struct obr_destination *d, struct json_object *obj, const char *where, bool substitute,
                       const char *(*getenv_fn)(const char *), char *err, size_t errlen)
{
	if (!obj || json_object_is_type(obj, json_type_null))
		return 0;
	if (!json_object_is_type(obj, json_type_object)) {
		snprintf(err, errlen, "%s must be a JSON object of strings, not %s", where,
		         json_type_to_name(json_object_get_type(obj)));
		return -1;
	}
	json_object_object_foreach(obj, name, val) {
		if (!json_object_is_type(val, json_type_string)) {
			snprintf(err, errlen, "%s: value of \"%.100s\" must be a string, not %s", where, name,
			         json_type_to_name(json_object_get_type(val)));
			return -1;
		}
		const char *value = json_object_get_string(val);
		if (strlen(name) > MAX_HEADER_NAME || !is_token(name)) {
			snprintf(err, errlen, "%s: invalid header name \"%.100s\"", where, name);
			return -1;
		}
		if ((size_t)json_object_get_string_len(val) != strlen(value) || strlen(value) > MAX_HEADER_VALUE ||
		    !valid_header_value(value)) {
			snprintf(err, errlen, "%s: invalid value for header \"%.100s\" (control characters or too long)",
			         where, name);
			return -1;
		}
		if (!strcasecmp(name, "x-idempotent-key"))
			continue; /* always the row's own key, set by the relay */
		/* the message's framing is the relay's: a row that sets it could make the endpoint read
		 * the body as a different request (or wait for bytes that never come) */
		if (!strcasecmp(name, "content-length") || !strcasecmp(name, "transfer-encoding") ||
		    !strcasecmp(name, "host") || !strcasecmp(name, "connection")) {
			snprintf(err, errlen, "%s: header \"%s\" is set by the relay, not by rows", where, name);
			return -1;
		}
		char env_name[128];
		if (substitute && env_placeholder(value, env_name, sizeof(env_name))) {
			const char *env = getenv_fn(env_name);
			/* as the crate: an unset variable leaves the placeholder as it is */
			if (env) {
				if (strlen(env) > MAX_HEADER_VALUE || !valid_header_value(env)) {
					snprintf(err, errlen,
					         "%s: environment variable %s for header \"%.100s\" has control characters or is too long",
					         where, env_name, name);
					return -1;
				}
				value = env;
			}
		}
		if (put_header(d, name, value, err, errlen))
			return -1;
	}
	return 0;
}

static int check_http_url(const char *url, char *err, size_t errlen)
{
	const char *rest;
	if (!strncasecmp(url, "http://", 7))
		rest = url + 7;
	else if (!strncasecmp(url, "https://", 8))
		rest = url + 8;
	else {
		snprintf(err, errlen, "url \"%.200s\" must start with http:// or https://", url);
		return -1;
	}
	size_t hostlen = strcspn(rest, "/?#");
	if (hostlen == 0 || rest[0] == ':') {
		snprintf(err, errlen, "url \"%.200s\" has no host", url);
		return -1;
	}
	if (memchr(rest, '@', hostlen)) {
		snprintf(err, errlen, "url \"%.200s\" must not carry credentials (user@host)", url);
		return -1;
	}
	for (const unsigned char *p = (const unsigned char *)url; *p; p++) {
		if (*p <= 32 || *p >= 127) {
			snprintf(err, errlen, "url \"%.200s\" contains spaces, control or non-ASCII characters", url);
			return -1;
		}
	}
	return 0;
}

bool obr_host_allowed(const char *url, const char *allowlist)
{
	if (!allowlist)
		return true;
	const char *rest = strstr(url, "://");
	rest = rest ? rest + 3 : url;
	size_t authority = strcspn(rest, "/?#");
	const char *at = memchr(rest, '@', authority);
	if (at) {
		authority -= (size_t)(at + 1 - rest);
		rest = at + 1;
	}
	size_t hostlen;
	if (rest[0] == '[') {
		const char *end = memchr(rest, ']', authority);
		hostlen = end ? (size_t)(end - rest) + 1 : authority;
	} else {
		hostlen = strcspn(rest, ":/?#"); /* never past the authority, which ends at / ? # */
	}
	while (hostlen && rest[hostlen - 1] == '.')
		hostlen--; /* "example.com." is example.com */
	const char *p = allowlist;
	while (*p) {
		while (*p == ',' || *p == ' ')
			p++;
		size_t n = strcspn(p, ", ");
		if (n >= 2 && p[0] == '*' && p[1] == '.') {
			size_t suffix = n - 1; /* ".example.com" */
			if (hostlen > suffix && !strncasecmp(rest + hostlen - suffix, p + 1, suffix))
				return true;
		} else if (n && n == hostlen && !strncasecmp(rest, p, n)) {
			return true;
		}
		p += n;
	}
	return false;
}

static const char *process_env(const char *name)
{
	return getenv(name);
}

static const char *string_member(struct json_object *obj, const char *key, bool *present, bool *wrong_type)
{
	struct json_object *v;
	*present = json_object_object_get_ex(obj, key, &v);
	*wrong_type = false;
	if (!*present)
		return NULL;
	if (!json_object_is_type(v, json_type_string)) {
		*wrong_type = true;
		return NULL;
	}
	return json_object_get_string(v);
}

static int parse_sent(const char *sent, bool *sent_mask, int nmax)
{
	if (!sent)
		return 0;
	const char *p = sent;
	while (*p) {
		if (*p >= '0' && *p <= '9') {
			long v = strtol(p, (char **)(void *)&p, 10);
			if (v >= 0 && v < nmax)
				sent_mask[v] = true;
		} else if (*p == '-') {
			/* a negative element is no index: skip it whole ("-1" used to mark destination 1
			 * as sent, so it was never delivered) */
			p++;
			while (*p >= '0' && *p <= '9')
				p++;
		} else {
			p++;
		}
	}
	return 0;
}

static int parse_destination(struct obr_destination *d, struct json_object *obj, int index,
                             const char *(*getenv_fn)(const char *), char *err, size_t errlen)
{
	char where[64];
	bool present, wrong;
	const char *target;

	d->index = index;
	if (!json_object_is_type(obj, json_type_object)) {
		snprintf(err, errlen, "destinations[%d] must be an object, not %s", index,
		         json_type_to_name(json_object_get_type(obj)));
		return -1;
	}
	static const struct { const char *key; enum obr_dest_kind kind; } shapes[] = {
		{ "queue_url", OBR_DEST_SQS }, { "topic_arn", OBR_DEST_SNS }, { "url", OBR_DEST_HTTP },
	};
	for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
		target = string_member(obj, shapes[s].key, &present, &wrong);
		if (!present)
			continue;
		if (wrong || !target || !*target) {
			snprintf(err, errlen, "destinations[%d].%s must be a non-empty string", index, shapes[s].key);
			return -1;
		}
		if (strlen(target) > MAX_TARGET_LEN) {
			snprintf(err, errlen, "destinations[%d].%s is longer than %d bytes", index, shapes[s].key, MAX_TARGET_LEN);
			return -1;
		}
		d->kind = shapes[s].kind;
		d->target = strdup(target);
		if (!d->target) {
			snprintf(err, errlen, "out of memory");
			return -1;
		}
		break;
	}
	if (!d->target) {
		snprintf(err, errlen, "destinations[%d] has none of queue_url, topic_arn or url", index);
		return -1;
	}

	if (d->kind == OBR_DEST_SQS) {
		if (check_http_url(d->target, err, errlen)) {
			char inner[256];
			snprintf(inner, sizeof(inner), "%s", err);
			snprintf(err, errlen, "destinations[%d].queue_url: %s", index, inner);
			return -1;
		}
		return 0;
	}
	if (d->kind == OBR_DEST_SNS) {
		if (strncmp(d->target, "arn:", 4) != 0 || !valid_header_value(d->target)) {
			snprintf(err, errlen, "destinations[%d].topic_arn \"%.200s\" is not an ARN (arn:aws:sns:region:account:name)",
			         index, d->target);
			return -1;
		}
		return 0;
	}

	if (check_http_url(d->target, err, errlen)) {
		char inner[300];
		snprintf(inner, sizeof(inner), "%s", err);
		snprintf(err, errlen, "destinations[%d]: %s", index, inner);
		return -1;
	}
	struct json_object *m;
	d->method = OBR_POST;
	if (json_object_object_get_ex(obj, "method", &m) && !json_object_is_type(m, json_type_null)) {
		const char *method = json_object_is_type(m, json_type_string) ? json_object_get_string(m) : NULL;
		if (!method) {
			snprintf(err, errlen, "destinations[%d].method must be a string or null", index);
			return -1;
		}
		if (!strcasecmp(method, "post"))
			d->method = OBR_POST;
		else if (!strcasecmp(method, "put"))
			d->method = OBR_PUT;
		else if (!strcasecmp(method, "patch"))
			d->method = OBR_PATCH;
		else {
			snprintf(err, errlen, "destinations[%d].method \"%.40s\" is not supported (POST, PUT or PATCH)", index,
			         method);
			return -1;
		}
	}
	struct json_object *h = NULL;
	json_object_object_get_ex(obj, "headers", &h);
	snprintf(where, sizeof(where), "destinations[%d].headers", index);
	return add_headers(d, h, where, true, getenv_fn, err, errlen);
}

int obr_plan_parse(struct obr_plan *plan, const char *idempotent_key, const char *destinations_json,
                   const char *headers_json, const char *sent_destinations, const char *(*getenv_fn)(const char *),
                   char *err, size_t errlen)
{
	struct json_object *dests = NULL, *headers = NULL;
	bool sent_mask[OBR_MAX_DESTINATIONS] = { false };
	int rc = -1;

	memset(plan, 0, sizeof(*plan));
	if (!getenv_fn)
		getenv_fn = process_env;

	enum json_tokener_error jerr;
	dests = json_tokener_parse_verbose(destinations_json ? destinations_json : "", &jerr);
	if (!dests || !json_object_is_type(dests, json_type_array)) {
		/* json-c returns NULL both for "null" and for a parse error */
		snprintf(err, errlen, "destinations must be a JSON array, not %s",
		         dests ? json_type_to_name(json_object_get_type(dests))
		               : jerr == json_tokener_success ? "null" : "valid JSON");
		goto out;
	}
	if (headers_json) {
		headers = json_tokener_parse_verbose(headers_json, &jerr);
		if (!headers && strcmp(headers_json, "null") != 0) {
			snprintf(err, errlen, "headers is not valid JSON");
			goto out;
		}
		if (headers && !json_object_is_type(headers, json_type_object)) {
			snprintf(err, errlen, "headers must be a JSON object of strings, not %s",
			         json_type_to_name(json_object_get_type(headers)));
			goto out;
		}
	}
	size_t n = json_object_array_length(dests);
	if (n > OBR_MAX_DESTINATIONS) {
		snprintf(err, errlen, "too many destinations (%zu, at most %d)", n, OBR_MAX_DESTINATIONS);
		goto out;
	}
	parse_sent(sent_destinations, sent_mask, OBR_MAX_DESTINATIONS);
	if (n && !(plan->dests = calloc(n, sizeof(*plan->dests)))) {
		snprintf(err, errlen, "out of memory");
		goto out;
	}

	for (size_t i = 0; i < n; i++) {
		struct obr_destination *d = &plan->dests[plan->ndests++];
		if (parse_destination(d, json_object_array_get_idx(dests, i), (int)i, getenv_fn, err, errlen))
			goto out;
		d->already_sent = sent_mask[i];
		/* the row's headers: after the destination's for HTTP (a name in both: the row's wins),
		 * message attributes for SQS/SNS */
		if (add_headers(d, headers, "headers", false, getenv_fn, err, errlen))
			goto out;
		if (d->kind == OBR_DEST_HTTP && put_header(d, "x-idempotent-key", idempotent_key, err, errlen))
			goto out;
	}
	rc = 0;
out:
	json_object_put(dests);
	json_object_put(headers);
	if (rc)
		obr_plan_clear(plan);
	return rc;
}
