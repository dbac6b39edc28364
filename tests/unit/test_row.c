/*
 * test_row.c: rows in the crate's format, their validation, and the SQL parameters they
 * become (array literals, timestamps). Pure: no database.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>
#include <uuid/uuid.h>

#include "error.h"
#include "harness.h"
#include "outbox.h"
#include "pgarray.h"
#include "row.h"
#include "rowformat_cases.h"

#define PK     "0190f5c5-7b1e-7c3a-9d2e-3f4a5b6c7d8e"
#define URL    "https://example.com/hooks/order"
#define QUEUE  "http://sqs.us-east-1.localhost.localstack.cloud:4566/000000000000/queue"
#define TOPIC  "arn:aws:sns:us-east-1:000000000000:topic"

/* ------------------------------------------------------------------------------------------ */
/* helpers                                                                                    */

/* The member's value; *present says whether the key exists (null values are NULL). */
static json_object *
get(json_object *obj, const char *key, int *present)
{
	json_object *v = NULL;

	*present = json_object_object_get_ex(obj, key, &v);
	return v;
}

/* The string member key of obj, or NULL when missing or not a string. */
static const char *
get_str(json_object *obj, const char *key)
{
	int present;
	json_object *v = get(obj, key, &present);

	return json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
}

static int
has_null(json_object *obj, const char *key)
{
	int present;
	json_object *v = get(obj, key, &present);

	return present && v == NULL;
}

static json_object *
parse(const char *text)
{
	return text == NULL ? NULL : json_tokener_parse(text);
}

/* An error struct that a test can tell was written or not. */
static void
err_reset(struct outbox_error *err)
{
	memset(err, 0, sizeof(*err));
	err->code = OUTBOX_OK;
	strcpy(err->message, "untouched");
}

/* ------------------------------------------------------------------------------------------ */
/* the crate's constructors                                                                   */

static void
check_http_json(enum outbox_http_method method, const char *expected_method)
{
	static const struct outbox_header hdrs[] = { { "X-Tenant", "acme" },
						     { "Authorization", "Bearer {{API_TOKEN}}" } };
	struct outbox_row *row = NULL;
	struct outbox_error err;
	json_object *dests;
	json_object *d;
	json_object *h;
	int present;
	enum outbox_rc rc;

	err_reset(&err);
	if (method == OUTBOX_HTTP_POST)
		rc = outbox_row_http_post_json(&row, PK, URL, hdrs, 2, "{\"id\":42,\"s\":\"x\"}", &err);
	else if (method == OUTBOX_HTTP_PUT)
		rc = outbox_row_http_put_json(&row, PK, URL, hdrs, 2, "{\"id\":42,\"s\":\"x\"}", &err);
	else
		rc = outbox_row_http_patch_json(&row, PK, URL, hdrs, 2, "{\"id\":42,\"s\":\"x\"}", &err);
	CHECK_INT_EQ(rc, OUTBOX_OK);
	CHECK(row != NULL);
	CHECK_STR_EQ(err.message, "untouched"); /* success leaves err alone */

	dests = parse(outbox_row_destinations_json(row));
	CHECK(json_object_is_type(dests, json_type_array));
	CHECK_INT_EQ(json_object_array_length(dests), 1);
	d = json_object_array_get_idx(dests, 0);
	CHECK_STR_EQ(get_str(d, "url"), URL);
	if (expected_method == NULL)
		CHECK(has_null(d, "method")); /* "method": null, explicitly, as serde writes None */
	else
		CHECK_STR_EQ(get_str(d, "method"), expected_method);
	h = get(d, "headers", &present);
	CHECK(json_object_is_type(h, json_type_object));
	CHECK_INT_EQ(json_object_object_length(h), 3);
	CHECK_STR_EQ(get_str(h, "X-Tenant"), "acme");
	CHECK_STR_EQ(get_str(h, "Authorization"), "Bearer {{API_TOKEN}}");
	CHECK_STR_EQ(get_str(h, "Content-Type"), "application/json");
	CHECK_INT_EQ(json_object_object_length(d), 3);
	json_object_put(dests);

	CHECK_STR_EQ(outbox_row_headers_json(row), NULL); /* the row's column stays NULL */
	CHECK_STR_EQ(outbox_row_payload(row), "{\"id\":42,\"s\":\"x\"}");
	CHECK_STR_EQ(outbox_row_partition_key(row), PK);
	outbox_row_free(row);
}

static void
test_http_post_json(void)
{
	check_http_json(OUTBOX_HTTP_POST, NULL);
}

static void
test_http_put_json(void)
{
	check_http_json(OUTBOX_HTTP_PUT, "put");
}

static void
test_http_patch_json(void)
{
	check_http_json(OUTBOX_HTTP_PATCH, "patch");
}

/* The exact text, field order included: what the crate's serde derive writes. */
static void
test_http_exact_text(void)
{
	struct outbox_row *row = NULL;

	CHECK_INT_EQ(outbox_row_http_post_json(&row, PK, URL, NULL, 0, "[1,2]", NULL), OUTBOX_OK);
	CHECK_STR_EQ(outbox_row_destinations_json(row),
		     "[{\"url\":\"https://example.com/hooks/order\","
		     "\"headers\":{\"Content-Type\":\"application/json\"},\"method\":null}]");
	outbox_row_free(row);

	row = NULL;
	CHECK_INT_EQ(outbox_row_http_patch_json(&row, PK, URL, NULL, 0, "{}", NULL), OUTBOX_OK);
	CHECK_STR_EQ(outbox_row_destinations_json(row),
		     "[{\"url\":\"https://example.com/hooks/order\","
		     "\"headers\":{\"Content-Type\":\"application/json\"},\"method\":\"patch\"}]");
	outbox_row_free(row);
}

/* A caller's own Content-Type (any case) is kept, not doubled or overwritten. */
static void
test_http_keeps_callers_content_type(void)
{
	static const struct outbox_header hdrs[] = { { "content-type", "application/cloudevents+json" } };
	struct outbox_row *row = NULL;
	json_object *dests;
	json_object *h;
	int present;

	CHECK_INT_EQ(outbox_row_http_post_json(&row, PK, URL, hdrs, 1, "{}", NULL), OUTBOX_OK);
	dests = parse(outbox_row_destinations_json(row));
	h = get(json_object_array_get_idx(dests, 0), "headers", &present);
	CHECK_INT_EQ(json_object_object_length(h), 1);
	CHECK_STR_EQ(get_str(h, "content-type"), "application/cloudevents+json");
	json_object_put(dests);
	outbox_row_free(row);
}

static void
test_sqs(void)
{
	static const struct outbox_header attrs[] = { { "event-type", "order.paid" },
						      { "tenant", "acme" } };
	struct outbox_row *row = NULL;
	json_object *h;

	CHECK_INT_EQ(outbox_row_sqs(&row, PK, QUEUE, attrs, 2, "any data", NULL), OUTBOX_OK);
	CHECK_STR_EQ(outbox_row_destinations_json(row), "[{\"queue_url\":\"" QUEUE "\"}]");
	h = parse(outbox_row_headers_json(row));
	CHECK(json_object_is_type(h, json_type_object));
	CHECK_INT_EQ(json_object_object_length(h), 2);
	CHECK_STR_EQ(get_str(h, "event-type"), "order.paid");
	CHECK_STR_EQ(get_str(h, "tenant"), "acme");
	json_object_put(h);
	CHECK_STR_EQ(outbox_row_payload(row), "any data");
	outbox_row_free(row);

	/* No headers: the column is NULL, as the crate writes None. */
	row = NULL;
	CHECK_INT_EQ(outbox_row_sqs(&row, PK, QUEUE, NULL, 0, "", NULL), OUTBOX_OK);
	CHECK_STR_EQ(outbox_row_headers_json(row), NULL);
	CHECK_STR_EQ(outbox_row_payload(row), "");
	outbox_row_free(row);
}

