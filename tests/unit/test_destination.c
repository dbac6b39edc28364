/*
 * test_destination.c - parsing and validation of a row's destinations and headers
 * (src/relay/send/destination.c): every shape the crate writes, and every malformed one we park.
 * The row-format cases are the table test_row.c runs against liboutbox (rowformat_cases.h).
 */
#include "send/destination.h"
#include "harness.h"
#include "rowformat_cases.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define KEY "0190f5a2-7c1e-7a55-b3a5-3a9c1f0c2e11"

/* The names fake_env was asked for, to show a refused variable is never even read. */
static char asked[1024];

static const char *fake_env(const char *name)
{
	strncat(asked, name, sizeof(asked) - strlen(asked) - 2);
	strcat(asked, " ");
	if (!strcmp(name, "DATABASE_URL"))
		return "postgresql://relay:db-password@127.0.0.1/app";
	if (!strcmp(name, "AWS_SECRET_ACCESS_KEY"))
		return "aws-secret-value";
	if (!strcmp(name, "API_TOKEN"))
		return "api-token-value";
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

/* "signing": false opts a destination out of the webhook signatures; true and null do not */
static void test_signing_opt_out(void)
{
	struct obr_plan plan;
	char err[256];
	const char *dests = "[{\"url\":\"https://h/x\",\"signing\":false},{\"url\":\"https://h/y\",\"signing\":true},"
	                    "{\"url\":\"https://h/z\",\"signing\":null},{\"url\":\"https://h/w\"}]";
	CHECK_INT_EQ(obr_plan_parse(&plan, KEY, dests, NULL, NULL, fake_env, err, sizeof(err)), 0);
	CHECK(plan.dests[0].no_signing);
	CHECK(!plan.dests[1].no_signing && !plan.dests[2].no_signing && !plan.dests[3].no_signing);
	CHECK(header(&plan.dests[0], "signing") == NULL); /* a member, never a header */
	obr_plan_clear(&plan);
	CHECK_INT_EQ(obr_plan_parse(&plan, KEY, "[{\"url\":\"https://h/x\",\"signing\":0}]", NULL, NULL, fake_env, err,
	                            sizeof(err)), -1);
	CHECK(strstr(err, "destinations[0].signing is not true, false or null") != NULL);
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

/* A row that goes nowhere is a writer's bug (the crate would mark it delivered): parked. */
static void test_empty_array_is_parked(void)
{
	struct obr_plan plan;
	char err[256];
	CHECK(obr_plan_parse(&plan, KEY, "[]", "null", NULL, fake_env, err, sizeof(err)) != 0);
	CHECK(strstr(err, "destinations is an empty array: the row goes nowhere") != NULL);
	CHECK_INT_EQ(plan.ndests, 0);
}

/* The table liboutbox is tested against: the relay parks exactly the rows marked so, with the
 * writers' reason, and sends the others. */
static void test_shared_cases(void)
{
	json_object *cases = rf_cases_load();
	size_t failed = 0;
	CHECK(cases != NULL);
	for (size_t i = 0; i < json_object_array_length(cases); i++) {
		struct rf_case c;
		struct obr_plan plan;
		char err[512] = "";
		if (!rf_case_get(cases, i, &c)) {
			failed++;
			continue;
		}
		int rc = obr_plan_parse(&plan, KEY, c.destinations, c.headers, NULL, fake_env, err, sizeof(err));
		if (rc == 0)
			obr_plan_clear(&plan);
		if (c.parked ? rc == 0 || !strstr(err, c.refused) : rc != 0) {
			fprintf(stderr, "case \"%s\": rc=%d \"%s\", expected %s%s\n", c.name, rc, err,
			        c.parked ? "parking with " : "a plan", c.parked ? c.refused : "");
			failed++;
		}
		CHECK_INT_EQ(plan.ndests, 0); /* cleared either way */
	}
	json_object_put(cases);
	CHECK_INT_EQ(failed, 0);
}

/* What only the relay meets: text that is no JSON, and what a placeholder's variable holds. */
static void test_malformed(void)
{
	static const struct {
		const char *dests, *headers, *expect;
	} cases[] = {
		{ "not json", NULL, "destinations is not valid JSON" },
		{ NULL, NULL, "destinations is not a JSON array" },
		{ "[{\"url\":\"http://h/\"}]", "{oops", "headers is not valid JSON" },
		{ "[{\"url\":\"http://h/\",\"headers\":{\"x\":\"{{BAD_VALUE}}\"}}]", NULL, "environment variable BAD_VALUE" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct obr_plan plan;
		char err[256] = "";
		int rc = obr_plan_parse(&plan, KEY, cases[i].dests, cases[i].headers, NULL, fake_env, err, sizeof(err));
		if (rc == 0 || !strstr(err, cases[i].expect)) {
			fprintf(stderr, "case %zu (%s / %s): rc=%d err=\"%s\", expected \"%s\"\n", i,
			        cases[i].dests ? cases[i].dests : "NULL", cases[i].headers ? cases[i].headers : "NULL", rc,
			        err, cases[i].expect);
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
	CHECK(strstr(err, "destinations has 65 entries, over the limit of 64") != NULL);
}

/* {{DATABASE_URL}} and the like: parked with the variable's name; its value is never read. */
static void test_relay_secrets_are_never_filled(void)
{
	static const char *const refused[] = {
		"DATABASE_URL", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "PGPASSWORD",
		"OUTBOX_HEADER_ENV", "LOCAL_ENDPOINT", "HTTPS_PROXY", "NO_PROXY", "CURL_CA_BUNDLE", "SSL_CERT_DIR",
		"NOTIFY_SOCKET",
	};
	for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
		char dests[256], expect[128], err[256] = "";
		struct obr_plan plan;
		snprintf(dests, sizeof(dests), "[{\"url\":\"http://h/\",\"headers\":{\"Authorization\":\"{{%s}}\"}}]",
		         refused[i]);
		snprintf(expect, sizeof(expect), "header \"Authorization\" asks for {{%s}}", refused[i]);
		asked[0] = '\0';
		CHECK(obr_plan_parse(&plan, KEY, dests, NULL, NULL, fake_env, err, sizeof(err)) != 0);
		if (!strstr(err, expect))
			fprintf(stderr, "%s: \"%s\"\n", refused[i], err);
		CHECK(strstr(err, expect) != NULL);
		CHECK_STR_EQ(asked, "");
		CHECK(!strstr(err, "password") && !strstr(err, "secret-value"));
	}
	/* the same name in the row's headers is plain text (never filled), as in the crate */
	struct obr_plan plan;
	char err[256];
	asked[0] = '\0';
	CHECK_INT_EQ(obr_plan_parse(&plan, KEY, "[{\"url\":\"http://h/\"}]", "{\"X-Row\":\"{{DATABASE_URL}}\"}", NULL,
	                            fake_env, err, sizeof(err)), 0);
	CHECK_STR_EQ(header(&plan.dests[0], "x-row"), "{{DATABASE_URL}}");
	CHECK_STR_EQ(asked, "");
	obr_plan_clear(&plan);
}

/* OUTBOX_HEADER_ENV narrows the placeholders further: names and PREFIX_* patterns. */
static void test_header_env_setting(void)
{
	static const char spec[] = "API_TOKEN, X_*";
	const char *dests = "[{\"url\":\"http://h/\",\"headers\":{\"A\":\"{{API_TOKEN}}\",\"B\":\"{{X_TOKEN}}\"}}]";
	struct obr_plan plan;
	char err[256] = "";

	CHECK(obr_header_env_allowed("ANYTHING", NULL));
	CHECK(obr_header_env_allowed("API_TOKEN", spec));
	CHECK(obr_header_env_allowed("X_TOKEN", spec));
	CHECK(obr_header_env_allowed("X_", spec));
	CHECK(!obr_header_env_allowed("API_TOKENS", spec));
	CHECK(!obr_header_env_allowed("API", spec));
	CHECK(!obr_header_env_allowed("XTOKEN", spec));
	CHECK(!obr_header_env_allowed("x_token", spec));

	obr_header_env_use(spec);
	asked[0] = '\0';
	int rc = obr_plan_parse(&plan, KEY, dests, NULL, NULL, fake_env, err, sizeof(err));
	if (rc == 0) {
		CHECK_STR_EQ(header(&plan.dests[0], "a"), "api-token-value");
		CHECK_STR_EQ(header(&plan.dests[0], "b"), "secret-token");
		obr_plan_clear(&plan);
	}
	rc |= obr_plan_parse(&plan, KEY, "[{\"url\":\"http://h/\",\"headers\":{\"C\":\"{{BAD_VALUE}}\"}}]", NULL, NULL,
	                     fake_env, err, sizeof(err)) == 0;
	obr_header_env_use(NULL);
	CHECK_INT_EQ(rc, 0);
	CHECK(strstr(err, "header \"C\" asks for {{BAD_VALUE}}, which OUTBOX_HEADER_ENV does not allow") != NULL);
	CHECK(strstr(asked, "BAD_VALUE") == NULL);
}

static void test_header_env_check(void)
{
	static const char *const good[] = { "API_TOKEN", "API_TOKEN X_*", "A,B_*, C", "MY_PG*" };
	static const struct {
		const char *spec, *expect;
	} bad[] = {
		{ "api_token", "\"api_token\" is neither a variable name of A-Z and _ nor such a prefix followed by *" },
		{ "TOKEN2", "\"TOKEN2\" is neither" },
		{ "*", "\"*\" is neither" },
		{ "A*B", "\"A*B\" is neither" },
		{ " , ", "lists no variable" },
		{ "API_TOKEN DATABASE_URL", "DATABASE_URL names the relay's own settings or credentials" },
		{ "AWS_*", "AWS_* names the relay's own" },
		{ "PGPASSWORD", "PGPASSWORD names the relay's own" },
		{ "OUTBOX_SECRET", "OUTBOX_SECRET names the relay's own" },
	};
	char err[256];
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		CHECK_INT_EQ(obr_header_env_check(good[i], err, sizeof(err)), 0);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		err[0] = '\0';
		CHECK(obr_header_env_check(bad[i].spec, err, sizeof(err)) != 0);
		if (!strstr(err, bad[i].expect))
			fprintf(stderr, "\"%s\": \"%s\"\n", bad[i].spec, err);
		CHECK(strstr(err, "invalid value for OUTBOX_HEADER_ENV") != NULL);
		CHECK(strstr(err, bad[i].expect) != NULL);
	}
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
		TEST(test_signing_opt_out),
		TEST(test_header_merge_row_wins_once),
		TEST(test_env_placeholder),
		TEST(test_sqs_sns_and_crate_precedence),
		TEST(test_sent_destinations),
		TEST(test_empty_array_is_parked),
		TEST(test_shared_cases),
		TEST(test_malformed),
		TEST(test_too_many_destinations),
		TEST(test_relay_secrets_are_never_filled),
		TEST(test_header_env_setting),
		TEST(test_header_env_check),
		TEST(test_host_allow_list),
		TEST_END,
	};
	return run_tests(tests, argc, argv);
}
