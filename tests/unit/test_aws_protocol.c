/*
 * test_aws_protocol.c - the pure parts of SQS/SNS delivery (src/relay/send/aws_protocol.c):
 * configuration from the environment, regions, endpoints, FIFO detection, message checks and
 * sizes, SendMessageBatch (JSON 1.0) and PublishBatch (Query) bodies, per-entry results and
 * error classification, the XML scanner and the encoders.
 */
#include "send/aws_protocol.h"
#include "harness.h"

#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>

/* ---- a fake environment ---- */

static const char *const *fake_vars;

static const char *fake_getenv(const char *name)
{
	for (const char *const *p = fake_vars; p && *p; p += 2)
		if (!strcmp(p[0], name))
			return p[1];
	return NULL;
}

static int load(struct obr_aws_config *cfg, const char *const *vars, char *err, size_t errlen)
{
	fake_vars = vars;
	return obr_aws_config_load(cfg, fake_getenv, err, errlen);
}

static void test_config_precedence(void)
{
	struct obr_aws_config cfg;
	char err[200];
	static const char *const vars[] = {
		"AWS_REGION", "eu-west-1", "AWS_DEFAULT_REGION", "us-east-2", "LOCAL_REGION", "ap-south-1",
		"AWS_ENDPOINT_URL", "http://global:1", "AWS_ENDPOINT_URL_SQS", "http://sqs-only:2", "LOCAL_ENDPOINT",
		"http://local:3", "AWS_ACCESS_KEY_ID", "AKID", "AWS_SECRET_ACCESS_KEY", "SECRET", "AWS_SESSION_TOKEN", "",
		"AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9/", "AWS_EC2_METADATA_DISABLED", "TRUE", NULL,
	};
	CHECK_INT_EQ(load(&cfg, vars, err, sizeof(err)), 0);
	CHECK_STR_EQ(cfg.region, "eu-west-1");
	CHECK_STR_EQ(cfg.local_region, "ap-south-1");
	CHECK_STR_EQ(cfg.endpoint_sqs, "http://sqs-only:2");
	CHECK_STR_EQ(cfg.endpoint_sns, "http://global:1");
	CHECK_STR_EQ(cfg.endpoint_sts, "http://global:1");
	CHECK_STR_EQ(cfg.access_key, "AKID");
	CHECK_STR_EQ(cfg.session_token, NULL); /* empty = unset */
	CHECK_STR_EQ(cfg.imds_endpoint, "http://127.0.0.1:9");
	CHECK(cfg.imds_disabled);
	obr_aws_config_clear(&cfg);
	CHECK_STR_EQ(cfg.region, NULL);
}

static void test_config_defaults_and_fallbacks(void)
{
	struct obr_aws_config cfg;
	char err[200];
	static const char *const vars[] = { "AWS_DEFAULT_REGION", "us-east-2", "LOCAL_ENDPOINT", "http://local:3",
		                            "AWS_EC2_METADATA_DISABLED", "false", NULL };
	CHECK_INT_EQ(load(&cfg, vars, err, sizeof(err)), 0);
	CHECK_STR_EQ(cfg.region, "us-east-2");
	CHECK_STR_EQ(cfg.endpoint_sqs, "http://local:3");
	CHECK_STR_EQ(cfg.endpoint_sns, "http://local:3");
	CHECK_STR_EQ(cfg.endpoint_sts, NULL); /* LOCAL_ENDPOINT is the crate's, for SQS/SNS only */
	CHECK_STR_EQ(cfg.imds_endpoint, "http://169.254.169.254");
	CHECK(!cfg.imds_disabled);
	obr_aws_config_clear(&cfg);

	static const char *const v6[] = { "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", "IPv6", NULL };
	CHECK_INT_EQ(load(&cfg, v6, err, sizeof(err)), 0);
	CHECK_STR_EQ(cfg.imds_endpoint, "http://[fd00:ec2::254]");
	obr_aws_config_clear(&cfg);
}

static void test_config_rejects_bad_endpoints(void)
{
	struct obr_aws_config cfg;
	char err[200];
	static const char *const a[] = { "AWS_ENDPOINT_URL_SNS", "ftp://x", NULL };
	CHECK_INT_EQ(load(&cfg, a, err, sizeof(err)), -1);
	CHECK_STR_EQ(err, "AWS_ENDPOINT_URL_SNS must be an http:// or https:// URL");
	static const char *const b[] = { "AWS_EC2_METADATA_SERVICE_ENDPOINT", "169.254.169.254", NULL };
	CHECK_INT_EQ(load(&cfg, b, err, sizeof(err)), -1);
	CHECK_STR_EQ(err, "AWS_EC2_METADATA_SERVICE_ENDPOINT must be an http:// or https:// URL");
	static const char *const c[] = { "LOCAL_ENDPOINT", "http://has space", NULL };
	CHECK_INT_EQ(load(&cfg, c, err, sizeof(err)), -1);
	CHECK_STR_EQ(err, "LOCAL_ENDPOINT must be an http:// or https:// URL");
}

/* ---- regions, FIFO, endpoints ---- */

static int queue_region(const char *url, const char *expected)
{
	char r[OBR_AWS_REGION_MAX];
	bool found = obr_aws_region_from_queue_url(url, r, sizeof(r));
	if (!expected)
		return !found;
	return found && !strcmp(r, expected);
}