static void
test_sns(void)
{
	static const struct outbox_header attrs[] = { { "event-type", "order.paid" } };
	struct outbox_row *row = NULL;

	CHECK_INT_EQ(outbox_row_sns(&row, PK, TOPIC, attrs, 1, "{\"a\":1}", NULL), OUTBOX_OK);
	CHECK_STR_EQ(outbox_row_destinations_json(row), "[{\"topic_arn\":\"" TOPIC "\"}]");
	CHECK_STR_EQ(outbox_row_headers_json(row), "{\"event-type\":\"order.paid\"}");
	CHECK_INT_EQ(outbox_row_destination_count(row), 1);
	outbox_row_free(row);
}

/* http_and_sqs / http_and_sns: the queue first, headers on the HTTP destination only. */
static void
test_http_and_queue(void)
{
	static const struct outbox_header hdrs[] = { { "X-A", "1" } };
	struct outbox_row *row = NULL;

	CHECK_INT_EQ(outbox_row_http_and_sqs(&row, PK, URL, QUEUE, hdrs, 1, "{}", NULL), OUTBOX_OK);
	CHECK_STR_EQ(outbox_row_destinations_json(row),
		     "[{\"queue_url\":\"" QUEUE "\"},"
		     "{\"url\":\"" URL "\",\"headers\":{\"X-A\":\"1\",\"Content-Type\":\"application/json\"},"
		     "\"method\":null}]");
	CHECK_STR_EQ(outbox_row_headers_json(row), NULL);
	outbox_row_free(row);

	row = NULL;
	CHECK_INT_EQ(outbox_row_http_and_sns(&row, PK, URL, TOPIC, NULL, 0, "{}", NULL), OUTBOX_OK);
	CHECK_STR_EQ(outbox_row_destinations_json(row),
		     "[{\"topic_arn\":\"" TOPIC "\"},"
		     "{\"url\":\"" URL "\",\"headers\":{\"Content-Type\":\"application/json\"},"
		     "\"method\":null}]");
	outbox_row_free(row);
}

/* ------------------------------------------------------------------------------------------ */
/* the general form and the builders                                                          */

static void
test_row_new_from_json(void)
{
	const char *dests = "[{\"queue_url\":\"" QUEUE "\"},"
			    " {\"topic_arn\":\"" TOPIC "\"},"
			    " {\"url\":\"" URL "\",\"headers\":{\"X-A\":\"{{X_A}}\"},\"method\":\"PUT\"},"
			    " {\"url\":\"" URL "\"}]";
	struct outbox_row *row = NULL;
	json_object *d;
	struct outbox_error err;

	err_reset(&err);
	CHECK_INT_EQ(outbox_row_new(&row, PK, dests, "{\"k\":\"v\"}", "payload", &err), OUTBOX_OK);
	CHECK_INT_EQ(outbox_row_destination_count(row), 4);
	d = parse(outbox_row_destinations_json(row));
	CHECK_STR_EQ(get_str(json_object_array_get_idx(d, 0), "queue_url"), QUEUE);
	CHECK_STR_EQ(get_str(json_object_array_get_idx(d, 1), "topic_arn"), TOPIC);
	CHECK_STR_EQ(get_str(json_object_array_get_idx(d, 2), "method"), "PUT");
	json_object_put(d);
	CHECK_STR_EQ(outbox_row_headers_json(row), "{\"k\":\"v\"}");
	outbox_row_free(row);

	/* JSON null headers mean no headers. */
	row = NULL;
	CHECK_INT_EQ(outbox_row_new(&row, PK, dests, "null", "p", NULL), OUTBOX_OK);
	CHECK_STR_EQ(outbox_row_headers_json(row), NULL);
	outbox_row_free(row);
}

static void
test_builders(void)
{
	static const struct outbox_header hdrs[] = { { "X-B", "2" } };
	struct outbox_row *row = NULL;

	CHECK_INT_EQ(outbox_row_new(&row, PK, NULL, NULL, "hello", NULL), OUTBOX_OK);
	CHECK_INT_EQ(outbox_row_destination_count(row), 0);
	CHECK_STR_EQ(outbox_row_destinations_json(row), "[]");
	CHECK_INT_EQ(outbox_row_add_sqs(row, QUEUE, NULL), OUTBOX_OK);
	CHECK_INT_EQ(outbox_row_add_sns(row, TOPIC, NULL), OUTBOX_OK);
	CHECK_INT_EQ(outbox_row_add_http(row, URL, OUTBOX_HTTP_POST, NULL, 0, NULL), OUTBOX_OK);
	CHECK_INT_EQ(outbox_row_add_http(row, URL, OUTBOX_HTTP_PUT, hdrs, 1, NULL), OUTBOX_OK);
	CHECK_INT_EQ(outbox_row_set_header(row, "X-Row", "r", NULL), OUTBOX_OK);
	CHECK_INT_EQ(outbox_row_destination_count(row), 4);
	/* The general HTTP builder adds no Content-Type and writes "headers": null when empty. */
	CHECK_STR_EQ(outbox_row_destinations_json(row),
		     "[{\"queue_url\":\"" QUEUE "\"},{\"topic_arn\":\"" TOPIC "\"},"
		     "{\"url\":\"" URL "\",\"headers\":null,\"method\":null},"
		     "{\"url\":\"" URL "\",\"headers\":{\"X-B\":\"2\"},\"method\":\"put\"}]");
	CHECK_STR_EQ(outbox_row_headers_json(row), "{\"X-Row\":\"r\"}");
	outbox_row_free(row);
}

static void
test_set_header_replaces_ignoring_case(void)
{
	struct outbox_row *row = NULL;

	CHECK_INT_EQ(outbox_row_sqs(&row, PK, QUEUE, NULL, 0, "p", NULL), OUTBOX_OK);
	CHECK_INT_EQ(outbox_row_set_header(row, "Trace-Id", "1", NULL), OUTBOX_OK);
	CHECK_INT_EQ(outbox_row_set_header(row, "Other", "x", NULL), OUTBOX_OK);
	CHECK_INT_EQ(outbox_row_set_header(row, "trace-id", "2", NULL), OUTBOX_OK);
	CHECK_STR_EQ(outbox_row_headers_json(row), "{\"Other\":\"x\",\"trace-id\":\"2\"}");
	CHECK_INT_EQ(outbox_row_set_header(row, "trace-id", "3", NULL), OUTBOX_OK);
	CHECK_STR_EQ(outbox_row_headers_json(row), "{\"Other\":\"x\",\"trace-id\":\"3\"}");
	outbox_row_free(row);
}

#define TP "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

