/*
 * test_destination.c - parsing and validation of a row's destinations and headers
 * (src/relay/send/destination.c): every shape the crate writes, and every malformed one we park.
 */
#include "send/destination.h"
#include "harness.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define KEY "0190f5a2-7c1e-7a55-b3a5-3a9c1f0c2e11"

static const char *fake_env(const char *name)
{
	if (!strcmp(name, "X_TOKEN"))
		return "secret-token";
	if (!strcmp(name, "BAD_VALUE"))
		return "a\r\nInjected: 1";
	return NULL;
}

static const char *header(const struct obr_destination *d, const char *name)
{
	for (int i = 0; i < d->nheaders; i++)
		if (!strcasecmp(d->headers[i].name, name))
			return d->headers[i].value;
	return NULL;
}

static int count_header(const struct obr_destination *d, const char *name)
{
	int n = 0;
	for (int i = 0; i < d->nheaders; i++)
		n += !strcasecmp(d->headers[i].name, name);
	return n;
}

static void test_crate_http_post_shape(void)
{
	struct obr_plan plan;
	char err[256];
	/* exactly what the crate's Outbox::http_post_json writes */
	const char *dests = "[{\"url\":\"http://127.0.0.1:9/a\",\"headers\":{\"Content-Type\":\"application/json\"},\"method\":null}]";
	CHECK_INT_EQ(obr_plan_parse(&plan, KEY, dests, NULL, NULL, fake_env, err, sizeof(err)), 0);
	CHECK_INT_EQ(plan.ndests, 1);
	CHECK_INT_EQ(plan.dests[0].kind, OBR_DEST_HTTP);
	CHECK_INT_EQ(plan.dests[0].method, OBR_POST);
	CHECK_STR_EQ(plan.dests[0].target, "http://127.0.0.1:9/a");
	CHECK_STR_EQ(header(&plan.dests[0], "content-type"), "application/json");
	CHECK_STR_EQ(header(&plan.dests[0], "x-idempotent-key"), KEY);
	obr_plan_clear(&plan);
}

static void test_methods(void)
{
	struct obr_plan plan;
	char err[256];
	const char *dests = "[{\"url\":\"https://h/x\",\"method\":\"put\"},{\"url\":\"https://h/y\",\"method\":\"PATCH\"},"
	                    "{\"url\":\"https://h/z\",\"method\":\"Post\"},{\"url\":\"https://h/w\"}]";
	CHECK_INT_EQ(obr_plan_parse(&plan, KEY, dests, NULL, NULL, fake_env, err, sizeof(err)), 0);
	CHECK_INT_EQ(plan.dests[0].method, OBR_PUT);
	CHECK_INT_EQ(plan.dests[1].method, OBR_PATCH);
	CHECK_INT_EQ(plan.dests[2].method, OBR_POST);
	CHECK_INT_EQ(plan.dests[3].method, OBR_POST);
	obr_plan_clear(&plan);
}

static void test_header_merge_row_wins_once(void)
{
	struct obr_plan plan;
	char err[256];
	const char *dests = "[{\"url\":\"http://h/a\",\"headers\":{\"X-Both\":\"dest\",\"X-Dest\":\"d\",\"X-Idempotent-Key\":\"forged\"}}]";
	const char *headers = "{\"x-both\":\"row\",\"X-Row\":\"r\",\"x-idempotent-key\":\"forged-too\"}";
	CHECK_INT_EQ(obr_plan_parse(&plan, KEY, dests, headers, NULL, fake_env, err, sizeof(err)), 0);
	const struct obr_destination *d = &plan.dests[0];
	CHECK_INT_EQ(count_header(d, "x-both"), 1);
	CHECK_STR_EQ(header(d, "x-both"), "row");
	CHECK_STR_EQ(header(d, "x-dest"), "d");
	CHECK_STR_EQ(header(d, "x-row"), "r");
	CHECK_INT_EQ(count_header(d, "x-idempotent-key"), 1);
	CHECK_STR_EQ(header(d, "x-idempotent-key"), KEY);
	obr_plan_clear(&plan);
}