static void test_region_from_queue_url(void)
{
	CHECK(queue_region("https://sqs.eu-west-1.amazonaws.com/123456789012/q", "eu-west-1"));
	CHECK(queue_region("https://SQS.AP-Southeast-2.amazonaws.com/1/q", "ap-southeast-2"));
	CHECK(queue_region("https://sqs.cn-north-1.amazonaws.com.cn/1/q", "cn-north-1"));
	CHECK(queue_region("https://sqs.us-gov-west-1.amazonaws.com/1/q", "us-gov-west-1"));
	CHECK(queue_region("https://queue.amazonaws.com/1/q", "us-east-1"));
	CHECK(queue_region("https://us-west-2.queue.amazonaws.com/1/q", "us-west-2"));
	CHECK(queue_region("https://vpce-0abc-xyz.sqs.eu-central-1.vpce.amazonaws.com/1/q", "eu-central-1"));
	CHECK(queue_region("http://sqs.us-east-1.localhost:4566/000000000000/q", "us-east-1"));
	CHECK(queue_region("http://127.0.0.1:4566/000000000000/q", NULL));
	CHECK(queue_region("https://sqs.amazonaws.com/1/q", NULL));
	CHECK(queue_region("https://sqs.notaregion.amazonaws.com/1/q", NULL));
	CHECK(queue_region("not a url", NULL));
}

static int topic_region(const char *arn, const char *expected)
{
	char r[OBR_AWS_REGION_MAX];
	bool found = obr_aws_region_from_topic_arn(arn, r, sizeof(r));
	if (!expected)
		return !found;
	return found && !strcmp(r, expected);
}

static void test_region_from_topic_arn(void)
{
	CHECK(topic_region("arn:aws:sns:eu-central-1:123456789012:events", "eu-central-1"));
	CHECK(topic_region("arn:aws-cn:sns:cn-northwest-1:1:t.fifo", "cn-northwest-1"));
	CHECK(topic_region("arn:aws:sqs:eu-central-1:1:q", NULL));
	CHECK(topic_region("arn:aws:sns::1:t", NULL));
	CHECK(topic_region("arn:aws:sns:eu-central-1:1", NULL));
	CHECK(topic_region("xarn:aws:sns:eu-central-1:1:t", NULL));
}

static void test_target_region_precedence(void)
{
	struct obr_aws_config cfg = { 0 };
	char r[OBR_AWS_REGION_MAX];
	char env_region[] = "eu-north-1", local[] = "sa-east-1";
	const char *url = "https://sqs.eu-west-1.amazonaws.com/1/q";
	CHECK(obr_aws_target_region(&cfg, OBR_DEST_SQS, url, r, sizeof(r)));
	CHECK_STR_EQ(r, "eu-west-1");
	cfg.local_region = local;
	CHECK(obr_aws_target_region(&cfg, OBR_DEST_SQS, "http://127.0.0.1:1/q", r, sizeof(r)));
	CHECK_STR_EQ(r, "sa-east-1");
	CHECK(obr_aws_target_region(&cfg, OBR_DEST_SNS, "arn:aws:sns:us-west-1:1:t", r, sizeof(r)));
	CHECK_STR_EQ(r, "us-west-1");
	cfg.region = env_region;
	CHECK(obr_aws_target_region(&cfg, OBR_DEST_SQS, url, r, sizeof(r)));
	CHECK_STR_EQ(r, "eu-north-1");
	cfg.region = NULL;
	cfg.local_region = NULL;
	CHECK(!obr_aws_target_region(&cfg, OBR_DEST_SQS, "http://127.0.0.1:1/q", r, sizeof(r)));
}

static void test_fifo_detection(void)
{
	CHECK(obr_aws_target_is_fifo(OBR_DEST_SQS, "https://sqs.eu-west-1.amazonaws.com/1/orders.fifo"));
	CHECK(obr_aws_target_is_fifo(OBR_DEST_SQS, "https://sqs.eu-west-1.amazonaws.com/1/orders.fifo/"));
	CHECK(!obr_aws_target_is_fifo(OBR_DEST_SQS, "https://sqs.eu-west-1.amazonaws.com/1/orders"));
	CHECK(!obr_aws_target_is_fifo(OBR_DEST_SQS, "https://sqs.eu-west-1.amazonaws.com/1/fifo"));
	CHECK(obr_aws_target_is_fifo(OBR_DEST_SNS, "arn:aws:sns:eu-west-1:1:events.fifo"));
	CHECK(!obr_aws_target_is_fifo(OBR_DEST_SNS, "arn:aws:sns:eu-west-1:1:events"));
	CHECK(!obr_aws_target_is_fifo(OBR_DEST_SNS, "arn:aws:sns:eu-west-1:1:fifo"));
}

static void test_request_urls(void)
{
	struct obr_aws_config cfg = { 0 };
	char url[256];
	CHECK_INT_EQ(obr_aws_request_url(&cfg, OBR_DEST_SQS, "https://sqs.eu-west-1.amazonaws.com/1/q", "eu-west-1", url,
	                                 sizeof(url)), 0);
	CHECK_STR_EQ(url, "https://sqs.eu-west-1.amazonaws.com/");
	CHECK_INT_EQ(obr_aws_request_url(&cfg, OBR_DEST_SQS, "http://sqs.us-east-1.localhost:4566/0/q", "us-east-1", url,
	                                 sizeof(url)), 0);
	CHECK_STR_EQ(url, "http://sqs.us-east-1.localhost:4566/");
	CHECK_INT_EQ(obr_aws_request_url(&cfg, OBR_DEST_SQS, "https://us-west-2.queue.amazonaws.com/1/q", "us-west-2",
	                                 url, sizeof(url)), 0);
	CHECK_STR_EQ(url, "https://sqs.us-west-2.amazonaws.com/");
	CHECK_INT_EQ(obr_aws_request_url(&cfg, OBR_DEST_SNS, "arn:aws:sns:eu-west-1:1:t", "eu-west-1", url, sizeof(url)), 0);
	CHECK_STR_EQ(url, "https://sns.eu-west-1.amazonaws.com/");
	CHECK_INT_EQ(obr_aws_request_url(&cfg, OBR_DEST_SNS, "arn:aws-cn:sns:cn-north-1:1:t", "cn-north-1", url,
	                                 sizeof(url)), 0);
	CHECK_STR_EQ(url, "https://sns.cn-north-1.amazonaws.com.cn/");

	char sqs_ep[] = "http://127.0.0.1:4566", sns_ep[] = "https://proxy.example/sns/";
	cfg.endpoint_sqs = sqs_ep;
	cfg.endpoint_sns = sns_ep;
	CHECK_INT_EQ(obr_aws_request_url(&cfg, OBR_DEST_SQS, "https://sqs.eu-west-1.amazonaws.com/1/q", "eu-west-1", url,
	                                 sizeof(url)), 0);
	CHECK_STR_EQ(url, "http://127.0.0.1:4566/");
	CHECK_INT_EQ(obr_aws_request_url(&cfg, OBR_DEST_SNS, "arn:aws:sns:eu-west-1:1:t", "eu-west-1", url, sizeof(url)), 0);
	CHECK_STR_EQ(url, "https://proxy.example/sns/");
}

