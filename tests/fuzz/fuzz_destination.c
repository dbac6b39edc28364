/*
 * fuzz_destination.c - a row as the relay reads it: obr_plan_parse (destinations JSON, headers
 * JSON, the sent_destinations int[] text), obr_host_allowed on every HTTP target, and what the
 * relay derives from an SQS or SNS destination (region, FIFO, endpoint URL, the per-message
 * checks and the SendMessageBatch / PublishBatch bodies). The parked-row message goes through
 * obr_utf8_sanitize as in relay.c.
 *
 * Input: up to seven fields, separated by lines holding only "%%"; a missing field takes its
 * default, a field that is exactly NULL is SQL NULL:
 *   destinations JSON        (required)
 *   headers JSON             (default NULL)
 *   sent_destinations        (default NULL; PostgreSQL int[] text such as {0,2})
 *   idempotent key           (default a UUID; the column is a uuid: other text is replaced)
 *   OUTBOX_ALLOWED_HOSTS     (default "api.example.com,*.hooks.example.com")
 *   payload                  (default {"order":1})
 *   partition key            (default partition-1; text: invalid UTF-8 is replaced)
 * {{NAME}} header values resolve through fake_env below: TOKEN, CRLF, TAB, EMPTY and LONG are
 * set, everything else is unset.
 *
 * Checked for every input besides memory errors: an HTTP target the allow-list lets through
 * names a listed host as libcurl parses the URL; an accepted row's targets, methods and headers
 * are what the relay may send (tokens, no control characters, no name twice, x-idempotent-key
 * last, already_sent exactly for the non-negative elements of sent_destinations), a rejected
 * row has a message that sanitizes to valid UTF-8, and the SQS body we build is valid JSON
 * carrying the payload byte for byte.
 */
#include "fuzz.h"

#include "send/aws_protocol.h"
#include "send/destination.h"
#include "util/strbuf.h"

#include <curl/curl.h>
#include <json-c/json.h>
#include <stdbool.h>
#include <string.h>
#include <strings.h>

#define DEFAULT_KEY "0190f5a2-7c1e-7a55-b3a5-3a9c1f0c2e11"
#define DEFAULT_ALLOW "api.example.com,*.hooks.example.com"
#define DEFAULT_PAYLOAD "{\"order\":1}"
#define PARTITION "partition-1"

static char long_value[9000];

static const char *fake_env(const char *name)
{
	if (!strcmp(name, "TOKEN"))
		return "secret-token";
	if (!strcmp(name, "CRLF"))
		return "a\r\nInjected: 1";
	if (!strcmp(name, "TAB"))
		return "a\tb";
	if (!strcmp(name, "EMPTY"))
		return "";
	if (!strcmp(name, "LONG")) {
		if (!long_value[0])
			memset(long_value, 'x', sizeof(long_value) - 1);
		return long_value;
	}
	return NULL;
}

static bool is_token(const char *s)
{
	if (!*s)
		return false;
	for (const unsigned char *p = (const unsigned char *)s; *p; p++)
		if (*p <= 32 || *p >= 127 || strchr("()<>@,;:\\\"/[]?={}", *p))
			return false;
	return true;
}

static bool header_value_ok(const char *s)
{
	for (const unsigned char *p = (const unsigned char *)s; *p; p++)
		if ((*p < 32 && *p != '\t') || *p == 127)
			return false;
	return true;
}

static bool printable_ascii(const char *s)
{
	for (const unsigned char *p = (const unsigned char *)s; *p; p++)
		if (*p <= 32 || *p >= 127)
			return false;
	return true;
}

/* What relay.c does with a parse error before it reaches last_error and the log. */
static void check_message(const char *err, size_t errlen)
{
	FUZZ_CHECK(memchr(err, '\0', errlen) != NULL);
	FUZZ_CHECK(err[0] != '\0');
	char copy[512];
	snprintf(copy, sizeof(copy), "%s", err);
	obr_utf8_sanitize(copy);
	FUZZ_CHECK(obr_utf8_valid(copy, strlen(copy)));
}

