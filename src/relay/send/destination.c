/*
 * destination.c - a row's destinations and headers, checked by the row format liboutbox
 * applies (rowformat.h, read mode), turned into what the relay sends.
 */
#include "send/destination.h"

#include "rowformat.h"

#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* OUTBOX_HEADER_ENV, set once at start (obr_header_env_use); NULL = every variable not refused. */
static const char *header_env;

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

/* Whether a header value may hold this variable's text (see obr_header_env_check). */
static bool header_env_allowed(const char *name)
{
	return !outbox__env_refused(name) && obr_header_env_allowed(name, header_env);
}

/* Adds the entries of one headers object, already checked by outbox__check_row. where names it
 * in messages; substitute: an HTTP destination's, whose {{NAME}} values are filled. */
static int add_headers(struct obr_destination *d, struct json_object *obj, const char *where, bool substitute,
                       const char *(*getenv_fn)(const char *), char *err, size_t errlen)
{
	if (!obj)
		return 0;
	json_object_object_foreach(obj, name, val) {
		const char *value = json_object_get_string(val);
		if (!strcasecmp(name, "x-idempotent-key"))
			continue; /* always the row's own key, set by the relay */
		char env_name[OUTBOX__ENV_NAME_MAX + 1];
		if (substitute && outbox__env_placeholder(value, env_name)) {
			/* the variable is named, never its value */
			if (!header_env_allowed(env_name)) {
				snprintf(err, errlen, "%s: header \"%.100s\" asks for {{%s}}, which OUTBOX_HEADER_ENV does not allow",
				         where, name, env_name);
				return -1;
			}
			const char *env = getenv_fn(env_name);
			/* as the crate: an unset variable leaves the placeholder as it is */
			if (env) {
				struct outbox_error why;
				if (outbox__check_header_value(name, env, strlen(env), &why) != OUTBOX_OK) {
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

/* One destination of the plan, from its checked view. */
static int plan_destination(struct obr_destination *d, const struct outbox__dest_view *view, int index,
                            const char *(*getenv_fn)(const char *), char *err, size_t errlen)
{
	static const enum obr_dest_kind kinds[] = {
		[OUTBOX__DEST_SQS] = OBR_DEST_SQS, [OUTBOX__DEST_SNS] = OBR_DEST_SNS, [OUTBOX__DEST_HTTP] = OBR_DEST_HTTP,
	};
	static const enum obr_http_method methods[] = {
		[OUTBOX_HTTP_POST] = OBR_POST, [OUTBOX_HTTP_PUT] = OBR_PUT, [OUTBOX_HTTP_PATCH] = OBR_PATCH,
	};
	char where[64];

	d->index = index;
	d->kind = kinds[view->kind];
	d->method = methods[view->method];
	d->no_signing = view->no_signing;
	d->target = strdup(view->target);
	if (!d->target) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	if (d->kind != OBR_DEST_HTTP)
		return 0;
	snprintf(where, sizeof(where), "destinations[%d].headers", index);
	return add_headers(d, view->headers, where, true, getenv_fn, err, errlen);
}

int obr_plan_parse(struct obr_plan *plan, const char *idempotent_key, const char *destinations_json,
                   const char *headers_json, const char *sent_destinations, const char *(*getenv_fn)(const char *),
                   char *err, size_t errlen)
{
	struct json_object *dests = NULL, *headers = NULL;
	bool sent_mask[OBR_MAX_DESTINATIONS] = { false };
	struct outbox__dest_view views[OBR_MAX_DESTINATIONS];
	struct outbox_error why;
	int rc = -1;

	memset(plan, 0, sizeof(*plan));
	if (!getenv_fn)
		getenv_fn = process_env;

	/* the writer's rules, in read mode: what liboutbox and the SQL helpers refuse, is parked */
	if (outbox__parse_json("destinations", destinations_json ? destinations_json : "null", OUTBOX__ROW_JSON_DEPTH,
	                       &dests, &why) ||
	    (headers_json && outbox__parse_json("headers", headers_json, OUTBOX__ROW_JSON_DEPTH, &headers, &why)) ||
	    outbox__check_row(dests, headers, OUTBOX__RF_READ, views, &why)) {
		snprintf(err, errlen, "%s", why.message);
		goto out;
	}
	size_t n = json_object_array_length(dests);
	parse_sent(sent_destinations, sent_mask, OBR_MAX_DESTINATIONS);
	if (!(plan->dests = calloc(n, sizeof(*plan->dests)))) {
		snprintf(err, errlen, "out of memory");
		goto out;
	}

	for (size_t i = 0; i < n; i++) {
		struct obr_destination *d = &plan->dests[plan->ndests++];
		if (plan_destination(d, &views[i], (int)i, getenv_fn, err, errlen))
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

void obr_header_env_use(const char *spec)
{
	header_env = spec;
}

bool obr_header_env_allowed(const char *name, const char *spec)
{
	if (!spec)
		return true;
	size_t len = strlen(name);
	for (const char *p = spec; *p;) {
		p += strspn(p, ", ");
		size_t n = strcspn(p, ", ");
		if (n && p[n - 1] == '*') {
			if (len >= n - 1 && !strncmp(name, p, n - 1))
				return true;
		} else if (n && n == len && !strncmp(name, p, n)) {
			return true;
		}
		p += n;
	}
	return false;
}

int obr_header_env_check(const char *spec, char *err, size_t errlen)
{
	int entries = 0;
	for (const char *p = spec; *p;) {
		p += strspn(p, ", ");
		size_t n = strcspn(p, ", ");
		if (!n)
			break;
		size_t name = n - (p[n - 1] == '*');
		/* a placeholder names only A-Z and _: any other entry could never match */
		if (!name || name > OUTBOX__ENV_NAME_MAX || strspn(p, "ABCDEFGHIJKLMNOPQRSTUVWXYZ_") < name) {
			snprintf(err, errlen,
			         "invalid value for OUTBOX_HEADER_ENV: \"%.*s\" is neither a variable name of A-Z and _ nor such a prefix followed by *",
			         (int)(n > 100 ? 100 : n), p);
			return -1;
		}
		char entry[OUTBOX__ENV_NAME_MAX + 1];
		snprintf(entry, sizeof(entry), "%.*s", (int)name, p);
		if (outbox__env_refused(entry)) {
			snprintf(err, errlen,
			         "invalid value for OUTBOX_HEADER_ENV: %s%s names the relay's own settings or credentials, which are never sent",
			         entry, p[n - 1] == '*' ? "*" : "");
			return -1;
		}
		entries++;
		p += n;
	}
	if (!entries) {
		snprintf(err, errlen, "invalid value for OUTBOX_HEADER_ENV: it lists no variable (unset it to allow every one)");
		return -1;
	}
	return 0;
}