static void test_sts_url(void)
{
	struct obr_aws_config cfg = { 0 };
	char url[256], region[] = "eu-west-3", ep[] = "http://127.0.0.1:5";
	CHECK_INT_EQ(obr_aws_sts_url(&cfg, url, sizeof(url)), 0);
	CHECK_STR_EQ(url, "https://sts.amazonaws.com/");
	cfg.region = region;
	CHECK_INT_EQ(obr_aws_sts_url(&cfg, url, sizeof(url)), 0);
	CHECK_STR_EQ(url, "https://sts.eu-west-3.amazonaws.com/");
	cfg.endpoint_sts = ep;
	CHECK_INT_EQ(obr_aws_sts_url(&cfg, url, sizeof(url)), 0);
	CHECK_STR_EQ(url, "http://127.0.0.1:5/");
}

/* ---- messages ---- */

static struct obr_header hdrs[12];
static char names[12][16], values[12][16];

static struct obr_aws_entry entry(const char *body, int nattrs)
{
	for (int i = 0; i < nattrs && i < 12; i++) {
		snprintf(names[i], sizeof(names[i]), "h%d", i);
		snprintf(values[i], sizeof(values[i]), "v%d", i);
		hdrs[i].name = names[i];
		hdrs[i].value = values[i];
	}
	return (struct obr_aws_entry){ body, strlen(body), "0190f5a2-7c1e-7a55-b3a5-3a9c1f0c2e11",
		                       "0190f5a2-7c1e-7a55-b3a5-000000000001", hdrs, nattrs };
}

static void test_entry_size(void)
{
	struct obr_aws_entry e = entry("hello", 2);
	/* body 5 + "x-idempotent-key" 16 + "String" 6 + key 36 + 2 * ("hN" 2 + 6 + "vN" 2) */
	CHECK_INT_EQ(obr_aws_entry_size(&e), 5 + 16 + 6 + 36 + 2 * 10);
}

static void test_entry_check_attributes(void)
{
	char err[OBR_AWS_ERROR_MAX];
	size_t size = 0;
	struct obr_aws_entry e = entry("x", 9);
	CHECK_INT_EQ(obr_aws_entry_check(OBR_DEST_SQS, &e, &size, err, sizeof(err)), 0);
	CHECK_INT_EQ(size, obr_aws_entry_size(&e));
	e = entry("x", 10);
	CHECK_INT_EQ(obr_aws_entry_check(OBR_DEST_SQS, &e, &size, err, sizeof(err)), -1);
	CHECK_STR_EQ(err, "SQS allows at most 10 message attributes (x-idempotent-key and 9 headers); the row has 10 headers");
	CHECK_INT_EQ(obr_aws_entry_check(OBR_DEST_SNS, &e, &size, err, sizeof(err)), -1);
	CHECK(strstr(err, "SNS allows at most 10 message attributes") == err);

	static const char *const bad_names[] = { "AWS.x", "amazon.y", ".a", "a.", "a..b", "a b", "x!", "", NULL };
	for (const char *const *n = bad_names; *n; n++) {
		e = entry("x", 1);
		char name[32];
		snprintf(name, sizeof(name), "%s", *n);
		hdrs[0].name = name;
		CHECK_INT_EQ(obr_aws_entry_check(OBR_DEST_SQS, &e, &size, err, sizeof(err)), -1);
		CHECK(strstr(err, "is not a valid SQS message attribute name") != NULL);
	}
	e = entry("x", 1);
	char ok_name[] = "Content_Type-v1.2";
	hdrs[0].name = ok_name;
	CHECK_INT_EQ(obr_aws_entry_check(OBR_DEST_SQS, &e, &size, err, sizeof(err)), 0);

	char empty[] = "";
	hdrs[0].value = empty;
	CHECK_INT_EQ(obr_aws_entry_check(OBR_DEST_SQS, &e, &size, err, sizeof(err)), -1);
	CHECK_STR_EQ(err, "header \"Content_Type-v1.2\" is empty: SQS message attributes must have a value");
	char ctl[] = "a\x01z";
	hdrs[0].value = ctl;
	CHECK_INT_EQ(obr_aws_entry_check(OBR_DEST_SNS, &e, &size, err, sizeof(err)), -1);
	CHECK_STR_EQ(err, "header \"Content_Type-v1.2\" has characters SNS does not accept");
}