/* The SendMessageBatch body must be JSON that carries each message byte for byte. */
static void check_sqs_body(const struct obr_strbuf *b, const struct obr_aws_entry *e, int n)
{
	struct json_tokener *tok = json_tokener_new();
	FUZZ_CHECK(tok);
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
	struct json_object *obj = json_tokener_parse_ex(tok, b->data, (int)b->len);
	FUZZ_CHECK(obj && json_tokener_get_parse_end(tok) == b->len);
	json_tokener_free(tok);
	struct json_object *entries, *body;
	FUZZ_CHECK(json_object_object_get_ex(obj, "Entries", &entries));
	FUZZ_CHECK((int)json_object_array_length(entries) == n);
	for (int i = 0; i < n; i++) {
		struct json_object *entry = json_object_array_get_idx(entries, (size_t)i);
		FUZZ_CHECK(json_object_object_get_ex(entry, "MessageBody", &body));
		FUZZ_CHECK((size_t)json_object_get_string_len(body) == e->body_len);
		FUZZ_CHECK(!memcmp(json_object_get_string(body), e->body, e->body_len));
	}
	json_object_put(obj);
}

/* A PublishBatch body is form-encoded: only unreserved characters, %XX, & and =. */
static void check_sns_body(const struct obr_strbuf *b)
{
	for (size_t i = 0; i < b->len; i++) {
		unsigned char c = (unsigned char)b->data[i];
		FUZZ_CHECK((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		           strchr("-_.~&=", c) || c == '%');
		if (c == '%')
			FUZZ_CHECK(i + 2 < b->len && strchr("0123456789ABCDEF", b->data[i + 1]) &&
			           strchr("0123456789ABCDEF", b->data[i + 2]));
	}
}

/* SQS and SNS: what aws.c does with a parsed destination before it sends anything. */
static void aws_pipeline(const struct obr_destination *d, const char *key, const char *payload,
                         const char *partition)
{
	static char region_env[] = "eu-west-1", endpoint[] = "http://127.0.0.1:4566";
	const struct obr_aws_config plain = { 0 };
	const struct obr_aws_config overridden = {
		.region = region_env, .endpoint_sqs = endpoint, .endpoint_sns = endpoint,
	};
	const struct obr_aws_config *cfgs[] = { &plain, &overridden };
	for (size_t c = 0; c < sizeof(cfgs) / sizeof(cfgs[0]); c++) {
		char region[OBR_AWS_REGION_MAX], url[2048];
		if (!obr_aws_target_region(cfgs[c], d->kind, d->target, region, sizeof(region)))
			continue;
		FUZZ_CHECK(strlen(region) < sizeof(region));
		if (obr_aws_request_url(cfgs[c], d->kind, d->target, region, url, sizeof(url)) == 0)
			FUZZ_CHECK(!strncasecmp(url, "http://", 7) || !strncasecmp(url, "https://", 8));
	}
	bool fifo = obr_aws_target_is_fifo(d->kind, d->target);

	struct obr_aws_entry e = {
		.body = payload, .body_len = strlen(payload), .key = key, .group = partition,
		.attrs = d->headers, .nattrs = d->nheaders,
	};
	size_t size;
	char err[OBR_AWS_ERROR_MAX];
	if (obr_aws_entry_check(d->kind, &e, &size, err, sizeof(err))) {
		check_message(err, sizeof(err));
		return;
	}
	FUZZ_CHECK(size == obr_aws_entry_size(&e) && size <= obr_aws_max_message(d->kind));
	const struct obr_aws_entry *entries[] = { &e, &e };
	struct obr_strbuf b;
	obr_strbuf_init(&b, OBR_AWS_MAX_BODY);
	if (d->kind == OBR_DEST_SQS) {
		if (obr_aws_build_sqs_batch(&b, d->target, fifo, entries, 2) == 0)
			check_sqs_body(&b, &e, 2);
	} else {
		if (obr_aws_build_sns_batch(&b, d->target, fifo, entries, 2) == 0)
			check_sns_body(&b);
	}
	obr_strbuf_free(&b);
}

/* The allow-list's documented meaning, applied to a host name. */
static bool listed(const char *host, const char *allow)
{
	size_t hl = strlen(host);
	for (const char *p = allow; *p;) {
		p += strspn(p, ", ");
		size_t n = strcspn(p, ", ");
		if (n >= 2 && p[0] == '*' && p[1] == '.') {
			if (hl > n - 1 && !strncasecmp(host + hl - (n - 1), p + 1, n - 1))
				return true;
		} else if (n && n == hl && !strncasecmp(host, p, n)) {
			return true;
		}
		p += n;
	}
	return false;
}

/* obr_host_allowed against the host libcurl will connect to (http.c hands it the URL as is):
 * a URL the allow-list lets through must name, to curl, a listed host. */
static void check_allowed_host(const char *url, const char *allow)
{
	if (!allow || !obr_host_allowed(url, allow))
		return;
	CURLU *u = curl_url();
	FUZZ_CHECK(u);
	char *host = NULL;
	if (curl_url_set(u, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME) == CURLUE_OK &&
	    curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK) {
		size_t n = strlen(host);
		while (n && host[n - 1] == '.')
			host[--n] = '\0';
		/* the host as written; curl rewrites IPv4 shorthand ("3", "0x7f.1") and IPv6 to their
		 * canonical forms, the same address the operator listed in that spelling */
		const char *written = strstr(url, "://") + 3;
		size_t wl = written[0] == '[' ? strcspn(written, "]") : strcspn(written, ":/?#");
		bool numeric = (written[0] == '[' && host[0] == '[') ||
		               (strspn(host, "0123456789.") == n && strspn(written, "0123456789abcdefABCDEFxX.") >= wl);
		if (!listed(host, allow) && !numeric) {
			fprintf(stderr, "allow-list \"%s\" lets \"%s\" through to host \"%s\"\n", allow, url, host);
			FUZZ_CHECK(!"allowed URL whose curl host is not listed");
		}
	}
	curl_free(host);
	curl_url_cleanup(u);
}

static void check_destination(const struct obr_destination *d, int i, const char *key, const char *allow,
                              const char *payload, const char *partition)
{
	FUZZ_CHECK(d->index == i);
	FUZZ_CHECK(d->target && d->target[0] && strlen(d->target) <= 8192);
	FUZZ_CHECK(strcmp(obr_dest_kind_name(d->kind), "?") != 0);
	if (d->kind == OBR_DEST_SNS) {
		FUZZ_CHECK(!strncmp(d->target, "arn:", 4) && header_value_ok(d->target));
	} else {
		FUZZ_CHECK(!strncasecmp(d->target, "http://", 7) || !strncasecmp(d->target, "https://", 8));
		FUZZ_CHECK(printable_ascii(d->target));
	}
	FUZZ_CHECK(d->nheaders >= 0 && d->nheaders <= OBR_MAX_HEADERS && d->nheaders <= d->cap);
	for (int h = 0; h < d->nheaders; h++) {
		const struct obr_header *hd = &d->headers[h];
		FUZZ_CHECK(is_token(hd->name) && strlen(hd->name) <= 256);
		bool idem = !strcasecmp(hd->name, "x-idempotent-key");
		if (idem) {
			/* set by the relay, never taken from the row; last, HTTP only */
			FUZZ_CHECK(d->kind == OBR_DEST_HTTP && h == d->nheaders - 1 && !strcmp(hd->value, key));
		} else {
			FUZZ_CHECK(header_value_ok(hd->value) && strlen(hd->value) <= 8192);
		}
		for (int o = 0; o < h; o++)
			FUZZ_CHECK(strcasecmp(d->headers[o].name, hd->name) != 0);
	}
	if (d->kind == OBR_DEST_HTTP) {
		FUZZ_CHECK(strcmp(obr_http_method_name(d->method), "?") != 0);
		FUZZ_CHECK(d->nheaders > 0 && !strcmp(d->headers[d->nheaders - 1].name, "x-idempotent-key"));
		FUZZ_CHECK(obr_host_allowed(d->target, NULL));
		check_allowed_host(d->target, allow);
		FUZZ_CHECK(!obr_host_allowed(d->target, ""));
	} else {
		aws_pipeline(d, key, payload, partition);
	}
}

/* PostgreSQL's int[] text: every element that is a non-negative integer below the limit. */
static void expected_sent(const char *sent, bool *mask)
{
	memset(mask, 0, OBR_MAX_DESTINATIONS * sizeof(*mask));
	for (const char *p = sent; p && *p;) {
		if (*p < '0' || *p > '9') {
			p++;
			continue;
		}
		bool negative = p > sent && p[-1] == '-';
		unsigned long v = 0;
		bool big = false;
		for (; *p >= '0' && *p <= '9'; p++) {
			big |= v > OBR_MAX_DESTINATIONS;
			v = v * 10 + (unsigned long)(*p - '0');
		}
		if (!negative && !big && v < OBR_MAX_DESTINATIONS)
			mask[v] = true;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fuzz_fields f;
	if (size > 256 * 1024 || fuzz_split(&f, data, size, 7))
		return 0;
	const char *dests = fuzz_field(&f, 0, NULL);
	const char *headers = fuzz_field(&f, 1, NULL);
	const char *sent = fuzz_field(&f, 2, NULL);
	const char *key = fuzz_field(&f, 3, DEFAULT_KEY);
	const char *allow = fuzz_field(&f, 4, DEFAULT_ALLOW);
	const char *payload = fuzz_field(&f, 5, DEFAULT_PAYLOAD);
	const char *partition = fuzz_field(&f, 6, PARTITION);
	if (!key || strlen(key) > 36 || strspn(key, "0123456789abcdefABCDEF-") != strlen(key))
		key = DEFAULT_KEY; /* a uuid, NOT NULL in the table */
	if (!partition || !obr_utf8_valid(partition, strlen(partition)))
		partition = PARTITION; /* text NOT NULL: valid UTF-8 */
	if (!payload)
		payload = "";

	struct obr_plan plan;
	char err[512];
	memset(err, 0x55, sizeof(err));
	if (obr_plan_parse(&plan, key, dests, headers, sent, fake_env, err, sizeof(err)) == 0) {
		FUZZ_CHECK(plan.ndests >= 0 && plan.ndests <= OBR_MAX_DESTINATIONS);
		bool mask[OBR_MAX_DESTINATIONS];
		expected_sent(sent, mask);
		for (int i = 0; i < plan.ndests; i++) {
			check_destination(&plan.dests[i], i, key, allow, payload, partition);
			FUZZ_CHECK(plan.dests[i].already_sent == mask[i]);
		}
		obr_plan_clear(&plan);
		FUZZ_CHECK(plan.dests == NULL && plan.ndests == 0);
	} else {
		FUZZ_CHECK(plan.dests == NULL && plan.ndests == 0);
		check_message(err, sizeof(err));
		/* the same answer into a tiny heap buffer: every message is cut, never overflows */
		char *small = malloc(8);
		if (small) {
			FUZZ_CHECK(obr_plan_parse(&plan, key, dests, headers, sent, fake_env, small, 8) != 0);
			FUZZ_CHECK(memchr(small, '\0', 8) != NULL);
			free(small);
		}
	}
	/* the allow-list matcher on the raw text too: it is public and must take any string */
	if (dests)
		(void)obr_host_allowed(dests, allow);
	fuzz_fields_free(&f);
	return 0;
}
