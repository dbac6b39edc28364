/*
 * test_aws_credentials.c - the pure parts of the AWS credential chain
 * (src/relay/send/aws_credentials.c): the answers of the container endpoint, the instance metadata
 * service and STS, expiration times, the refresh schedule and the container endpoint URL.
 */
#include "send/aws_credentials.h"
#include "harness.h"

#include <stdlib.h>
#include <string.h>

static void test_parse_time(void)
{
	time_t t;
	CHECK_INT_EQ(obr_aws_parse_time("2024-05-01T12:34:56Z", &t), 0);
	CHECK_INT_EQ(t, 1714566896);
	CHECK_INT_EQ(obr_aws_parse_time("2024-05-01T12:34:56.789Z", &t), 0);
	CHECK_INT_EQ(t, 1714566896);
	CHECK_INT_EQ(obr_aws_parse_time("2024-05-01t12:34:56z", &t), 0);
	CHECK_INT_EQ(t, 1714566896);
	CHECK_INT_EQ(obr_aws_parse_time("2024-05-01T14:34:56+02:00", &t), 0);
	CHECK_INT_EQ(t, 1714566896);
	CHECK_INT_EQ(obr_aws_parse_time("2024-05-01T11:04:56-0130", &t), 0);
	CHECK_INT_EQ(t, 1714566896);
	CHECK_INT_EQ(obr_aws_parse_time("2024-05-01T12:34:56", &t), 0); /* no zone: UTC */
	CHECK_INT_EQ(t, 1714566896);
	static const char *const bad[] = { "", "2024-05-01", "2024-13-01T00:00:00Z", "2024-05-01T25:00:00Z",
		                           "2024-05-01T12:34:56Zjunk", "2024-05-01T12:34:56.Z", "yesterday",
		                           "2024-05-01T12:34:56+2", NULL };
	for (const char *const *b = bad; *b; b++)
		CHECK(obr_aws_parse_time(*b, &t) == -1);
	CHECK(obr_aws_parse_time(NULL, &t) == -1);
}

static void test_refresh_schedule(void)
{
	time_t now = 1700000000;
	CHECK_INT_EQ(obr_aws_refresh_delay(now, now + 3600), 3300);  /* 5 minutes before */
	CHECK_INT_EQ(obr_aws_refresh_delay(now, now + 900), 600);
	CHECK_INT_EQ(obr_aws_refresh_delay(now, now + 600), 300);    /* short: half-life */
	CHECK_INT_EQ(obr_aws_refresh_delay(now, now + 6), 3);
	CHECK_INT_EQ(obr_aws_refresh_delay(now, now + 1), 1);
	CHECK_INT_EQ(obr_aws_refresh_delay(now, now), -1);
	CHECK_INT_EQ(obr_aws_refresh_delay(now, now - 10), -1);
	CHECK_INT_EQ(obr_aws_usable_until(now, now + 3600), now + 3540);
	CHECK_INT_EQ(obr_aws_usable_until(now, now + 8), now + 6);
	/* a refresh is always due before the credentials stop being used */
	for (long life = 1; life < 7200; life += 7)
		CHECK(now + obr_aws_refresh_delay(now, now + life) <= obr_aws_usable_until(now, now + life) || life < 4);
}

static void test_parse_container_json(void)
{
	struct obr_aws_creds c;
	char err[200];
	const char *body = "{\"AccessKeyId\":\"ASIAXAMPLE\",\"SecretAccessKey\":\"s3cr3t/+=\",\"Token\":\"tok==\","
	                   "\"Expiration\":\"2024-05-01T12:34:56Z\",\"RoleArn\":\"arn:aws:iam::1:role/r\"}";
	CHECK_INT_EQ(obr_aws_parse_creds_json(body, strlen(body), &c, err, sizeof(err)), 0);
	CHECK_STR_EQ(c.access_key, "ASIAXAMPLE");
	CHECK_STR_EQ(c.secret_key, "s3cr3t/+=");
	CHECK_STR_EQ(c.token, "tok==");
	CHECK_STR_EQ(c.userpwd, "ASIAXAMPLE:s3cr3t/+=");
	CHECK_INT_EQ(c.expires, 1714566896);
	obr_aws_creds_clear(&c);
	CHECK(c.access_key == NULL && c.secret_key == NULL && c.token == NULL && c.userpwd == NULL);

	const char *no_exp = "{\"AccessKeyId\":\"AKID\",\"SecretAccessKey\":\"s\"}";
	CHECK_INT_EQ(obr_aws_parse_creds_json(no_exp, strlen(no_exp), &c, err, sizeof(err)), 0);
	CHECK(c.token == NULL && c.expires == 0);
	obr_aws_creds_clear(&c);
}