static void test_env_placeholder(void)
{
	struct obr_plan plan;
	char err[256];
	/* only destination headers are substituted, only the exact {{UPPER_SNAKE}} form */
	const char *dests = "[{\"url\":\"http://h/a\",\"headers\":{\"Authorization\":\"{{X_TOKEN}}\",\"X-Unset\":\"{{NOT_SET}}\","
	                    "\"X-Partial\":\"Bearer {{X_TOKEN}}\",\"X-Lower\":\"{{x_token}}\"}}]";
	const char *headers = "{\"X-Row\":\"{{X_TOKEN}}\"}";
	CHECK_INT_EQ(obr_plan_parse(&plan, KEY, dests, headers, NULL, fake_env, err, sizeof(err)), 0);
	const struct obr_destination *d = &plan.dests[0];
	CHECK_STR_EQ(header(d, "authorization"), "secret-token");
	CHECK_STR_EQ(header(d, "x-unset"), "{{NOT_SET}}");
	CHECK_STR_EQ(header(d, "x-partial"), "Bearer {{X_TOKEN}}");
	CHECK_STR_EQ(header(d, "x-lower"), "{{x_token}}");
	CHECK_STR_EQ(header(d, "x-row"), "{{X_TOKEN}}");
	obr_plan_clear(&plan);
}

static void test_sqs_sns_and_crate_precedence(void)
{
	struct obr_plan plan;
	char err[256];
	/* untagged enum order: an object with queue_url is SQS even if it also has url */
	const char *dests = "[{\"queue_url\":\"http://127.0.0.1:1/000000000000/q\",\"url\":\"http://x/\"},"
	                    "{\"topic_arn\":\"arn:aws:sns:us-east-1:000000000000:t\"}]";
	CHECK_INT_EQ(obr_plan_parse(&plan, KEY, dests, "{\"attr\":\"v\"}", NULL, fake_env, err, sizeof(err)), 0);
	CHECK_INT_EQ(plan.dests[0].kind, OBR_DEST_SQS);
	CHECK_INT_EQ(plan.dests[1].kind, OBR_DEST_SNS);
	CHECK_STR_EQ(header(&plan.dests[0], "attr"), "v");
	CHECK_STR_EQ(header(&plan.dests[1], "attr"), "v");
	obr_plan_clear(&plan);
}

static void test_sent_destinations(void)
{
	struct obr_plan plan;
	char err[256];
	const char *dests = "[{\"url\":\"http://h/0\"},{\"url\":\"http://h/1\"},{\"url\":\"http://h/2\"}]";
	CHECK_INT_EQ(obr_plan_parse(&plan, KEY, dests, NULL, "{0,2}", fake_env, err, sizeof(err)), 0);
	CHECK(plan.dests[0].already_sent);
	CHECK(!plan.dests[1].already_sent);
	CHECK(plan.dests[2].already_sent);
	obr_plan_clear(&plan);
}

static void test_empty_array_is_nothing_to_send(void)
{
	struct obr_plan plan;
	char err[256];
	CHECK_INT_EQ(obr_plan_parse(&plan, KEY, "[]", "null", NULL, fake_env, err, sizeof(err)), 0);
	CHECK_INT_EQ(plan.ndests, 0);
	obr_plan_clear(&plan);
}