/* Issue 15 item 4: the trace context as an argument, with 008's rules, refused when bad. */
static void
test_trace_context(void)
{
	struct outbox_row *row = NULL;
	struct outbox_error err;
	static const char *const bad[] = {
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",     /* no flags */
		"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  /* uppercase */
		"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  /* version ff */
		"00-00000000000000000000000000000000-00f067aa0ba902b7-01",  /* zero trace id */
		"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  /* zero parent id */
		"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
		"",
	};
	char big[600];

	CHECK_INT_EQ(outbox_row_sqs(&row, PK, QUEUE, NULL, 0, "p", NULL), OUTBOX_OK);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		CHECK_INT_EQ(outbox_row_set_trace_context(row, bad[i], NULL, &err), OUTBOX_E_INVALID);
		CHECK(strstr(err.message, "traceparent") != NULL);
	}
	CHECK_INT_EQ(outbox_row_set_trace_context(row, NULL, NULL, &err), OUTBOX_E_INVALID);
	CHECK(outbox_row_headers_json(row) == NULL); /* nothing set by a refusal */

	CHECK_INT_EQ(outbox_row_set_header(row, "TraceParent", "old", NULL), OUTBOX_OK);
	CHECK_INT_EQ(outbox_row_set_trace_context(row, TP, "congo=t61rcWkgMzE", &err), OUTBOX_OK);
	CHECK_STR_EQ(outbox_row_headers_json(row),
		     "{\"traceparent\":\"" TP "\",\"tracestate\":\"congo=t61rcWkgMzE\"}");
	/* an empty tracestate sets only the traceparent */
	outbox_row_free(row);
	row = NULL;
	CHECK_INT_EQ(outbox_row_sqs(&row, PK, QUEUE, NULL, 0, "p", NULL), OUTBOX_OK);
	CHECK_INT_EQ(outbox_row_set_trace_context(row, TP, "", NULL), OUTBOX_OK);
	CHECK_STR_EQ(outbox_row_headers_json(row), "{\"traceparent\":\"" TP "\"}");
	/* a bad tracestate changes nothing */
	memset(big, 'a', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	CHECK_INT_EQ(outbox_row_set_trace_context(row, TP, big, &err), OUTBOX_E_TOO_BIG);
	CHECK_INT_EQ(outbox_row_set_trace_context(row, TP, "a=\x01", &err), OUTBOX_E_INVALID);
	CHECK(strstr(err.message, "tracestate") != NULL);
	CHECK_STR_EQ(outbox_row_headers_json(row), "{\"traceparent\":\"" TP "\"}");
	CHECK_INT_EQ(outbox_row_set_trace_context(NULL, TP, NULL, &err), OUTBOX_E_INVALID);
	outbox_row_free(row);
}

static void
test_keys(void)
{
	struct outbox_row *a = NULL;
	struct outbox_row *b = NULL;
	unsigned char u[16];
	struct outbox_error err;

	CHECK_INT_EQ(outbox_row_sqs(&a, "0190F5C5-7B1E-7C3A-9D2E-3F4A5B6C7D8E", QUEUE, NULL, 0, "p", NULL),
		     OUTBOX_OK);
	CHECK_INT_EQ(outbox_row_sqs(&b, PK, QUEUE, NULL, 0, "p", NULL), OUTBOX_OK);
	CHECK_STR_EQ(outbox_row_partition_key(a), PK); /* stored lowercase */
	CHECK_INT_EQ(strlen(outbox_row_idempotent_key(a)), 36);
	CHECK_INT_EQ(outbox_uuid_parse(outbox_row_idempotent_key(a), u, NULL), OUTBOX_OK);
	CHECK_INT_EQ(u[6] >> 4, 7); /* a UUIDv7, like Uuid::now_v7() */
	CHECK_INT_EQ(u[8] >> 6, 2);
	/* Time-ordered: a later row gets a larger key (text order equals byte order). */
	CHECK(strcmp(outbox_row_idempotent_key(a), outbox_row_idempotent_key(b)) < 0);

	CHECK_INT_EQ(outbox_row_set_idempotent_key(a, "00000000-0000-7000-8000-00000000000A", NULL),
		     OUTBOX_OK);
	CHECK_STR_EQ(outbox_row_idempotent_key(a), "00000000-0000-7000-8000-00000000000a");
	err_reset(&err);
	CHECK_INT_EQ(outbox_row_set_idempotent_key(a, "not-a-uuid", &err), OUTBOX_E_INVALID);
	CHECK(strstr(err.message, "idempotent_key") != NULL);
	CHECK_STR_EQ(outbox_row_idempotent_key(a), "00000000-0000-7000-8000-00000000000a");
	outbox_row_free(a);
	outbox_row_free(b);
	outbox_row_free(NULL); /* NULL-safe */
}

static void
test_delay(void)
{
	struct outbox_row *row = NULL;
	struct outbox_error err;
	int64_t created;

	CHECK_INT_EQ(outbox_row_sns(&row, PK, TOPIC, NULL, 0, "p", NULL), OUTBOX_OK);
	created = outbox_row_created_at_us(row);
	CHECK(created > INT64_C(1700000000000000)); /* a real clock reading, in microseconds */
	CHECK(outbox_row_process_after_us(row) == created); /* the crate: process_after = created_at */

	CHECK_INT_EQ(outbox_row_delay(row, INT64_C(1893456000000), NULL), OUTBOX_OK);
	CHECK(outbox_row_process_after_us(row) == INT64_C(1893456000000000));
	CHECK_INT_EQ(outbox_row_delay_by(row, 10000, NULL), OUTBOX_OK);
	CHECK(outbox_row_process_after_us(row) == created + 10000000);

	err_reset(&err);
	CHECK_INT_EQ(outbox_row_delay(row, -1, &err), OUTBOX_E_INVALID);
	CHECK(strstr(err.message, "delay") != NULL);
	CHECK_INT_EQ(outbox_row_delay(row, INT64_C(253402300800000), NULL), OUTBOX_E_INVALID);
	CHECK_INT_EQ(outbox_row_delay(row, INT64_C(253402300799999), NULL), OUTBOX_OK);
	CHECK_INT_EQ(outbox_row_delay_by(row, -5, NULL), OUTBOX_E_INVALID);
	CHECK_INT_EQ(outbox_row_delay_by(row, INT64_MAX, NULL), OUTBOX_E_INVALID);
	CHECK(outbox_row_process_after_us(row) == INT64_C(253402300799999000));
	outbox_row_free(row);
}

/* ------------------------------------------------------------------------------------------ */
/* validation                                                                                 */

/* Expects a constructor failure with code and a message containing needle; out untouched. */
#define EXPECT_FAIL(call_, code_, needle_)                                                 \
	do {                                                                               \
		err_reset(&err);                                                           \
		row = NULL;                                                                \
		CHECK_INT_EQ((call_), (code_));                                            \
		CHECK(row == NULL);                                                        \
		CHECK_INT_EQ(err.code, (code_));                                           \
		if (strstr(err.message, (needle_)) == NULL) {                              \
			fprintf(stderr, "message \"%s\" lacks \"%s\"\n", err.message, (needle_)); \
			CHECK(!"message");                                                 \
		}                                                                          \
	} while (0)