static void test_entry_check_body_and_size(void)
{
	char err[OBR_AWS_ERROR_MAX];
	size_t size;
	struct obr_aws_entry e = entry("", 0);
	CHECK_INT_EQ(obr_aws_entry_check(OBR_DEST_SQS, &e, &size, err, sizeof(err)), -1);
	CHECK_STR_EQ(err, "SQS cannot carry an empty message: the payload is empty");
	e = entry("bad \xc3\x28 utf8", 0);
	CHECK_INT_EQ(obr_aws_entry_check(OBR_DEST_SNS, &e, &size, err, sizeof(err)), -1);
	CHECK_STR_EQ(err, "SNS messages must be UTF-8 text: the payload is not valid UTF-8");
	/* characters SQS refuses in the body are left to SQS (it answers per entry) */
	e = entry("ctl \x01 char", 0);
	CHECK_INT_EQ(obr_aws_entry_check(OBR_DEST_SQS, &e, &size, err, sizeof(err)), 0);

	/* exactly at the limit passes, one byte more fails */
	size_t overhead = obr_aws_entry_size(&(struct obr_aws_entry){ "", 0, e.key, e.group, NULL, 0 });
	size_t n = OBR_SNS_MAX_MESSAGE - overhead;
	char *big = malloc(OBR_SQS_MAX_MESSAGE + 2);
	CHECK(big != NULL);
	memset(big, 'a', OBR_SQS_MAX_MESSAGE + 1);
	e = (struct obr_aws_entry){ big, n, e.key, e.group, NULL, 0 };
	int rc1 = obr_aws_entry_check(OBR_DEST_SNS, &e, &size, err, sizeof(err));
	e.body_len = n + 1;
	int rc2 = obr_aws_entry_check(OBR_DEST_SNS, &e, &size, err, sizeof(err));
	e.body_len = OBR_SQS_MAX_MESSAGE - overhead;
	int rc3 = obr_aws_entry_check(OBR_DEST_SQS, &e, &size, err, sizeof(err));
	e.body_len++;
	int rc4 = obr_aws_entry_check(OBR_DEST_SQS, &e, &size, err, sizeof(err));
	free(big);
	CHECK_INT_EQ(rc1, 0);
	CHECK_INT_EQ(rc2, -1);
	CHECK_INT_EQ(rc3, 0);
	CHECK_INT_EQ(rc4, -1);
	CHECK(strstr(err, "is over the SQS limit of 1048576 bytes") != NULL);
	CHECK_INT_EQ(obr_aws_max_batch_bytes(OBR_DEST_SQS), 256 * 1024);
	CHECK_INT_EQ(obr_aws_max_batch_bytes(OBR_DEST_SNS), 256 * 1024);
}

/* ---- request bodies ---- */

static void test_sqs_batch_body_standard(void)
{
	struct obr_strbuf b;
	obr_strbuf_init(&b, 1 << 20);
	char n1[] = "content-type", v1[] = "application/json";
	struct obr_header h[] = { { n1, v1 } };
	struct obr_aws_entry e1 = { "{\"a\":\"b\\\\c\"}\n\x01", 0, "k1", "p1", h, 1 };
	e1.body_len = strlen(e1.body);
	struct obr_aws_entry e2 = { "caf\xc3\xa9", 5, "k2", "p2", NULL, 0 };
	const struct obr_aws_entry *es[] = { &e1, &e2 };
	CHECK_INT_EQ(obr_aws_build_sqs_batch(&b, "https://sqs.eu-west-1.amazonaws.com/1/q", false, es, 2), 0);
	CHECK_STR_EQ(b.data,
	             "{\"QueueUrl\":\"https://sqs.eu-west-1.amazonaws.com/1/q\",\"Entries\":["
	             "{\"Id\":\"0\",\"MessageBody\":\"{\\\"a\\\":\\\"b\\\\\\\\c\\\"}\\u000a\\u0001\","
	             "\"MessageAttributes\":{\"x-idempotent-key\":{\"DataType\":\"String\",\"StringValue\":\"k1\"},"
	             "\"content-type\":{\"DataType\":\"String\",\"StringValue\":\"application/json\"}}},"
	             "{\"Id\":\"1\",\"MessageBody\":\"caf\xc3\xa9\","
	             "\"MessageAttributes\":{\"x-idempotent-key\":{\"DataType\":\"String\",\"StringValue\":\"k2\"}}}]}");
	/* and it is JSON whose body decodes to the payload */
	struct json_object *o = json_tokener_parse(b.data);
	CHECK(o != NULL);
	struct json_object *entries, *first, *body;
	CHECK(json_object_object_get_ex(o, "Entries", &entries));
	first = json_object_array_get_idx(entries, 0);
	CHECK(json_object_object_get_ex(first, "MessageBody", &body));
	int same = !strcmp(json_object_get_string(body), "{\"a\":\"b\\\\c\"}\n\x01");
	json_object_put(o);
	obr_strbuf_free(&b);
	CHECK(same);
}

static void test_sqs_batch_body_fifo(void)
{
	struct obr_strbuf b;
	obr_strbuf_init(&b, 1 << 20);
	struct obr_aws_entry e = { "x", 1, "key-1", "group-1", NULL, 0 };
	const struct obr_aws_entry *es[] = { &e };
	CHECK_INT_EQ(obr_aws_build_sqs_batch(&b, "https://h/1/q.fifo", true, es, 1), 0);
	CHECK(strstr(b.data, ",\"MessageGroupId\":\"group-1\",\"MessageDeduplicationId\":\"key-1\"}]}") != NULL);
	obr_strbuf_free(&b);
	/* a body over the buffer's cap fails instead of truncating */
	obr_strbuf_init(&b, 64);
	CHECK_INT_EQ(obr_aws_build_sqs_batch(&b, "https://h/1/q.fifo", true, es, 1), -1);
	obr_strbuf_free(&b);
}

