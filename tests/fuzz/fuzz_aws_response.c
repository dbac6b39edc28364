/*
 * fuzz_aws_response.c - every parser of an AWS answer, on the same bytes: SendMessageBatch
 * results (JSON), PublishBatch results (XML), a failed request's error body (JSON or XML, any
 * status), container / instance-metadata credentials (JSON) and STS AssumeRoleWithWebIdentity
 * (XML), with the XML scanner and the text encoders they rely on: obr_xml_element,
 * obr_xml_text, obr_xml_unescape, obr_aws_parse_time, obr_utf8_valid, obr_aws_chars_valid,
 * obr_json_string, obr_form_encode and obr_utf8_sanitize.
 *
 * Input: the response body, as is (a seed is a real-looking answer). The parsers take
 * (body, len) and get an exactly sized buffer, never a NUL-terminated one.
 *
 * Checked besides memory errors: results and messages are single-line and NUL-terminated in
 * their arrays, credentials have a key and a secret, the XML helpers stay inside their
 * buffers, obr_json_string output is JSON that decodes to the input, obr_form_encode output
 * decodes to the input, obr_utf8_sanitize leaves valid UTF-8 (and valid input unchanged).
 */
#include "fuzz.h"

#include "send/aws_credentials.h"
#include "send/aws_protocol.h"
#include "util/strbuf.h"

#include <json-c/json.h>
#include <stdbool.h>
#include <string.h>

static void check_line(const char *s, size_t cap)
{
	FUZZ_CHECK(memchr(s, '\0', cap) != NULL);
	for (const unsigned char *p = (const unsigned char *)s; *p; p++)
		FUZZ_CHECK(*p >= 32 && *p != 127);
}

static void check_results(const struct obr_aws_entry_result *r, int n)
{
	for (int i = 0; i < n; i++) {
		check_line(r[i].code, sizeof(r[i].code));
		check_line(r[i].error, sizeof(r[i].error));
		if (r[i].ok)
			FUZZ_CHECK(!r[i].permanent && r[i].code[0] == '\0');
		else
			FUZZ_CHECK(r[i].error[0] != '\0');
	}
}

static void batch_results(const char *body, size_t len)
{
	struct obr_aws_entry_result r[OBR_AWS_MAX_BATCH];
	const int sizes[] = { 1, OBR_AWS_MAX_BATCH };
	for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
		if (obr_aws_parse_sqs_batch(body, len, sizes[s], r) == 0)
			check_results(r, sizes[s]);
		if (obr_aws_parse_sns_batch(body, len, sizes[s], r) == 0)
			check_results(r, sizes[s]);
	}
}

static void request_failures(const char *body, size_t len)
{
	static const struct {
		enum obr_dest_kind kind;
		long status;
		const char *why;
	} calls[] = {
		{ OBR_DEST_SQS, 0, "Connection refused" }, { OBR_DEST_SNS, 0, NULL }, { OBR_DEST_SQS, 400, NULL },
		{ OBR_DEST_SNS, 403, NULL }, { OBR_DEST_SQS, 413, NULL }, { OBR_DEST_SNS, 503, NULL },
	};
	for (size_t i = 0; i < sizeof(calls) / sizeof(calls[0]); i++) {
		struct obr_aws_entry_result r;
		obr_aws_request_failure(calls[i].kind, calls[i].status, body, len, calls[i].why, &r);
		check_results(&r, 1);
		FUZZ_CHECK(!r.ok);
		(void)obr_aws_code_is_credential(r.code);
	}
}

static void check_creds(int rc, struct obr_aws_creds *c, const char *err, size_t errlen)
{
	if (rc) {
		FUZZ_CHECK(memchr(err, '\0', errlen) && err[0]);
		FUZZ_CHECK(!c->access_key && !c->secret_key && !c->token && !c->userpwd);
		return;
	}
	FUZZ_CHECK(c->access_key && c->access_key[0] && c->secret_key && c->secret_key[0] && c->userpwd);
	FUZZ_CHECK(!strchr(c->access_key, ':'));
	size_t kl = strlen(c->access_key);
	FUZZ_CHECK(!strncmp(c->userpwd, c->access_key, kl) && c->userpwd[kl] == ':' &&
	           !strcmp(c->userpwd + kl + 1, c->secret_key));
	obr_aws_creds_clear(c);
}

static void credentials(const char *body, size_t len)
{
	struct obr_aws_creds c;
	char err[256];
	check_creds(obr_aws_parse_creds_json(body, len, &c, err, sizeof(err)), &c, err, sizeof(err));
	check_creds(obr_aws_parse_sts_creds(body, len, &c, err, sizeof(err)), &c, err, sizeof(err));
}

