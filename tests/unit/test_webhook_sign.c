/*
 * test_webhook_sign.c - Standard Webhooks signatures (src/relay/send/webhook_sign.c): the
 * scheme's own example, rotation (one signature per secret), and secrets that are refused
 * without being quoted.
 */
#include "harness.h"
#include "send/webhook_sign.h"

#include <string.h>

/* The example of the Standard Webhooks specification; the reference verifier (npm
 * standardwebhooks 1.1.1) computes the same signature. */
#define SPEC_SECRET "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
#define SPEC_ID "msg_p5jXN8AQM9LWM0D4loKWxJek"
#define SPEC_TS 1614265330
#define SPEC_BODY "{\"test\": 2432232314}"
#define SPEC_SIG "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

static void test_specification_example(void)
{
	struct obr_webhook_keys k;
	char err[256], sig[OBR_WEBHOOK_SIGNATURE_MAX];
	CHECK_INT_EQ(obr_webhook_keys_parse(SPEC_SECRET, &k, err, sizeof(err)), 0);
	CHECK_INT_EQ(obr_webhook_sign(&k, SPEC_ID, SPEC_TS, SPEC_BODY, strlen(SPEC_BODY), sig, sizeof(sig)), 0);
	CHECK_STR_EQ(sig, SPEC_SIG);
	/* another body, id or time gives another signature */
	CHECK_INT_EQ(obr_webhook_sign(&k, SPEC_ID, SPEC_TS + 1, SPEC_BODY, strlen(SPEC_BODY), sig, sizeof(sig)), 0);
	CHECK(strcmp(sig, SPEC_SIG) != 0);
	obr_webhook_keys_clear(&k);
	CHECK_INT_EQ((long long)k.n, 0);
}

static void test_rotation_signs_with_each_secret(void)
{
	struct obr_webhook_keys k;
	char err[256], sig[OBR_WEBHOOK_SIGNATURE_MAX];
	CHECK_INT_EQ(obr_webhook_keys_parse("  whsec_c2Vjb25kLXNlY3JldC0yNC1ieXRlcyEh " SPEC_SECRET " ", &k, err,
	                                    sizeof(err)), 0);
	CHECK_INT_EQ((long long)k.n, 2);
	CHECK_INT_EQ(obr_webhook_sign(&k, SPEC_ID, SPEC_TS, SPEC_BODY, strlen(SPEC_BODY), sig, sizeof(sig)), 0);
	const char *space = strchr(sig, ' ');
	CHECK(space != NULL && !strncmp(sig, "v1,", 3) && strcmp(space + 1, SPEC_SIG) == 0);
	CHECK(strchr(space + 1, ' ') == NULL);
	obr_webhook_keys_clear(&k);
}

static void test_bad_secrets_are_refused_unquoted(void)
{
	static const char *const bad[] = {
		"",                                             /* nothing */
		"MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",             /* no prefix */
		"whsec_",                                       /* empty */
		"whsec_not*base64*at*all!!",                    /* not base64 */
		"whsec_c2hvcnQ=",                               /* 5 bytes: too short */
		"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw "
		"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw "
		"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",       /* more than the maximum */
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct obr_webhook_keys k;
		char err[256] = "";
		CHECK_INT_EQ(obr_webhook_keys_parse(bad[i], &k, err, sizeof(err)), -1);
		CHECK(strstr(err, "OUTBOX_WEBHOOK_SECRET") != NULL);
		CHECK(strstr(err, "MfKQ9r8") == NULL && strstr(err, "c2hvcnQ") == NULL);
		CHECK_INT_EQ((long long)k.n, 0);
	}
}

static void test_signature_buffer_too_small(void)
{
	struct obr_webhook_keys k;
	char err[256], sig[20];
	CHECK_INT_EQ(obr_webhook_keys_parse(SPEC_SECRET, &k, err, sizeof(err)), 0);
	CHECK_INT_EQ(obr_webhook_sign(&k, SPEC_ID, SPEC_TS, SPEC_BODY, strlen(SPEC_BODY), sig, sizeof(sig)), -1);
	obr_webhook_keys_clear(&k);
}

int main(int argc, char **argv)
{
	static const struct test tests[] = {
		TEST(test_specification_example),
		TEST(test_rotation_signs_with_each_secret),
		TEST(test_bad_secrets_are_refused_unquoted),
		TEST(test_signature_buffer_too_small),
		TEST_END,
	};
	return run_tests(tests, argc, argv);
}