static void
test_invalid_urls(void)
{
	struct outbox_row *row;
	struct outbox_error err;

	EXPECT_FAIL(outbox_row_http_post_json(&row, PK, "", NULL, 0, "{}", &err), OUTBOX_E_INVALID,
		    "url is empty");
	EXPECT_FAIL(outbox_row_http_post_json(&row, PK, NULL, NULL, 0, "{}", &err), OUTBOX_E_INVALID,
		    "url is NULL");
	EXPECT_FAIL(outbox_row_http_post_json(&row, PK, "ftp://example.com/x", NULL, 0, "{}", &err),
		    OUTBOX_E_INVALID, "http:// or https://");
	EXPECT_FAIL(outbox_row_http_post_json(&row, PK, "https://", NULL, 0, "{}", &err),
		    OUTBOX_E_INVALID, "no host");
	EXPECT_FAIL(outbox_row_http_post_json(&row, PK, "https:///path", NULL, 0, "{}", &err),
		    OUTBOX_E_INVALID, "no host");
	EXPECT_FAIL(outbox_row_http_post_json(&row, PK, "https://a b/", NULL, 0, "{}", &err),
		    OUTBOX_E_INVALID, "space, control");
	EXPECT_FAIL(outbox_row_http_put_json(&row, PK, "https://a/\r\nX: y", NULL, 0, "{}", &err),
		    OUTBOX_E_INVALID, "space, control");
	EXPECT_FAIL(outbox_row_http_post_json(&row, PK, "https://ex\xc3\xa4mple.com/", NULL, 0, "{}", &err),
		    OUTBOX_E_INVALID, "non-ASCII");
	EXPECT_FAIL(outbox_row_http_post_json(&row, PK, "https://user:pw@example.com/x", NULL, 0, "{}",
					      &err),
		    OUTBOX_E_INVALID, "url must not carry credentials");
	EXPECT_FAIL(outbox_row_http_post_json(&row, PK, "https://:8080/x", NULL, 0, "{}", &err),
		    OUTBOX_E_INVALID, "no host");
	EXPECT_FAIL(outbox_row_sqs(&row, PK, "", NULL, 0, "p", &err), OUTBOX_E_INVALID,
		    "queue_url is empty");
	/* An '@' after the host is just part of the path or query. */
	row = NULL;
	CHECK_INT_EQ(outbox_row_http_post_json(&row, PK, "https://example.com:8443/a@b?c=@", NULL, 0,
					       "{}", NULL),
		     OUTBOX_OK);
	outbox_row_free(row);
	/* A well-formed URL that leads nowhere is the relay's problem, not a validation error. */
	row = NULL;
	CHECK_INT_EQ(outbox_row_sqs(&row, PK, "https://invalid.queue.com", NULL, 0, "p", NULL),
		     OUTBOX_OK);
	outbox_row_free(row);
}

static void
test_invalid_arns(void)
{
	static const char *const bad[] = {
		"invalid::arn", "arn:aws:sqs:us-east-1:000000000000:queue", "arn:aws:sns:us-east-1:000000000000",
		"arn:aws:sns:us-east-1:000000000000:", "arn::sns:us-east-1:000000000000:t",
		"arn:aws:sns:us-east-1:000000000000:a:b", "arn:aws:sns:us-east-1:0000 0000:t",
	};
	struct outbox_row *row;
	struct outbox_error err;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		EXPECT_FAIL(outbox_row_sns(&row, PK, bad[i], NULL, 0, "p", &err), OUTBOX_E_INVALID,
			    "topic_arn");
	EXPECT_FAIL(outbox_row_sns(&row, PK, "", NULL, 0, "p", &err), OUTBOX_E_INVALID,
		    "topic_arn is empty");
	EXPECT_FAIL(outbox_row_sns(&row, PK, NULL, NULL, 0, "p", &err), OUTBOX_E_INVALID,
		    "topic_arn is NULL");
	row = NULL;
	CHECK_INT_EQ(outbox_row_sns(&row, PK, "arn:aws-cn:sns:cn-north-1:123456789012:t.fifo", NULL, 0,
				    "p", NULL),
		     OUTBOX_OK);
	outbox_row_free(row);
}

static void
test_invalid_headers(void)
{
	static const struct outbox_header colon[] = { { "X:Y", "v" } };
	static const struct outbox_header crlf_name[] = { { "X\r\nEvil", "v" } };
	static const struct outbox_header empty[] = { { "", "v" } };
	static const struct outbox_header crlf_value[] = { { "X-A", "v\r\nEvil: 1" } };
	static const struct outbox_header dup[] = { { "X-A", "1" }, { "x-a", "2" } };
	static const struct outbox_header null_value[] = { { "X-A", NULL } };
	static const struct outbox_header null_name[] = { { NULL, "v" } };
	static const struct outbox_header tab_ok[] = { { "X-A", "a\tb" } };
	struct outbox_row *row;
	struct outbox_error err;

	EXPECT_FAIL(outbox_row_http_post_json(&row, PK, URL, colon, 1, "{}", &err), OUTBOX_E_INVALID,
		    "header name \"X\" has an invalid character (0x3a)");
	EXPECT_FAIL(outbox_row_http_post_json(&row, PK, URL, crlf_name, 1, "{}", &err),
		    OUTBOX_E_INVALID, "(0x0d)");
	EXPECT_FAIL(outbox_row_sqs(&row, PK, QUEUE, empty, 1, "p", &err), OUTBOX_E_INVALID,
		    "header name is empty");
	EXPECT_FAIL(outbox_row_sns(&row, PK, TOPIC, crlf_value, 1, "p", &err), OUTBOX_E_INVALID,
		    "value of header \"X-A\" has a control character (0x0d)");
	EXPECT_FAIL(outbox_row_http_post_json(&row, PK, URL, dup, 2, "{}", &err), OUTBOX_E_INVALID,
		    "appears twice");
	EXPECT_FAIL(outbox_row_sqs(&row, PK, QUEUE, null_value, 1, "p", &err), OUTBOX_E_INVALID,
		    "headers[0].value is NULL");
	EXPECT_FAIL(outbox_row_sqs(&row, PK, QUEUE, null_name, 1, "p", &err), OUTBOX_E_INVALID,
		    "headers[0].name is NULL");
	EXPECT_FAIL(outbox_row_sqs(&row, PK, QUEUE, NULL, 2, "p", &err), OUTBOX_E_INVALID,
		    "n_headers is 2");
	row = NULL;
	CHECK_INT_EQ(outbox_row_sqs(&row, PK, QUEUE, tab_ok, 1, "p", NULL), OUTBOX_OK);
	err_reset(&err);
	CHECK_INT_EQ(outbox_row_set_header(row, "Bad Name", "v", &err), OUTBOX_E_INVALID);
	CHECK_INT_EQ(outbox_row_set_header(row, "X-B", "\n", &err), OUTBOX_E_INVALID);
	CHECK_STR_EQ(outbox_row_headers_json(row), "{\"X-A\":\"a\\tb\"}"); /* unchanged */
	outbox_row_free(row);
}