static void test_sns_batch_body(void)
{
	struct obr_strbuf b;
	obr_strbuf_init(&b, 1 << 20);
	char n1[] = "a.b", v1[] = "x&y=z %";
	struct obr_header h[] = { { n1, v1 } };
	struct obr_aws_entry e1 = { "hi there\xc3\xa9~", 0, "k1", "p1", h, 1 };
	e1.body_len = strlen(e1.body);
	struct obr_aws_entry e2 = { "2", 1, "k2", "p2", NULL, 0 };
	const struct obr_aws_entry *es[] = { &e1, &e2 };
	CHECK_INT_EQ(obr_aws_build_sns_batch(&b, "arn:aws:sns:eu-west-1:1:t.fifo", true, es, 2), 0);
	CHECK_STR_EQ(b.data,
	             "Action=PublishBatch&Version=2010-03-31&TopicArn=arn%3Aaws%3Asns%3Aeu-west-1%3A1%3At.fifo"
	             "&PublishBatchRequestEntries.member.1.Id=0"
	             "&PublishBatchRequestEntries.member.1.Message=hi%20there%C3%A9~"
	             "&PublishBatchRequestEntries.member.1.MessageAttributes.entry.1.Name=x-idempotent-key"
	             "&PublishBatchRequestEntries.member.1.MessageAttributes.entry.1.Value.DataType=String"
	             "&PublishBatchRequestEntries.member.1.MessageAttributes.entry.1.Value.StringValue=k1"
	             "&PublishBatchRequestEntries.member.1.MessageAttributes.entry.2.Name=a.b"
	             "&PublishBatchRequestEntries.member.1.MessageAttributes.entry.2.Value.DataType=String"
	             "&PublishBatchRequestEntries.member.1.MessageAttributes.entry.2.Value.StringValue=x%26y%3Dz%20%25"
	             "&PublishBatchRequestEntries.member.1.MessageGroupId=p1"
	             "&PublishBatchRequestEntries.member.1.MessageDeduplicationId=k1"
	             "&PublishBatchRequestEntries.member.2.Id=1"
	             "&PublishBatchRequestEntries.member.2.Message=2"
	             "&PublishBatchRequestEntries.member.2.MessageAttributes.entry.1.Name=x-idempotent-key"
	             "&PublishBatchRequestEntries.member.2.MessageAttributes.entry.1.Value.DataType=String"
	             "&PublishBatchRequestEntries.member.2.MessageAttributes.entry.1.Value.StringValue=k2"
	             "&PublishBatchRequestEntries.member.2.MessageGroupId=p2"
	             "&PublishBatchRequestEntries.member.2.MessageDeduplicationId=k2");
	obr_strbuf_reset(&b);
	CHECK_INT_EQ(obr_aws_build_sns_batch(&b, "arn:aws:sns:eu-west-1:1:t", false, es, 1), 0);
	CHECK(strstr(b.data, "MessageGroupId") == NULL && strstr(b.data, "MessageDeduplicationId") == NULL);
	obr_strbuf_free(&b);
}

/* ---- results ---- */

static void test_parse_sqs_batch(void)
{
	struct obr_aws_entry_result r[4];
	const char *body =
		"{\"Successful\":[{\"Id\":\"0\",\"MessageId\":\"m0\",\"MD5OfMessageBody\":\"x\"},{\"Id\":\"3\"}],"
		"\"Failed\":[{\"Id\":\"1\",\"SenderFault\":true,\"Code\":\"InvalidMessageContents\","
		"\"Message\":\"Invalid characters found.\"},"
		"{\"Id\":\"2\",\"SenderFault\":false,\"Code\":\"InternalError\",\"Message\":\"try again\"},"
		"{\"Id\":\"9\",\"SenderFault\":true,\"Code\":\"X\"}]}";
	CHECK_INT_EQ(obr_aws_parse_sqs_batch(body, strlen(body), 4, r), 0);
	CHECK(r[0].ok && r[3].ok);
	CHECK(!r[1].ok && r[1].permanent);
	CHECK_STR_EQ(r[1].error, "SQS InvalidMessageContents: Invalid characters found.");
	CHECK_STR_EQ(r[1].code, "InvalidMessageContents");
	CHECK(!r[2].ok && !r[2].permanent);
	CHECK_STR_EQ(r[2].error, "SQS InternalError: try again");
}

static void test_parse_sqs_batch_classification(void)
{
	struct obr_aws_entry_result r[3];
	/* throttling is retried even when flagged as the sender's fault; an unknown code with
	 * SenderFault true is permanent; a missing entry is a retryable failure */
	const char *body = "{\"Failed\":[{\"Id\":\"0\",\"SenderFault\":true,\"Code\":\"ThrottlingException\"},"
	                   "{\"Id\":\"1\",\"SenderFault\":true,\"Code\":\"SomethingNew\",\"Message\":\"m\"}]}";
	CHECK_INT_EQ(obr_aws_parse_sqs_batch(body, strlen(body), 3, r), 0);
	CHECK(!r[0].ok && !r[0].permanent);
	CHECK_STR_EQ(r[0].error, "SQS ThrottlingException");
	CHECK(!r[1].ok && r[1].permanent);
	CHECK(!r[2].ok && !r[2].permanent);
	CHECK_STR_EQ(r[2].error, "SQS answered without a result for this message");
}

