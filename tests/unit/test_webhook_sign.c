/*
 * test_webhook_sign.c - Standard Webhooks signatures (src/relay/send/webhook_sign.c): the
 * scheme's own example, rotation (one signature per secret), secrets that are refused
 * without being quoted, and the sender that adds the headers to each HTTP attempt.
 */
#include "harness.h"
#include "send/sender.h"
#include "send/webhook_sign.h"

#include <stdio.h>
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
		"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLa\t\t",       /* whitespace EVP_DecodeBlock would skip */
		"whsec_MfKQ9r8GKYqrTwjUPD8I=PZIo2LaLaSw",       /* "=" inside */
		"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaL===",       /* three "=" */
		"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2La-_Sw",       /* the URL-safe alphabet */
		"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS",        /* padding left out */
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

/* ---- the signing sender, around a sender that records what it is given ---- */

static struct {
	int submits, freed;
	char headers[80][2][200];
	int nheaders;
} rec;

static int rec_submit(void *self, const struct obr_send_request *req, obr_send_done_fn done, void *arg,
                      struct obr_send_result *refused)
{
	rec.submits++;
	rec.nheaders = req->dest->nheaders;
	for (int i = 0; i < req->dest->nheaders && i < 80; i++) {
		snprintf(rec.headers[i][0], sizeof(rec.headers[i][0]), "%s", req->dest->headers[i].name);
		snprintf(rec.headers[i][1], sizeof(rec.headers[i][1]), "%s", req->dest->headers[i].value);
	}
	return 0;
}

static int rec_in_flight(const void *self)
{
	return 7;
}

static void rec_abort_all(void *self)
{
}

static void rec_free(void *self)
{
	rec.freed++;
}

static const struct obr_sender_ops rec_ops = { rec_submit, rec_in_flight, rec_abort_all, rec_free };

static const char *rec_header(const char *name)
{
	for (int i = 0; i < rec.nheaders; i++)
		if (!strcmp(rec.headers[i][0], name))
			return rec.headers[i][1];
	return NULL;
}

static int64_t fake_now = SPEC_TS;

static int64_t now_fn(void)
{
	return fake_now;
}

static void test_signer_adds_the_headers_on_every_attempt(void)
{
	static struct obr_sender inner = { &rec_ops, NULL };
	struct obr_webhook_keys k;
	char err[256];
	memset(&rec, 0, sizeof(rec));
	CHECK_INT_EQ(obr_webhook_keys_parse(SPEC_SECRET, &k, err, sizeof(err)), 0);
	struct obr_sender *s = obr_webhook_signer_new(&inner, &k, now_fn);
	obr_webhook_keys_clear(&k);
	CHECK(s != NULL);

	char n0[] = "content-type", v0[] = "application/json", n1[] = "x-idempotent-key", v1[] = SPEC_ID;
	struct obr_header h[] = { { n0, v0 }, { n1, v1 } };
	char url[] = "http://127.0.0.1:9/x";
	struct obr_destination dest = { .kind = OBR_DEST_HTTP, .target = url, .headers = h, .nheaders = 2, .cap = 2 };
	struct obr_send_request req = { .dest = &dest, .idempotent_key = SPEC_ID, .payload = SPEC_BODY,
		                        .payload_len = strlen(SPEC_BODY) };
	struct obr_send_result refused;
	CHECK_INT_EQ(obr_sender_submit(s, &req, NULL, NULL, &refused), 0);
	CHECK_INT_EQ(rec.nheaders, 5);
	CHECK_STR_EQ(rec.headers[0][0], "content-type"); /* the plan's headers first, unchanged */
	CHECK_STR_EQ(rec_header("webhook-id"), SPEC_ID);
	CHECK_STR_EQ(rec_header("webhook-timestamp"), "1614265330");
	CHECK_STR_EQ(rec_header("webhook-signature"), SPEC_SIG);
	CHECK_INT_EQ(dest.nheaders, 2); /* the plan itself is not changed */

	/* a retry is signed anew, with its own time */
	fake_now = SPEC_TS + 60;
	CHECK_INT_EQ(obr_sender_submit(s, &req, NULL, NULL, &refused), 0);
	CHECK_STR_EQ(rec_header("webhook-timestamp"), "1614265390");
	CHECK(strcmp(rec_header("webhook-signature"), SPEC_SIG) != 0);

	/* "signing": false, and SQS/SNS: passed on untouched */
	dest.no_signing = true;
	CHECK_INT_EQ(obr_sender_submit(s, &req, NULL, NULL, &refused), 0);
	CHECK_INT_EQ(rec.nheaders, 2);
	CHECK(rec_header("webhook-signature") == NULL);
	dest.no_signing = false;
	dest.kind = OBR_DEST_SQS;
	CHECK_INT_EQ(obr_sender_submit(s, &req, NULL, NULL, &refused), 0);
	CHECK_INT_EQ(rec.nheaders, 2);
	CHECK_INT_EQ(rec.submits, 4);

	CHECK_INT_EQ(obr_sender_in_flight(s), 7);
	obr_sender_free(s);
	CHECK_INT_EQ(rec.freed, 1);
}

int main(int argc, char **argv)
{
	static const struct test tests[] = {
		TEST(test_specification_example),
		TEST(test_rotation_signs_with_each_secret),
		TEST(test_bad_secrets_are_refused_unquoted),
		TEST(test_signature_buffer_too_small),
		TEST(test_signer_adds_the_headers_on_every_attempt),
		TEST_END,
	};
	return run_tests(tests, argc, argv);
}