static void
test_invalid_keys_and_payload(void)
{
	struct outbox_row *row;
	struct outbox_error err;

	EXPECT_FAIL(outbox_row_sqs(&row, "42", QUEUE, NULL, 0, "p", &err), OUTBOX_E_INVALID,
		    "partition_key is not a UUID");
	EXPECT_FAIL(outbox_row_sqs(&row, NULL, QUEUE, NULL, 0, "p", &err), OUTBOX_E_INVALID,
		    "partition_key is NULL");
	EXPECT_FAIL(outbox_row_sqs(&row, PK, QUEUE, NULL, 0, NULL, &err), OUTBOX_E_INVALID,
		    "payload is NULL");
	EXPECT_FAIL(outbox_row_http_post_json(&row, PK, URL, NULL, 0, "{\"a\":", &err),
		    OUTBOX_E_INVALID, "json_payload is not valid JSON");
	EXPECT_FAIL(outbox_row_http_post_json(&row, PK, URL, NULL, 0, "{} trailing", &err),
		    OUTBOX_E_INVALID, "json_payload is not valid JSON");
	EXPECT_FAIL(outbox_row_http_post_json(&row, PK, URL, NULL, 0, "hello", &err),
		    OUTBOX_E_INVALID, "json_payload is not valid JSON");
	EXPECT_FAIL(outbox_row_http_post_json(&row, PK, URL, NULL, 0, NULL, &err), OUTBOX_E_INVALID,
		    "json_payload is NULL");
	EXPECT_FAIL(outbox_row_http_post_json(NULL, PK, URL, NULL, 0, "{}", &err), OUTBOX_E_INVALID,
		    "out is NULL");
	EXPECT_FAIL(outbox_row_sqs(NULL, PK, QUEUE, NULL, 0, "p", &err), OUTBOX_E_INVALID,
		    "out is NULL");
	EXPECT_FAIL(outbox_row_new(NULL, PK, NULL, NULL, "p", &err), OUTBOX_E_INVALID, "out is NULL");
	/* err may be NULL: the code alone still tells. */
	row = NULL;
	CHECK_INT_EQ(outbox_row_sqs(&row, "x", QUEUE, NULL, 0, "p", NULL), OUTBOX_E_INVALID);
	CHECK(row == NULL);
}

static void
test_invalid_destinations_json(void)
{
	struct outbox_row *row;
	struct outbox_error err;

	EXPECT_FAIL(outbox_row_new(&row, PK, "{\"url\":\"" URL "\"}", NULL, "p", &err),
		    OUTBOX_E_INVALID, "not a JSON array");
	EXPECT_FAIL(outbox_row_new(&row, PK, "null", NULL, "p", &err), OUTBOX_E_INVALID,
		    "not a JSON array");
	EXPECT_FAIL(outbox_row_new(&row, PK, "[1]", NULL, "p", &err), OUTBOX_E_INVALID,
		    "destinations[0] is not a JSON object");
	EXPECT_FAIL(outbox_row_new(&row, PK, "[{\"queue_url\":\"" QUEUE "\",\"url\":\"" URL "\"}]",
				   NULL, "p", &err),
		    OUTBOX_E_INVALID, "exactly one of");
	EXPECT_FAIL(outbox_row_new(&row, PK, "[{\"topic_arn\":\"" TOPIC "\"},{}]", NULL, "p", &err),
		    OUTBOX_E_INVALID, "destinations[1] must have exactly one of");
	EXPECT_FAIL(outbox_row_new(&row, PK, "[{\"url\":\"" URL "\",\"method\":\"GET\"}]", NULL, "p",
				   &err),
		    OUTBOX_E_INVALID, "destinations[0].method \"GET\" is not POST, PUT or PATCH");
	EXPECT_FAIL(outbox_row_new(&row, PK, "[{\"url\":\"" URL "\",\"headers\":{\"n\":1}}]", NULL,
				   "p", &err),
		    OUTBOX_E_INVALID, "value of \"n\" is not a string");
	EXPECT_FAIL(outbox_row_new(&row, PK, "[{\"url\":\"" URL "\",\"headers\":[]}]", NULL, "p", &err),
		    OUTBOX_E_INVALID, "destinations[0].headers is not a JSON object");
	EXPECT_FAIL(outbox_row_new(&row, PK, "[{\"queue_url\":5}]", NULL, "p", &err),
		    OUTBOX_E_INVALID, "destinations[0].queue_url is not a string");
	EXPECT_FAIL(outbox_row_new(&row, PK, "[{\"url\":\"mailto:x@y\"}]", NULL, "p", &err),
		    OUTBOX_E_INVALID, "destinations[0].url");
	/* "\u0000" is valid JSON but jsonb refuses it: caught here, not at COMMIT time. */
	EXPECT_FAIL(outbox_row_new(&row, PK, "[{\"url\":\"https://a/\\u0000\"}]", NULL, "p", &err),
		    OUTBOX_E_INVALID, "NUL");
	EXPECT_FAIL(outbox_row_new(&row, PK, "[{\"url\":\"" URL "\"}", NULL, "p", &err),
		    OUTBOX_E_INVALID, "destinations_json is not valid JSON");
	EXPECT_FAIL(outbox_row_new(&row, PK, NULL, "[]", "p", &err), OUTBOX_E_INVALID,
		    "headers_json is not a JSON object");
	EXPECT_FAIL(outbox_row_new(&row, PK, NULL, "{\"a\":true}", "p", &err), OUTBOX_E_INVALID,
		    "headers_json: value of \"a\" is not a string");
	EXPECT_FAIL(outbox_row_new(&row, PK, NULL, "{\"a\":\"1\",\"A\":\"2\"}", "p", &err),
		    OUTBOX_E_INVALID, "appears twice");
}

static void
test_add_to_invalid(void)
{
	struct outbox_row *row = NULL;
	struct outbox_error err;

	CHECK_INT_EQ(outbox_row_new(&row, PK, NULL, NULL, "p", NULL), OUTBOX_OK);
	err_reset(&err);
	CHECK_INT_EQ(outbox_row_add_http(row, URL, (enum outbox_http_method)9, NULL, 0, &err),
		     OUTBOX_E_INVALID);
	CHECK(strstr(err.message, "method") != NULL);
	CHECK_INT_EQ(outbox_row_add_sqs(row, "queue", &err), OUTBOX_E_INVALID);
	CHECK_INT_EQ(outbox_row_add_sns(row, "topic", &err), OUTBOX_E_INVALID);
	CHECK_INT_EQ(outbox_row_add_sqs(NULL, QUEUE, &err), OUTBOX_E_INVALID);
	CHECK_INT_EQ(outbox_row_destination_count(row), 0); /* failures add nothing */
	outbox_row_free(row);
}

static void
test_limits(void)
{
	struct outbox_header many[OUTBOX_MAX_HEADERS + 1];
	char names[OUTBOX_MAX_HEADERS + 1][16];
	char *long_url = malloc(OUTBOX_MAX_URL + 2);
	struct outbox_row *row;
	struct outbox_error err;

	CHECK(long_url != NULL);
	for (int i = 0; i <= OUTBOX_MAX_HEADERS; i++) {
		snprintf(names[i], sizeof(names[i]), "h%d", i);
		many[i].name = names[i];
		many[i].value = "v";
	}
	memcpy(long_url, "https://", 8);
	memset(long_url + 8, 'a', OUTBOX_MAX_URL - 8 + 1);
	long_url[OUTBOX_MAX_URL + 1] = '\0';
	EXPECT_FAIL(outbox_row_sqs(&row, PK, QUEUE, many, OUTBOX_MAX_HEADERS + 1, "p", &err),
		    OUTBOX_E_TOO_BIG, "headers, over the limit");
	row = NULL;
	CHECK_INT_EQ(outbox_row_sqs(&row, PK, QUEUE, many, OUTBOX_MAX_HEADERS, "p", NULL), OUTBOX_OK);
	CHECK_INT_EQ(outbox_row_set_header(row, "one-more", "v", NULL), OUTBOX_E_TOO_BIG);
	CHECK_INT_EQ(outbox_row_set_header(row, "H0", "replaced", NULL), OUTBOX_OK);
	outbox_row_free(row);
	err_reset(&err);
	row = NULL;
	CHECK_INT_EQ(outbox_row_http_post_json(&row, PK, long_url, NULL, 0, "{}", &err), OUTBOX_E_TOO_BIG);
	long_url[OUTBOX_MAX_URL] = '\0';
	CHECK_INT_EQ(outbox_row_http_post_json(&row, PK, long_url, NULL, 0, "{}", &err), OUTBOX_OK);
	outbox_row_free(row);
	free(long_url);
}