static void test_parse_sqs_batch_rejects_non_results(void)
{
	struct obr_aws_entry_result r[1];
	const char *a = "{\"__type\":\"com.amazonaws.sqs#QueueDoesNotExist\",\"message\":\"x\"}";
	const char *b = "<html>proxy</html>";
	const char *c = "{\"Successful\":[]} trailing";
	const char *d = "{\"Successful\":[{\"Id\":\"0\"}";
	const char *e = "{}";
	CHECK_INT_EQ(obr_aws_parse_sqs_batch(a, strlen(a), 1, r), -1);
	CHECK_INT_EQ(obr_aws_parse_sqs_batch(b, strlen(b), 1, r), -1);
	CHECK_INT_EQ(obr_aws_parse_sqs_batch(c, strlen(c), 1, r), -1);
	CHECK_INT_EQ(obr_aws_parse_sqs_batch(d, strlen(d), 1, r), -1);
	CHECK_INT_EQ(obr_aws_parse_sqs_batch(e, strlen(e), 1, r), -1);
}

static void test_parse_sns_batch(void)
{
	struct obr_aws_entry_result r[4];
	const char *body =
		"<?xml version=\"1.0\"?>\n<PublishBatchResponse xmlns=\"http://sns.amazonaws.com/doc/2010-03-31/\">\n"
		"  <PublishBatchResult>\n    <Successful>\n"
		"      <member><Id>0</Id><MessageId>a</MessageId></member>\n"
		"      <member>\n <Id> 2 </Id><MessageId>c</MessageId><SequenceNumber>1</SequenceNumber></member>\n"
		"    </Successful>\n    <Failed>\n"
		"      <member><Id>1</Id><Code>InvalidParameter</Code><Message>Message &lt;too&gt; long &amp; &#233;"
		"</Message><SenderFault>true</SenderFault></member>\n"
		"      <member><Id>3</Id><Code>Throttling</Code><SenderFault>false</SenderFault></member>\n"
		"    </Failed>\n  </PublishBatchResult>\n"
		"  <ResponseMetadata><RequestId>r</RequestId></ResponseMetadata>\n</PublishBatchResponse>";
	CHECK_INT_EQ(obr_aws_parse_sns_batch(body, strlen(body), 4, r), 0);
	CHECK(r[0].ok && r[2].ok);
	CHECK(!r[1].ok && r[1].permanent);
	CHECK_STR_EQ(r[1].error, "SNS InvalidParameter: Message <too> long & \xc3\xa9");
	CHECK(!r[3].ok && !r[3].permanent);
	CHECK_STR_EQ(r[3].error, "SNS Throttling");

	const char *empty = "<PublishBatchResponse><PublishBatchResult><Successful/><Failed/></PublishBatchResult>"
	                    "</PublishBatchResponse>";
	CHECK_INT_EQ(obr_aws_parse_sns_batch(empty, strlen(empty), 1, r), 0);
	CHECK(!r[0].ok && !r[0].permanent);
	const char *err = "<ErrorResponse><Error><Code>NotFound</Code></Error></ErrorResponse>";
	CHECK_INT_EQ(obr_aws_parse_sns_batch(err, strlen(err), 1, r), -1);
	/* cut short: bounded, no result */
	CHECK_INT_EQ(obr_aws_parse_sns_batch(body, 120, 4, r), -1);
}

static void test_request_failures(void)
{
	struct obr_aws_entry_result r;
	obr_aws_request_failure(OBR_DEST_SQS, 0, NULL, 0, "Couldn't connect to server", &r);
	CHECK_STR_EQ(r.error, "SQS request failed: Couldn't connect to server");
	CHECK(!r.ok && !r.permanent);

	const char *q = "{\"__type\":\"com.amazonaws.sqs#QueueDoesNotExist\",\"message\":\"The specified queue does not exist.\"}";
	obr_aws_request_failure(OBR_DEST_SQS, 400, q, strlen(q), "HTTP 400", &r);
	CHECK_STR_EQ(r.error, "SQS QueueDoesNotExist: The specified queue does not exist.");
	CHECK(r.permanent);

	const char *t = "{\"__type\":\"com.amazon.coral.availability#ThrottlingException\",\"Message\":\"Rate exceeded\"}";
	obr_aws_request_failure(OBR_DEST_SQS, 400, t, strlen(t), "", &r);
	CHECK_STR_EQ(r.error, "SQS ThrottlingException: Rate exceeded");
	CHECK(!r.permanent);

	const char *sig = "{\"__type\":\"com.amazon.coral.service#InvalidSignatureException\",\"message\":\"bad sig\"}";
	obr_aws_request_failure(OBR_DEST_SQS, 400, sig, strlen(sig), "", &r);
	CHECK(!r.permanent);
	CHECK(obr_aws_code_is_credential(r.code));

	const char *x = "<ErrorResponse xmlns=\"x\"><Error><Type>Sender</Type><Code>AuthorizationError</Code>"
	                "<Message>User is not authorized</Message></Error><RequestId>1</RequestId></ErrorResponse>";
	obr_aws_request_failure(OBR_DEST_SNS, 403, x, strlen(x), "", &r);
	CHECK_STR_EQ(r.error, "SNS AuthorizationError: User is not authorized");
	CHECK(!r.permanent); /* IAM changes take a while: retried until the failure limit */

	const char *h = "<html>\r\n<body>Service Unavailable</body></html>";
	obr_aws_request_failure(OBR_DEST_SNS, 503, h, strlen(h), "", &r);
	CHECK_STR_EQ(r.error, "SNS HTTP 503: <html>  <body>Service Unavailable</body></html>");
	CHECK(!r.permanent);
	obr_aws_request_failure(OBR_DEST_SQS, 413, "", 0, "", &r);
	CHECK_STR_EQ(r.error, "SQS HTTP 413");
	CHECK(r.permanent);
}