static void test_parse_imds_json(void)
{
	struct obr_aws_creds c;
	char err[200];
	const char *ok = "{\n  \"Code\" : \"Success\",\n  \"LastUpdated\" : \"2024-05-01T06:00:00Z\",\n"
	                 "  \"Type\" : \"AWS-HMAC\",\n  \"AccessKeyId\" : \"ASIAIMDS\",\n"
	                 "  \"SecretAccessKey\" : \"sec\",\n  \"Token\" : \"tok\",\n"
	                 "  \"Expiration\" : \"2024-05-01T12:00:00Z\"\n}";
	CHECK_INT_EQ(obr_aws_parse_creds_json(ok, strlen(ok), &c, err, sizeof(err)), 0);
	CHECK_STR_EQ(c.access_key, "ASIAIMDS");
	obr_aws_creds_clear(&c);
	const char *failed = "{\"Code\":\"AssumeRoleUnauthorizedAccess\",\"Message\":\"no trust\"}";
	CHECK_INT_EQ(obr_aws_parse_creds_json(failed, strlen(failed), &c, err, sizeof(err)), -1);
	CHECK_STR_EQ(err, "the answer says AssumeRoleUnauthorizedAccess: no trust");
}

static void test_parse_creds_json_errors(void)
{
	struct obr_aws_creds c;
	char err[200];
	struct {
		const char *body, *error;
	} cases[] = {
		{ "not json", "the answer is not a JSON object" },
		{ "[1]", "the answer is not a JSON object" },
		{ "{\"SecretAccessKey\":\"s\"}", "the answer has no AccessKeyId" },
		{ "{\"AccessKeyId\":\"a\",\"SecretAccessKey\":\"\"}", "the answer has no SecretAccessKey" },
		{ "{\"AccessKeyId\":\"a:b\",\"SecretAccessKey\":\"s\"}",
		  "the answer has credentials with characters that cannot be sent" },
		{ "{\"AccessKeyId\":\"a\",\"SecretAccessKey\":\"s\",\"Token\":\"t\\r\\nX-Injected: 1\"}",
		  "the answer has credentials with characters that cannot be sent" },
		{ "{\"AccessKeyId\":\"a\",\"SecretAccessKey\":\"s\",\"Expiration\":\"soon\"}",
		  "the answer has an unreadable Expiration \"soon\"" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		CHECK_INT_EQ(obr_aws_parse_creds_json(cases[i].body, strlen(cases[i].body), &c, err, sizeof(err)), -1);
		CHECK_STR_EQ(err, cases[i].error);
		CHECK(c.access_key == NULL && c.secret_key == NULL);
	}
}

static void test_parse_sts(void)
{
	struct obr_aws_creds c;
	char err[200];
	const char *ok =
		"<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\n"
		"  <AssumeRoleWithWebIdentityResult>\n"
		"    <SubjectFromWebIdentityToken>sub</SubjectFromWebIdentityToken>\n"
		"    <Credentials>\n      <SessionToken>FwoG&amp;token</SessionToken>\n"
		"      <SecretAccessKey>wJalr/K7MDENG</SecretAccessKey>\n"
		"      <Expiration>2024-05-01T12:34:56Z</Expiration>\n"
		"      <AccessKeyId>ASIASTS</AccessKeyId>\n    </Credentials>\n"
		"  </AssumeRoleWithWebIdentityResult>\n</AssumeRoleWithWebIdentityResponse>\n";
	CHECK_INT_EQ(obr_aws_parse_sts_creds(ok, strlen(ok), &c, err, sizeof(err)), 0);
	CHECK_STR_EQ(c.access_key, "ASIASTS");
	CHECK_STR_EQ(c.secret_key, "wJalr/K7MDENG");
	CHECK_STR_EQ(c.token, "FwoG&token");
	CHECK_INT_EQ(c.expires, 1714566896);
	obr_aws_creds_clear(&c);

	const char *error = "<ErrorResponse><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code>"
	                    "<Message>Couldn't retrieve verification key</Message></Error></ErrorResponse>";
	CHECK_INT_EQ(obr_aws_parse_sts_creds(error, strlen(error), &c, err, sizeof(err)), -1);
	CHECK_STR_EQ(err, "STS InvalidIdentityToken: Couldn't retrieve verification key");
	const char *none = "<AssumeRoleWithWebIdentityResponse/>";
	CHECK_INT_EQ(obr_aws_parse_sts_creds(none, strlen(none), &c, err, sizeof(err)), -1);
	CHECK_STR_EQ(err, "the STS answer has no Credentials");
	const char *partial = "<Credentials><AccessKeyId>A</AccessKeyId></Credentials>";
	CHECK_INT_EQ(obr_aws_parse_sts_creds(partial, strlen(partial), &c, err, sizeof(err)), -1);
	CHECK_STR_EQ(err, "the answer has no SecretAccessKey");
}

static void test_container_url(void)
{
	struct obr_aws_config cfg = { 0 };
	char url[256], why[200];
	char rel[] = "/v2/credentials/abc", rel2[] = "v2/x";
	cfg.container_relative_uri = rel;
	CHECK_INT_EQ(obr_aws_container_url(&cfg, url, sizeof(url), why, sizeof(why)), 0);
	CHECK_STR_EQ(url, "http://169.254.170.2/v2/credentials/abc");
	cfg.container_relative_uri = rel2;
	CHECK_INT_EQ(obr_aws_container_url(&cfg, url, sizeof(url), why, sizeof(why)), 0);
	CHECK_STR_EQ(url, "http://169.254.170.2/v2/x");

	cfg.container_relative_uri = NULL;
	static const char *const allowed[] = {
		"http://127.0.0.1:8080/creds", "http://127.1.2.3/c", "http://localhost:9/c", "http://[::1]:9/c",
		"http://169.254.170.23/v1/credentials", "http://[fd00:ec2::23]/v1/credentials", "https://anywhere.example/c",
		NULL,
	};
	for (const char *const *a = allowed; *a; a++) {
		char full[128];
		snprintf(full, sizeof(full), "%s", *a);
		cfg.container_full_uri = full;
		CHECK_INT_EQ(obr_aws_container_url(&cfg, url, sizeof(url), why, sizeof(why)), 0);
		CHECK_STR_EQ(url, *a);
	}
	static const char *const refused[] = { "http://192.0.2.1/c", "http://127.0.0.1.evil.example/c",
		                               "http://localhost.evil.example/c", "ftp://127.0.0.1/c", NULL };
	for (const char *const *r = refused; *r; r++) {
		char full[128];
		snprintf(full, sizeof(full), "%s", *r);
		cfg.container_full_uri = full;
		CHECK_INT_EQ(obr_aws_container_url(&cfg, url, sizeof(url), why, sizeof(why)), -1);
		CHECK(strstr(why, "AWS_CONTAINER_CREDENTIALS_FULL_URI must be https://") == why);
	}
}

int main(int argc, char **argv)
{
	static const struct test tests[] = {
		TEST(test_parse_time),
		TEST(test_refresh_schedule),
		TEST(test_parse_container_json),
		TEST(test_parse_imds_json),
		TEST(test_parse_creds_json_errors),
		TEST(test_parse_sts),
		TEST(test_container_url),
		TEST_END,
	};
	return run_tests(tests, argc, argv);
}