/* The relay's decoding limits: destinations per row, headers per request once merged. */
static void
test_relay_limits(void)
{
	struct outbox_header dest_hdrs[40];
	char names[40][8];
	char json[OUTBOX_MAX_DESTINATIONS * 40 + 16];
	struct outbox_row *row = NULL;
	struct outbox_error err;
	size_t off;

	CHECK_INT_EQ(outbox_row_new(&row, PK, NULL, NULL, "p", NULL), OUTBOX_OK);
	for (int i = 0; i < OUTBOX_MAX_DESTINATIONS; i++)
		CHECK_INT_EQ(outbox_row_add_sqs(row, QUEUE, NULL), OUTBOX_OK);
	err_reset(&err);
	CHECK_INT_EQ(outbox_row_add_sns(row, TOPIC, &err), OUTBOX_E_TOO_BIG);
	CHECK(strstr(err.message, "destinations") != NULL);
	CHECK_INT_EQ(outbox_row_add_http(row, URL, OUTBOX_HTTP_POST, NULL, 0, NULL), OUTBOX_E_TOO_BIG);
	CHECK_INT_EQ(outbox_row_destination_count(row), OUTBOX_MAX_DESTINATIONS);
	outbox_row_free(row);

	off = (size_t)snprintf(json, sizeof(json), "[");
	for (int i = 0; i <= OUTBOX_MAX_DESTINATIONS; i++)
		off += (size_t)snprintf(json + off, sizeof(json) - off, "%s{\"url\":\"https://h/\"}",
					i ? "," : "");
	snprintf(json + off, sizeof(json) - off, "]");
	row = NULL;
	err_reset(&err);
	CHECK_INT_EQ(outbox_row_new(&row, PK, json, NULL, "p", &err), OUTBOX_E_TOO_BIG);
	CHECK(row == NULL);

	/* 40 destination headers; the row's add to them unless the name (any case) is there. */
	for (int i = 0; i < 40; i++) {
		snprintf(names[i], sizeof(names[i]), "h%d", i);
		dest_hdrs[i].name = names[i];
		dest_hdrs[i].value = "d";
	}
	row = NULL;
	CHECK_INT_EQ(outbox_row_new(&row, PK, NULL, NULL, "p", NULL), OUTBOX_OK);
	CHECK_INT_EQ(outbox_row_add_http(row, URL, OUTBOX_HTTP_POST, dest_hdrs, 40, NULL), OUTBOX_OK);
	for (int i = 0; i < 30; i++) {
		char name[8];

		snprintf(name, sizeof(name), "H%d", i);
		CHECK_INT_EQ(outbox_row_set_header(row, name, "r", NULL), OUTBOX_OK);
	}
	CHECK_INT_EQ(outbox_row_set_header(row, "X-Idempotent-Key", "ignored by the relay", NULL),
		     OUTBOX_OK);
	for (int i = 0; i < 23; i++) { /* 40 + 23 + x-idempotent-key = 64 */
		char name[8];

		snprintf(name, sizeof(name), "x%d", i);
		CHECK_INT_EQ(outbox_row_set_header(row, name, "r", NULL), OUTBOX_OK);
	}
	err_reset(&err);
	CHECK_INT_EQ(outbox_insert(NULL, &row, 1, &err), OUTBOX_E_INVALID);
	CHECK(strstr(err.message, "conn is NULL") != NULL); /* the row itself passed */
	CHECK_INT_EQ(outbox_row_set_header(row, "one-more", "r", NULL), OUTBOX_OK);
	CHECK_INT_EQ(outbox_insert(NULL, &row, 1, &err), OUTBOX_E_TOO_BIG);
	CHECK(strstr(err.message, "rows[0]: destinations[0] would be sent 65 headers") != NULL);
	outbox_row_free(row);
}

/* outbox_insert checks what it can before touching the connection. */
static void
test_insert_arguments(void)
{
	struct outbox_row *row = NULL;
	struct outbox_error err;

	CHECK_INT_EQ(outbox_insert(NULL, NULL, 0, NULL), OUTBOX_OK); /* n == 0: a no-op */
	err_reset(&err);
	CHECK_INT_EQ(outbox_insert(NULL, NULL, 1, &err), OUTBOX_E_INVALID);
	CHECK(strstr(err.message, "rows is NULL") != NULL);
	CHECK_INT_EQ(outbox_row_new(&row, PK, NULL, NULL, "p", NULL), OUTBOX_OK);
	CHECK_INT_EQ(outbox_insert(NULL, &row, 1, &err), OUTBOX_E_INVALID);
	CHECK(strstr(err.message, "rows[0]: destinations is an empty array") != NULL);
	CHECK_INT_EQ(outbox_row_add_sqs(row, QUEUE, NULL), OUTBOX_OK);
	CHECK_INT_EQ(outbox_insert(NULL, &row, 1, &err), OUTBOX_E_INVALID);
	CHECK(strstr(err.message, "conn is NULL") != NULL);
	outbox_row_free(row);
}

/* ------------------------------------------------------------------------------------------ */
/* SQL parameters                                                                             */

static char *
literal(const char *const *elems, size_t n, enum outbox_rc *rc)
{
	struct outbox__pgarray a;
	char *out;

	outbox__pgarray_init(&a, 1 << 20);
	*rc = OUTBOX_OK;
	for (size_t i = 0; i < n && *rc == OUTBOX_OK; i++)
		*rc = outbox__pgarray_add(&a, elems[i], elems[i] == NULL ? 0 : strlen(elems[i]));
	if (*rc == OUTBOX_OK)
		*rc = outbox__pgarray_finish(&a);
	if (*rc != OUTBOX_OK) {
		outbox__pgarray_free(&a);
		return NULL;
	}
	out = a.data; /* taken over from a */
	return out;
}

/* Checks the literal of elems against expected. */
#define CHECK_LITERAL(expected, ...)                                                       \
	do {                                                                               \
		static const char *const elems_[] = { __VA_ARGS__ };                       \
		enum outbox_rc rc_;                                                        \
		char *got_ = literal(elems_, sizeof(elems_) / sizeof(elems_[0]), &rc_);    \
		int same_ = got_ != NULL && strcmp(got_, (expected)) == 0;                 \
		if (!same_)                                                                \
			fprintf(stderr, "got %s\n", got_ ? got_ : "(null)");               \
		free(got_);                                                                \
		CHECK_INT_EQ(rc_, OUTBOX_OK);                                              \
		CHECK(same_);                                                              \
	} while (0)