static void test_error_codes(void)
{
	CHECK(obr_aws_code_is_permanent("AWS.SimpleQueueService.NonExistentQueue"));
	CHECK(obr_aws_code_is_permanent("InvalidParameterValue"));
	CHECK(!obr_aws_code_is_permanent("ServiceUnavailable"));
	CHECK(!obr_aws_code_is_permanent("ExpiredToken"));
	CHECK(!obr_aws_code_is_permanent(NULL));
	CHECK(obr_aws_code_is_credential("ExpiredToken"));
	CHECK(obr_aws_code_is_credential("InvalidClientTokenId"));
	CHECK(obr_aws_code_is_credential("SignatureDoesNotMatch"));
	CHECK(!obr_aws_code_is_credential("AccessDenied"));
}

/* IAM and KMS changes propagate slowly: permissions and key errors are retried (normal
 * backoff) until the failure limit, whatever the fault says. */
static void test_permission_and_key_errors_retried(void)
{
	static const char *const codes[] = { "AccessDenied", "AccessDeniedException", "AuthorizationError",
		                             "KMS.DisabledException", "KMS.AccessDeniedException", "KMS.NotFoundException",
		                             "KmsAccessDenied", "KMSInvalidStateException", NULL };
	for (const char *const *c = codes; *c; c++) {
		CHECK(!obr_aws_code_is_permanent(*c));
		char body[300];
		struct obr_aws_entry_result r[1];
		snprintf(body, sizeof(body), "{\"Failed\":[{\"Id\":\"0\",\"SenderFault\":true,\"Code\":\"%s\"}]}", *c);
		CHECK_INT_EQ(obr_aws_parse_sqs_batch(body, strlen(body), 1, r), 0);
		CHECK(!r[0].ok && !r[0].permanent);
		snprintf(body, sizeof(body), "{\"__type\":\"com.amazonaws.sqs#%s\",\"message\":\"no\"}", *c);
		obr_aws_request_failure(OBR_DEST_SQS, 400, body, strlen(body), "", &r[0]);
		CHECK(!r[0].permanent);
	}
	struct obr_aws_entry_result r[1];
	const char *b = "{\"Failed\":[{\"Id\":\"0\",\"SenderFault\":true,\"Code\":\"InvalidMessageContents\"}]}";
	CHECK_INT_EQ(obr_aws_parse_sqs_batch(b, strlen(b), 1, r), 0);
	CHECK(r[0].permanent); /* a message's own fault still parks it */
}

/* A batch refused as a whole may be one entry's fault (then each is sent alone) only for a
 * client error that is not about throttling, credentials, permissions or the target. */
static void test_failure_may_be_one_entry(void)
{
	CHECK(obr_aws_failure_may_be_one_entry(400, "InvalidParameterValue"));
	CHECK(obr_aws_failure_may_be_one_entry(400, "InvalidMessageContents"));
	CHECK(obr_aws_failure_may_be_one_entry(413, ""));
	CHECK(obr_aws_failure_may_be_one_entry(400, "SomethingNew"));
	CHECK(!obr_aws_failure_may_be_one_entry(0, ""));          /* no answer */
	CHECK(!obr_aws_failure_may_be_one_entry(500, "InternalError"));
	CHECK(!obr_aws_failure_may_be_one_entry(503, ""));
	CHECK(!obr_aws_failure_may_be_one_entry(429, ""));
	CHECK(!obr_aws_failure_may_be_one_entry(400, "ThrottlingException"));
	CHECK(!obr_aws_failure_may_be_one_entry(403, "InvalidClientTokenId"));
	CHECK(!obr_aws_failure_may_be_one_entry(403, "AccessDenied"));
	CHECK(!obr_aws_failure_may_be_one_entry(400, "KMS.DisabledException"));
	CHECK(!obr_aws_failure_may_be_one_entry(400, "AWS.SimpleQueueService.NonExistentQueue"));
	CHECK(!obr_aws_failure_may_be_one_entry(404, "NotFound"));
}

/* Without an endpoint override signed requests go only to https:// AWS hosts. */
static void test_trusted_url(void)
{
	CHECK(obr_aws_trusted_url("https://sqs.eu-west-1.amazonaws.com/"));
	CHECK(obr_aws_trusted_url("https://sqs.cn-north-1.amazonaws.com.cn/"));
	CHECK(obr_aws_trusted_url("HTTPS://SQS.US-EAST-1.AMAZONAWS.COM/"));
	CHECK(obr_aws_trusted_url("https://vpce-1a2b.sqs.us-east-1.vpce.amazonaws.com/"));
	CHECK(obr_aws_trusted_url("https://sqs.eu-west-1.amazonaws.com:443/"));
	CHECK(!obr_aws_trusted_url("http://sqs.eu-west-1.amazonaws.com/"));       /* clear text */
	CHECK(!obr_aws_trusted_url("https://127.0.0.1:4566/"));
	CHECK(!obr_aws_trusted_url("https://evil.example/"));
	CHECK(!obr_aws_trusted_url("https://amazonaws.com/"));                    /* no bare domain */
	CHECK(!obr_aws_trusted_url("https://evilamazonaws.com/"));
	CHECK(!obr_aws_trusted_url("https://sqs.amazonaws.com.evil.example/"));
	CHECK(!obr_aws_trusted_url("https://evil.example@sqs.us-east-1.amazonaws.com/")); /* userinfo */
	CHECK(!obr_aws_trusted_url("https://sqs.us-east-1.amazonaws.com\\@evil.example/"));
	CHECK(!obr_aws_trusted_url("https://[::1]/"));

	/* what a row's queue URL becomes without an override: its own host */
	struct obr_aws_config cfg;
	char err[200], url[300];
	static const char *const none[] = { NULL };
	CHECK_INT_EQ(load(&cfg, none, err, sizeof(err)), 0);
	CHECK_INT_EQ(obr_aws_request_url(&cfg, OBR_DEST_SQS, "http://127.0.0.1:9/000000000000/q", "us-east-1", url,
	                                 sizeof(url)), 0);
	CHECK(!obr_aws_trusted_url(url));
	CHECK_INT_EQ(obr_aws_request_url(&cfg, OBR_DEST_SQS, "https://sqs.eu-west-1.amazonaws.com/1/q", "eu-west-1", url,
	                                 sizeof(url)), 0);
	CHECK(obr_aws_trusted_url(url));
	CHECK_INT_EQ(obr_aws_request_url(&cfg, OBR_DEST_SNS, "arn:aws:sns:eu-west-1:1:t", "eu-west-1", url, sizeof(url)), 0);
	CHECK(obr_aws_trusted_url(url));
	obr_aws_config_clear(&cfg);
}