static void xml(const char *body, size_t len)
{
	static const char *const names[] = { "Error", "member", "Id", "Code", "Message", "Credentials" };
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		const char *content;
		size_t clen, end;
		if (obr_xml_element(body, len, names[i], &content, &clen, &end)) {
			FUZZ_CHECK(content >= body && content + clen <= body + len && end <= len);
			FUZZ_CHECK((size_t)(content - body) + clen <= end);
		}
	}
	static const size_t caps[] = { 1, 2, 3, 4, 5, 8, 16, 64 };
	for (size_t i = 0; i < sizeof(caps) / sizeof(caps[0]); i++) {
		char *out = malloc(caps[i]); /* exactly sized: ASan sees a write past it */
		if (!out)
			return;
		size_t n = obr_xml_unescape(body, len, out, caps[i]);
		FUZZ_CHECK(n < caps[i] && out[n] == '\0');
		if (obr_xml_text(body, len, "Code", out, caps[i]))
			FUZZ_CHECK(memchr(out, '\0', caps[i]) != NULL);
		free(out);
	}
	char *out = malloc(len + 1);
	if (out) {
		size_t n = obr_xml_unescape(body, len, out, len + 1);
		FUZZ_CHECK(n <= len && out[n] == '\0'); /* decoding never grows the text */
		free(out);
	}
}

/* obr_json_string: the output is one JSON string that decodes to the input. */
static void json_roundtrip(const char *s, size_t len)
{
	struct obr_strbuf b;
	obr_strbuf_init(&b, 8 * len + 16);
	obr_json_string(&b, s, len);
	FUZZ_CHECK(!b.failed);
	struct json_tokener *tok = json_tokener_new();
	FUZZ_CHECK(tok);
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
	struct json_object *obj = json_tokener_parse_ex(tok, b.data, (int)b.len);
	FUZZ_CHECK(obj && json_object_is_type(obj, json_type_string) && json_tokener_get_parse_end(tok) == b.len);
	FUZZ_CHECK((size_t)json_object_get_string_len(obj) == len && !memcmp(json_object_get_string(obj), s, len));
	json_object_put(obj);
	json_tokener_free(tok);
	obr_strbuf_free(&b);
}

static int hexval(char c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* obr_form_encode: unreserved characters and %XX only, decoding to the input. */
static void form_roundtrip(const char *s, size_t len)
{
	struct obr_strbuf b;
	obr_strbuf_init(&b, 3 * len + 16);
	obr_form_encode(&b, s, len);
	FUZZ_CHECK(!b.failed);
	size_t o = 0;
	for (size_t i = 0; i < b.len; o++) {
		char c = b.data ? b.data[i] : '\0';
		if (c == '%') {
			FUZZ_CHECK(i + 2 < b.len && hexval(b.data[i + 1]) >= 0 && hexval(b.data[i + 2]) >= 0);
			FUZZ_CHECK(o < len && (unsigned char)s[o] == (hexval(b.data[i + 1]) << 4 | hexval(b.data[i + 2])));
			i += 3;
		} else {
			FUZZ_CHECK(strchr("-_.~", c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'));
			FUZZ_CHECK(o < len && s[o] == c);
			i++;
		}
	}
	FUZZ_CHECK(o == len);
	obr_strbuf_free(&b);
}

/* The text helpers, on the body as a C string (up to its first NUL). */
static void text(const char *s)
{
	size_t len = strlen(s);
	bool valid = obr_utf8_valid(s, len);
	if (obr_aws_chars_valid(s, len))
		FUZZ_CHECK(valid);

	char *copy = strdup(s);
	if (!copy)
		return;
	obr_utf8_sanitize(copy);
	size_t cl = strlen(copy);
	FUZZ_CHECK(cl <= len && obr_utf8_valid(copy, cl));
	if (valid)
		FUZZ_CHECK(!strcmp(copy, s));
	char *again = strdup(copy);
	if (again) {
		obr_utf8_sanitize(again);
		FUZZ_CHECK(!strcmp(again, copy));
		free(again);
	}
	free(copy);

	time_t t;
	(void)obr_aws_parse_time(s, &t);
	char region[OBR_AWS_REGION_MAX];
	if (obr_aws_region_from_topic_arn(s, region, sizeof(region)) ||
	    obr_aws_region_from_queue_url(s, region, sizeof(region)))
		FUZZ_CHECK(strlen(region) < sizeof(region));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > 256 * 1024)
		return 0;
	const char *body = (const char *)data;
	batch_results(body, size);
	request_failures(body, size);
	credentials(body, size);
	xml(body, size);
	json_roundtrip(body, size);
	form_roundtrip(body, size);

	char *s = malloc(size + 1);
	if (s) {
		if (size)
			memcpy(s, data, size);
		s[size] = '\0';
		text(s);
		free(s);
	}
	return 0;
}