static void
test_array_literal_encoding(void)
{
	enum outbox_rc rc;
	char *s;

	CHECK_LITERAL("{\"abc\"}", "abc");
	CHECK_LITERAL("{\"\"}", "");
	CHECK_LITERAL("{NULL}", NULL);
	CHECK_LITERAL("{\"NULL\"}", "NULL"); /* the word, quoted, is a string */
	CHECK_LITERAL("{\"null\",NULL,\"x\"}", "null", NULL, "x");
	CHECK_LITERAL("{\"a\\\"b\"}", "a\"b");
	CHECK_LITERAL("{\"a\\\\b\"}", "a\\b");
	CHECK_LITERAL("{\"\\\\\\\"\"}", "\\\"");
	CHECK_LITERAL("{\"a,b\",\"{c}\",\"}\",\"{\"}", "a,b", "{c}", "}", "{");
	CHECK_LITERAL("{\" lead\",\"trail \",\"\t\n\"}", " lead", "trail ", "\t\n");
	CHECK_LITERAL("{\"h\xc3\xa9llo \xe2\x9c\x93 \xf0\x9f\x98\x80\"}", "h\xc3\xa9llo \xe2\x9c\x93 \xf0\x9f\x98\x80");
	CHECK_LITERAL("{\"{\\\"url\\\":\\\"https://x/\\\\\\\"\\\"}\"}", "{\"url\":\"https://x/\\\"\"}");
	CHECK_LITERAL("{\"0190f5c5-7b1e-7c3a-9d2e-3f4a5b6c7d8e\",\"2024-01-02 03:04:05.000006+00\"}",
		      "0190f5c5-7b1e-7c3a-9d2e-3f4a5b6c7d8e", "2024-01-02 03:04:05.000006+00");

	s = literal(NULL, 0, &rc);
	CHECK_INT_EQ(rc, OUTBOX_OK);
	CHECK_STR_EQ(s, "{}");
	free(s);
}

/* A reader of array literals as array_in reads quoted elements; only for the round trip. */
static int
decode_next(const char **p, char *out, size_t cap, int *is_null)
{
	size_t n = 0;

	if (strncmp(*p, "NULL", 4) == 0) {
		*p += 4;
		*is_null = 1;
		return 0;
	}
	*is_null = 0;
	if (**p != '"')
		return -1;
	(*p)++;
	while (**p != '"') {
		if (**p == '\0')
			return -1;
		if (**p == '\\')
			(*p)++;
		if (n + 1 >= cap)
			return -1;
		out[n++] = *(*p)++;
	}
	(*p)++;
	out[n] = '\0';
	return 0;
}

/* Random strings of every byte value but NUL survive encode + decode unchanged. */
static void
test_array_literal_round_trip(void)
{
	enum { N = 200, LEN = 40 };
	static char store[N][LEN + 1];
	const char *elems[N];
	char decoded[LEN * 2 + 1];
	struct outbox__pgarray a;
	const char *p;
	unsigned char r[16];
	enum outbox_rc rc = OUTBOX_OK;

	for (int i = 0; i < N; i++) {
		size_t len = (size_t)i % LEN;

		for (size_t j = 0; j < len; j++) {
			if (j % 16 == 0)
				uuid_generate_random(r);
			store[i][j] = (char)(r[j % 16] % 255 + 1);
			/* Make the interesting bytes frequent. */
			if (r[(j + 7) % 16] < 64)
				store[i][j] = "\"\\,{} N"[r[(j + 3) % 16] % 7];
		}
		store[i][len] = '\0';
		elems[i] = i % 17 == 5 ? NULL : store[i];
	}
	outbox__pgarray_init(&a, 1 << 20);
	for (int i = 0; i < N && rc == OUTBOX_OK; i++)
		rc = outbox__pgarray_add(&a, elems[i], elems[i] == NULL ? 0 : strlen(elems[i]));
	CHECK_INT_EQ(rc, OUTBOX_OK);
	CHECK_INT_EQ(outbox__pgarray_finish(&a), OUTBOX_OK);
	CHECK_INT_EQ(a.count, N);

	p = a.data;
	CHECK(*p == '{');
	p++;
	for (int i = 0; i < N; i++) {
		int is_null;

		if (decode_next(&p, decoded, sizeof(decoded), &is_null) != 0) {
			outbox__pgarray_free(&a);
			CHECK(!"decodable");
		}
		if (elems[i] == NULL ? !is_null : (is_null || strcmp(decoded, elems[i]) != 0)) {
			outbox__pgarray_free(&a);
			CHECK(!"round trip");
		}
		if (*p != (i + 1 < N ? ',' : '}')) {
			outbox__pgarray_free(&a);
			CHECK(!"separator");
		}
		p++;
	}
	CHECK(*p == '\0');
	outbox__pgarray_free(&a);
}

static void
test_array_literal_limit(void)
{
	struct outbox__pgarray a;

	/* {"ab"} is 6 bytes: fits a max of 6, not 5. */
	outbox__pgarray_init(&a, 6);
	CHECK_INT_EQ(outbox__pgarray_add(&a, "ab", 2), OUTBOX_OK);
	CHECK_INT_EQ(outbox__pgarray_finish(&a), OUTBOX_OK);
	CHECK_STR_EQ(a.data, "{\"ab\"}");
	outbox__pgarray_free(&a);

	outbox__pgarray_init(&a, 5);
	CHECK_INT_EQ(outbox__pgarray_add(&a, "ab", 2), OUTBOX_E_TOO_BIG);
	outbox__pgarray_free(&a);

	/* Escapes count: {"\""} is 6 bytes. */
	outbox__pgarray_init(&a, 5);
	CHECK_INT_EQ(outbox__pgarray_add(&a, "\"", 1), OUTBOX_E_TOO_BIG);
	outbox__pgarray_free(&a);

	outbox__pgarray_init(&a, 1);
	CHECK_INT_EQ(outbox__pgarray_finish(&a), OUTBOX_E_TOO_BIG); /* "{}" needs 2 */
	outbox__pgarray_free(&a);

	/* {NULL,NULL} is 11 bytes. */
	outbox__pgarray_init(&a, 10);
	CHECK_INT_EQ(outbox__pgarray_add(&a, NULL, 0), OUTBOX_OK);
	CHECK_INT_EQ(outbox__pgarray_add(&a, NULL, 0), OUTBOX_E_TOO_BIG);
	CHECK_INT_EQ(outbox__pgarray_finish(&a), OUTBOX_OK);
	CHECK_STR_EQ(a.data, "{NULL}");
	outbox__pgarray_free(&a);
	outbox__pgarray_free(NULL);
}

static void
test_timestamps(void)
{
	char ts[OUTBOX__TIMESTAMP_BUFSZ];

	CHECK_INT_EQ(outbox__format_timestamp(0, ts), 0);
	CHECK_STR_EQ(ts, "1970-01-01 00:00:00.000000+00");
	CHECK_INT_EQ(outbox__format_timestamp(INT64_C(1700000000123456), ts), 0);
	CHECK_STR_EQ(ts, "2023-11-14 22:13:20.123456+00");
	CHECK_INT_EQ(outbox__format_timestamp(INT64_C(951782400000001), ts), 0); /* leap day */
	CHECK_STR_EQ(ts, "2000-02-29 00:00:00.000001+00");
	CHECK_INT_EQ(outbox__format_timestamp(OUTBOX__MAX_UNIX_US, ts), 0);
	CHECK_STR_EQ(ts, "9999-12-31 23:59:59.999999+00");
	CHECK_INT_EQ(outbox__format_timestamp(-1, ts), -1);
	CHECK_INT_EQ(outbox__format_timestamp(OUTBOX__MAX_UNIX_US + 1, ts), -1);
}

/* ------------------------------------------------------------------------------------------ */
/* the shared row-format cases (test_destination.c runs the same table against the relay)      */