/* ---- XML and encoders ---- */

static void test_xml_scanner(void)
{
	const char *c;
	size_t n, end;
	const char *doc = "<a><Codes>no</Codes><Code attr=\"1\">X&amp;Y</Code><Empty/><Code>second</Code></a>";
	CHECK(obr_xml_element(doc, strlen(doc), "Code", &c, &n, &end));
	CHECK_INT_EQ(n, 7);
	CHECK(!strncmp(c, "X&amp;Y", n));
	CHECK(obr_xml_element(doc + end, strlen(doc) - end, "Code", &c, &n, &end));
	CHECK(!strncmp(c, "second", n));
	CHECK(obr_xml_element(doc, strlen(doc), "Empty", &c, &n, &end));
	CHECK_INT_EQ(n, 0);
	CHECK(!obr_xml_element(doc, strlen(doc), "Missing", &c, &n, &end));
	CHECK(!obr_xml_element("<Code>open", 10, "Code", &c, &n, &end));
	CHECK(!obr_xml_element("<Code", 5, "Code", &c, &n, &end));

	char out[64];
	CHECK(obr_xml_text(doc, strlen(doc), "Code", out, sizeof(out)));
	CHECK_STR_EQ(out, "X&Y");
	const char *ents = "&lt;&gt;&quot;&apos;&#65;&#x263A;&bogus;&#xD800;<![CDATA[<raw>&amp;]]>";
	obr_xml_unescape(ents, strlen(ents), out, sizeof(out));
	CHECK_STR_EQ(out, "<>\"'A\xe2\x98\xba&bogus;&#xD800;<raw>&amp;");
	/* bounded by the output buffer */
	char small[4];
	CHECK_INT_EQ(obr_xml_unescape("abcdefgh", 8, small, sizeof(small)), 3);
	CHECK_STR_EQ(small, "abc");
}

static void test_utf8_and_characters(void)
{
	const char *ok = "plain \xc3\xa9 \xe2\x98\x83 \xf0\x9f\x9a\x80";
	CHECK(obr_utf8_valid(ok, strlen(ok)));
	CHECK(!obr_utf8_valid("\xc0\xaf", 2));           /* overlong */
	CHECK(!obr_utf8_valid("\xed\xa0\x80", 3));       /* surrogate */
	CHECK(!obr_utf8_valid("\xf4\x90\x80\x80", 4));   /* > U+10FFFF */
	CHECK(!obr_utf8_valid("\xe2\x98", 2));           /* cut */
	const char *chars = "\t\n\r ok \xf0\x9f\x9a\x80 \xef\xbf\xbd";
	CHECK(obr_aws_chars_valid(chars, strlen(chars)));
	CHECK(!obr_aws_chars_valid("\x01", 1));
	CHECK(!obr_aws_chars_valid("\xef\xbf\xbf", 3)); /* U+FFFF */
}

static void test_encoders(void)
{
	struct obr_strbuf b;
	obr_strbuf_init(&b, 1024);
	obr_json_string(&b, "a\"b\\c\x1f\x7f\xc3\xa9", 9);
	CHECK_STR_EQ(b.data, "\"a\\\"b\\\\c\\u001f\x7f\xc3\xa9\"");
	obr_strbuf_reset(&b);
	obr_json_string(&b, "with\0nul", 8);
	CHECK_STR_EQ(b.data, "\"with\\u0000nul\"");
	obr_strbuf_reset(&b);
	obr_form_encode(&b, "AZaz09-_.~ +/=&%\xc3\xa9", 18);
	CHECK_STR_EQ(b.data, "AZaz09-_.~%20%2B%2F%3D%26%25%C3%A9");
	obr_strbuf_free(&b);
}

int main(int argc, char **argv)
{
	static const struct test tests[] = {
		TEST(test_config_precedence),
		TEST(test_config_defaults_and_fallbacks),
		TEST(test_config_rejects_bad_endpoints),
		TEST(test_region_from_queue_url),
		TEST(test_region_from_topic_arn),
		TEST(test_target_region_precedence),
		TEST(test_fifo_detection),
		TEST(test_request_urls),
		TEST(test_sts_url),
		TEST(test_entry_size),
		TEST(test_entry_check_attributes),
		TEST(test_entry_check_body_and_size),
		TEST(test_sqs_batch_body_standard),
		TEST(test_sqs_batch_body_fifo),
		TEST(test_sns_batch_body),
		TEST(test_parse_sqs_batch),
		TEST(test_parse_sqs_batch_classification),
		TEST(test_parse_sqs_batch_rejects_non_results),
		TEST(test_parse_sns_batch),
		TEST(test_request_failures),
		TEST(test_error_codes),
		TEST(test_permission_and_key_errors_retried),
		TEST(test_failure_may_be_one_entry),
		TEST(test_trusted_url),
		TEST(test_xml_scanner),
		TEST(test_utf8_and_characters),
		TEST(test_encoders),
		TEST_END,
	};
	return run_tests(tests, argc, argv);
}