/* Each malformed row must be refused, with a message that names the problem. */
static void test_malformed(void)
{
	static const struct {
		const char *dests, *headers, *expect;
	} cases[] = {
		{ "{\"url\":\"http://h/\"}", NULL, "must be a JSON array" },
		{ "not json", NULL, "must be a JSON array" },
		{ "[1]", NULL, "destinations[0] must be an object" },
		{ "[{\"uri\":\"http://h/\"}]", NULL, "none of queue_url, topic_arn or url" },
		{ "[{\"url\":42}]", NULL, "destinations[0].url must be a non-empty string" },
		{ "[{\"url\":\"\"}]", NULL, "non-empty string" },
		{ "[{\"url\":\"ftp://h/\"}]", NULL, "must start with http:// or https://" },
		{ "[{\"url\":\"http:///path\"}]", NULL, "has no host" },
		{ "[{\"url\":\"http://user:pw@h/\"}]", NULL, "credentials" },
		{ "[{\"url\":\"http://h/a b\"}]", NULL, "spaces" },
		{ "[{\"url\":\"http://h/\",\"method\":\"GET\"}]", NULL, "method \"GET\" is not supported" },
		{ "[{\"url\":\"http://h/\",\"method\":1}]", NULL, "method must be a string" },
		{ "[{\"url\":\"http://h/\",\"headers\":[]}]", NULL, "destinations[0].headers must be a JSON object" },
		{ "[{\"url\":\"http://h/\",\"headers\":{\"a\":1}}]", NULL, "value of \"a\" must be a string" },
		{ "[{\"url\":\"http://h/\",\"headers\":{\"bad name\":\"v\"}}]", NULL, "invalid header name" },
		{ "[{\"url\":\"http://h/\",\"headers\":{\"\":\"v\"}}]", NULL, "invalid header name" },
		{ "[{\"url\":\"http://h/\",\"headers\":{\"x\":\"a\\r\\nInjected: 1\"}}]", NULL, "invalid value for header" },
		{ "[{\"url\":\"http://h/\",\"headers\":{\"x\":\"{{BAD_VALUE}}\"}}]", NULL, "environment variable BAD_VALUE" },
		{ "[{\"url\":\"http://h/\",\"headers\":{\"Content-Length\":\"0\"}}]", NULL, "header \"Content-Length\" is set by the relay" },
		{ "[{\"url\":\"http://h/\"}]", "{\"transfer-encoding\":\"chunked\"}", "header \"transfer-encoding\" is set by the relay" },
		{ "[{\"url\":\"http://h/\"}]", "{\"Host\":\"elsewhere\"}", "header \"Host\" is set by the relay" },
		{ "[{\"url\":\"http://h/\",\"headers\":{\"connection\":\"close\"}}]", NULL, "header \"connection\" is set by the relay" },
		{ "[{\"url\":\"http://h/\"}]", "[\"a\"]", "headers must be a JSON object" },
		{ "[{\"url\":\"http://h/\"}]", "{\"a\":{\"b\":\"c\"}}", "value of \"a\" must be a string" },
		{ "[{\"url\":\"http://h/\"}]", "{oops", "headers is not valid JSON" },
		{ "[{\"queue_url\":\"\"}]", NULL, "queue_url must be a non-empty string" },
		{ "[{\"queue_url\":\"sqs://q\"}]", NULL, "queue_url" },
		{ "[{\"topic_arn\":\"topic\"}]", NULL, "is not an ARN" },
		{ "[{\"topic_arn\":null}]", NULL, "topic_arn must be a non-empty string" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct obr_plan plan;
		char err[256] = "";
		int rc = obr_plan_parse(&plan, KEY, cases[i].dests, cases[i].headers, NULL, fake_env, err, sizeof(err));
		if (rc == 0 || !strstr(err, cases[i].expect)) {
			fprintf(stderr, "case %zu (%s / %s): rc=%d err=\"%s\", expected \"%s\"\n", i, cases[i].dests,
			        cases[i].headers ? cases[i].headers : "NULL", rc, err, cases[i].expect);
			if (rc == 0)
				obr_plan_clear(&plan);
		}
		CHECK(rc != 0);
		CHECK(strstr(err, cases[i].expect) != NULL);
		CHECK_INT_EQ(plan.ndests, 0); /* cleared on failure */
	}
}

static void test_too_many_destinations(void)
{
	char dests[8192] = "[";
	for (int i = 0; i <= OBR_MAX_DESTINATIONS; i++)
		strcat(dests, i ? ",{\"url\":\"http://h/\"}" : "{\"url\":\"http://h/\"}");
	strcat(dests, "]");
	struct obr_plan plan;
	char err[256];
	CHECK(obr_plan_parse(&plan, KEY, dests, NULL, NULL, fake_env, err, sizeof(err)) != 0);
	CHECK(strstr(err, "too many destinations") != NULL);
}

static void test_host_allow_list(void)
{
	const char *list = "api.example.com, *.hooks.example.org,[::1]";
	CHECK(obr_host_allowed("https://anything/", NULL));
	CHECK(obr_host_allowed("https://api.example.com/x", list));
	CHECK(obr_host_allowed("https://API.Example.COM:8443/x?y", list));
	CHECK(obr_host_allowed("http://api.example.com./x", list));
	CHECK(obr_host_allowed("https://a.hooks.example.org/", list));
	CHECK(obr_host_allowed("https://a.b.hooks.example.org/", list));
	CHECK(obr_host_allowed("http://[::1]:8080/", list));
	CHECK(!obr_host_allowed("https://hooks.example.org/", list));          /* *. is for subdomains */
	CHECK(!obr_host_allowed("https://evilhooks.example.org/", list));
	CHECK(!obr_host_allowed("https://api.example.com.evil.net/", list));
	CHECK(!obr_host_allowed("https://evil.net/api.example.com", list));
	CHECK(!obr_host_allowed("https://api.example.com@evil.net/", list));   /* userinfo trick */
	CHECK(!obr_host_allowed("https://127.0.0.1/", list));
	CHECK(!obr_host_allowed("https://api.example.co/", list));
}

int main(int argc, char **argv)
{
	static const struct test tests[] = {
		TEST(test_crate_http_post_shape),
		TEST(test_methods),
		TEST(test_header_merge_row_wins_once),
		TEST(test_env_placeholder),
		TEST(test_sqs_sns_and_crate_precedence),
		TEST(test_sent_destinations),
		TEST(test_empty_array_is_nothing_to_send),
		TEST(test_malformed),
		TEST(test_too_many_destinations),
		TEST(test_host_allow_list),
		TEST_END,
	};
	return run_tests(tests, argc, argv);
}