/* The row a case describes, built and checked for insert: OUTBOX_OK or the refusal. */
static enum outbox_rc
build_case(const struct rf_case *c, struct outbox_error *err)
{
	struct outbox_row *row = NULL;
	enum outbox_rc rc = outbox_row_new(&row, PK, c->destinations, c->headers, "p", err);

	if (rc == OUTBOX_OK)
		rc = outbox__row_check(row, 0, err);
	outbox_row_free(row);
	return rc;
}

static void
test_shared_cases(void)
{
	json_object *cases = rf_cases_load();
	size_t failed = 0;

	CHECK(cases != NULL);
	for (size_t i = 0; i < json_object_array_length(cases); i++) {
		struct rf_case c;
		struct outbox_error err;
		enum outbox_rc rc;

		if (!rf_case_get(cases, i, &c)) {
			failed++;
			continue;
		}
		/* whatever the relay parks, the library refuses */
		if (c.parked && c.refused == NULL) {
			fprintf(stderr, "case \"%s\": parked by the relay but accepted by writers\n", c.name);
			failed++;
		}
		err_reset(&err);
		rc = build_case(&c, &err);
		if (c.refused == NULL ? rc != OUTBOX_OK
				      : rc == OUTBOX_OK || strstr(err.message, c.refused) == NULL) {
			fprintf(stderr, "case \"%s\": rc=%d \"%s\", expected %s%s\n", c.name, (int)rc,
				err.message, c.refused ? "a refusal with " : "success",
				c.refused ? c.refused : "");
			failed++;
		}
	}
	json_object_put(cases);
	CHECK_INT_EQ(failed, 0);
}

/* The builders apply the same header rules to the arrays they take. */
static void
test_builders_refuse_what_the_relay_parks(void)
{
	static const struct outbox_header length[] = { { "content-length", "0" } };
	static const struct outbox_header host[] = { { "Host", "elsewhere" } };
	static const struct outbox_header secret[] = { { "Authorization", "{{DATABASE_URL}}" } };
	static const struct outbox_header aws[] = { { "X-Key", "{{AWS_ACCESS_KEY_ID}}" } };
	static const struct outbox_header ordinary[] = { { "Authorization", "{{API_TOKEN}}" } };
	struct outbox_row *row;
	struct outbox_error err;

	EXPECT_FAIL(outbox_row_http_post_json(&row, PK, URL, length, 1, "{}", &err),
		    OUTBOX_E_INVALID, "header \"content-length\" is set by the relay");
	EXPECT_FAIL(outbox_row_sqs(&row, PK, QUEUE, host, 1, "p", &err), OUTBOX_E_INVALID,
		    "header \"Host\" is set by the relay");
	EXPECT_FAIL(outbox_row_http_put_json(&row, PK, URL, secret, 1, "{}", &err), OUTBOX_E_INVALID,
		    "asks for {{DATABASE_URL}}");
	row = NULL;
	CHECK_INT_EQ(outbox_row_new(&row, PK, NULL, NULL, "p", NULL), OUTBOX_OK);
	err_reset(&err);
	CHECK_INT_EQ(outbox_row_add_http(row, URL, OUTBOX_HTTP_POST, aws, 1, &err), OUTBOX_E_INVALID);
	CHECK(strstr(err.message, "asks for {{AWS_ACCESS_KEY_ID}}") != NULL);
	CHECK_INT_EQ(outbox_row_set_header(row, "Connection", "close", &err), OUTBOX_E_INVALID);
	CHECK_INT_EQ(outbox_row_add_http(row, URL, OUTBOX_HTTP_POST, ordinary, 1, NULL), OUTBOX_OK);
	/* the row's own headers are never filled: a placeholder there is only text */
	CHECK_INT_EQ(outbox_row_set_header(row, "X-Row", "{{DATABASE_URL}}", NULL), OUTBOX_OK);
	outbox_row_free(row);
}

/* ------------------------------------------------------------------------------------------ */
/* errors                                                                                     */

static void
test_error_messages(void)
{
	struct outbox_error err;
	char long_utf8[600];
	size_t len;

	/* 299 two-byte characters, far over the 255 bytes a message holds. */
	for (size_t i = 0; i < 299; i++)
		memcpy(long_utf8 + 2 * i, "\xc3\xa9", 2);
	long_utf8[598] = '\0';

	/* 255 bytes would end with half an é: the cut drops it (254 bytes, 127 whole ones). */
	CHECK_INT_EQ(outbox__fail(&err, OUTBOX_E_INVALID, "%s", long_utf8), OUTBOX_E_INVALID);
	len = strlen(err.message);
	CHECK_INT_EQ(len, OUTBOX_ERROR_MESSAGE_MAX - 2);
	CHECK_INT_EQ((unsigned char)err.message[len - 2], 0xC3);
	CHECK_INT_EQ((unsigned char)err.message[len - 1], 0xA9);
	CHECK_STR_EQ(err.sqlstate, "");

	/* With one ASCII byte first the 255 bytes end on a whole é: nothing to drop. */
	CHECK_INT_EQ(outbox__fail(&err, OUTBOX_E_INVALID, "x%s", long_utf8), OUTBOX_E_INVALID);
	len = strlen(err.message);
	CHECK_INT_EQ(len, OUTBOX_ERROR_MESSAGE_MAX - 1);
	CHECK_INT_EQ((unsigned char)err.message[len - 1], 0xA9);

	CHECK_INT_EQ(outbox__fail_db(&err, "23505", "dup %d", 1), OUTBOX_E_DB);
	CHECK_STR_EQ(err.sqlstate, "23505");
	CHECK_STR_EQ(err.message, "dup 1");
	CHECK_INT_EQ(err.code, OUTBOX_E_DB);
	CHECK_INT_EQ(outbox__fail_db(NULL, "23505", "x"), OUTBOX_E_DB);

	CHECK_STR_EQ(outbox_rc_str(OUTBOX_OK), "ok");
	CHECK_STR_EQ(outbox_rc_str(OUTBOX_E_NOMEM), "out of memory");
	CHECK_STR_EQ(outbox_rc_str((enum outbox_rc)99), "unknown error");
}

int
main(int argc, char **argv)
{
	static const struct test tests[] = {
		TEST(test_http_post_json),
		TEST(test_http_put_json),
		TEST(test_http_patch_json),
		TEST(test_http_exact_text),
		TEST(test_http_keeps_callers_content_type),
		TEST(test_sqs),
		TEST(test_sns),
		TEST(test_http_and_queue),
		TEST(test_row_new_from_json),
		TEST(test_builders),
		TEST(test_set_header_replaces_ignoring_case),
		TEST(test_keys),
		TEST(test_delay),
		TEST(test_invalid_urls),
		TEST(test_invalid_arns),
		TEST(test_invalid_headers),
		TEST(test_invalid_keys_and_payload),
		TEST(test_invalid_destinations_json),
		TEST(test_add_to_invalid),
		TEST(test_limits),
		TEST(test_relay_limits),
		TEST(test_insert_arguments),
		TEST(test_array_literal_encoding),
		TEST(test_array_literal_round_trip),
		TEST(test_array_literal_limit),
		TEST(test_timestamps),
		TEST(test_error_messages),
		TEST(test_trace_context),
		TEST(test_shared_cases),
		TEST(test_builders_refuse_what_the_relay_parks),
		TEST_END,
	};

	return run_tests(tests, argc, argv);
}
