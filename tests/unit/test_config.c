/*
 * test_config.c - the settings table (src/relay/config.c): defaults, precedence, and a clear
 * error naming the setting for every kind of bad value.
 */
#include "config.h"
#include "harness.h"

#include <string.h>

static int load(struct obr_config *cfg, const char *const *envp, int argc, const char *const *argv, char *err)
{
	return obr_config_load(cfg, envp, argc, argv, err, 512);
}

static void test_defaults(void)
{
	const char *env[] = { "DATABASE_URL=postgresql://x/y", "PATH=/bin", NULL };
	struct obr_config cfg;
	char err[512];
	CHECK_INT_EQ(load(&cfg, env, 0, NULL, err), 0);
	CHECK_STR_EQ(cfg.database_url, "postgresql://x/y");
	CHECK_INT_EQ(cfg.mode, OBR_MODE_LISTEN);
	CHECK_INT_EQ(cfg.poll_interval_ms, 30000);
	CHECK_INT_EQ(cfg.lease_ms, 30000);
	CHECK_INT_EQ(cfg.failure_limit, 10);
	CHECK_INT_EQ(cfg.http_timeout_ms, 3000);
	CHECK_INT_EQ(cfg.shutdown_grace_ms, 8000);
	CHECK(!cfg.delete_on_success);
	CHECK_STR_EQ(cfg.channel, "outbox");
	CHECK_STR_EQ(cfg.header_env, NULL);
	obr_config_free(&cfg);
	const char *narrowed[] = { "DATABASE_URL=postgresql://x/y", "OUTBOX_HEADER_ENV=API_TOKEN PARTNER_*", NULL };
	CHECK_INT_EQ(load(&cfg, narrowed, 0, NULL, err), 0);
	CHECK_STR_EQ(cfg.header_env, "API_TOKEN PARTNER_*");
	obr_config_free(&cfg);
}

static void test_poll_mode_default_interval(void)
{
	const char *env[] = { "DATABASE_URL=postgresql:///x", "OUTBOX_MODE=poll", NULL };
	struct obr_config cfg;
	char err[512];
	CHECK_INT_EQ(load(&cfg, env, 0, NULL, err), 0);
	CHECK_INT_EQ(cfg.mode, OBR_MODE_POLL);
	CHECK_INT_EQ(cfg.poll_interval_ms, 1000);
	obr_config_free(&cfg);
}

static void test_flag_beats_environment(void)
{
	const char *env[] = { "DATABASE_URL=postgresql:///x", "OUTBOX_LEASE_MS=5000", "OUTBOX_DELETE_ON_SUCCESS=false", NULL };
	const char *argv[] = { "--lease-ms", "7000", "--delete-on-success", "--database=postgresql://flag", NULL };
	struct obr_config cfg;
	char err[512];
	CHECK_INT_EQ(load(&cfg, env, 4, argv, err), 0);
	CHECK_INT_EQ(cfg.lease_ms, 7000);
	CHECK(cfg.delete_on_success);
	CHECK_STR_EQ(cfg.database_url, "postgresql://flag");
	obr_config_free(&cfg);
}

static void test_bad_values_name_the_setting(void)
{
	static const struct {
		const char *var;
		const char *expect;
	} cases[] = {
		{ "OUTBOX_LEASE_MS=abc", "OUTBOX_LEASE_MS" },
		{ "OUTBOX_LEASE_MS=10", "out of range" },
		{ "OUTBOX_LEASE_MS=", "OUTBOX_LEASE_MS" },
		{ "OUTBOX_LEASE_MS=12ms", "not an integer" },
		{ "OUTBOX_POLL_INTERVAL_MS=49", "OUTBOX_POLL_INTERVAL_MS" },
		{ "OUTBOX_FAILURE_LIMIT=0", "OUTBOX_FAILURE_LIMIT" },
		{ "OUTBOX_FAILURE_LIMIT=99999999999999999999", "OUTBOX_FAILURE_LIMIT" },
		{ "OUTBOX_DELETE_ON_SUCCESS=maybe", "OUTBOX_DELETE_ON_SUCCESS" },
		{ "OUTBOX_MODE=push", "OUTBOX_MODE" },
		{ "OUTBOX_LOG_LEVEL=loud", "OUTBOX_LOG_LEVEL" },
		{ "OUTBOX_CHANNEL=Bad-Name", "OUTBOX_CHANNEL" },
		{ "OUTBOX_RETRY_MAX_MS=10", "OUTBOX_RETRY_MAX_MS" },
		{ "OUTBOX_LEASEMS=1000", "unknown setting OUTBOX_LEASEMS" },
		{ "OUTBOX_HEADER_ENV=API_TOKEN,AWS_*", "invalid value for OUTBOX_HEADER_ENV: AWS_* names the relay's own" },
		{ "OUTBOX_HEADER_ENV=api_token", "invalid value for OUTBOX_HEADER_ENV: \"api_token\"" },
		{ "OUTBOX_HEADER_ENV=", "OUTBOX_HEADER_ENV" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *env[] = { "DATABASE_URL=postgresql:///x", cases[i].var, NULL };
		struct obr_config cfg;
		char err[512] = "";
		int rc = load(&cfg, env, 0, NULL, err);
		if (rc == 0 || !strstr(err, cases[i].expect))
			fprintf(stderr, "case %s: rc=%d err=\"%s\"\n", cases[i].var, rc, err);
		CHECK(rc != 0);
		CHECK(strstr(err, cases[i].expect) != NULL);
	}
}

static void test_bad_flags(void)
{
	const char *env[] = { "DATABASE_URL=postgresql:///x", NULL };
	struct obr_config cfg;
	char err[512];
	const char *unknown[] = { "--lease", "1000", NULL };
	CHECK(load(&cfg, env, 2, unknown, err) != 0);
	CHECK(strstr(err, "unknown option --lease") != NULL);
	const char *missing[] = { "--lease-ms", NULL };
	CHECK(load(&cfg, env, 1, missing, err) != 0);
	CHECK(strstr(err, "needs a value") != NULL);
	const char *stray[] = { "extra", NULL };
	CHECK(load(&cfg, env, 1, stray, err) != 0);
	CHECK(strstr(err, "unexpected argument") != NULL);
}

static void test_durations(void)
{
	static const struct {
		const char *var;
		long long ms;   /* -1: refused */
	} cases[] = {
		{ "OUTBOX_RETENTION=0", 0 }, { "OUTBOX_RETENTION=500ms", 500 }, { "OUTBOX_RETENTION=30s", 30000 },
		{ "OUTBOX_RETENTION=15m", 900000 }, { "OUTBOX_RETENTION=12h", 43200000 },
		{ "OUTBOX_RETENTION=7d", 604800000 }, { "OUTBOX_RETENTION=7", -1 }, { "OUTBOX_RETENTION=7 days", -1 },
		{ "OUTBOX_RETENTION=-1d", -1 }, { "OUTBOX_RETENTION=d", -1 }, { "OUTBOX_RETENTION=99999d", -1 },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *env[] = { "DATABASE_URL=postgresql:///x", cases[i].var, NULL };
		struct obr_config cfg;
		char err[512] = "";
		int rc = load(&cfg, env, 0, NULL, err);
		if (cases[i].ms < 0) {
			if (rc == 0)
				fprintf(stderr, "case %s accepted\n", cases[i].var);
			CHECK(rc != 0);
			CHECK(strstr(err, "OUTBOX_RETENTION") != NULL);
		} else {
			if (rc != 0)
				fprintf(stderr, "case %s: %s\n", cases[i].var, err);
			CHECK_INT_EQ(rc, 0);
			CHECK_INT_EQ(cfg.retention_ms, cases[i].ms);
			obr_config_free(&cfg);
		}
	}
}

static void test_bad_database_url_is_refused_without_quoting_it(void)
{
	const char *bad[] = { "postgresql://u:s3cret%zz@h/db", "host=h password='unterminated", "postgres://[::1/db" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char var[128];
		snprintf(var, sizeof(var), "DATABASE_URL=%s", bad[i]);
		const char *env[] = { var, NULL };
		struct obr_config cfg;
		char err[512] = "";
		CHECK(load(&cfg, env, 0, NULL, err) != 0);
		CHECK(strstr(err, "DATABASE_URL") != NULL);
		CHECK(strstr(err, "s3cret") == NULL);
		CHECK(strstr(err, "unterminated") == NULL);
	}
}

/* OUTBOX_HTTP_PROXY: a proxy URL, never quoted back (it may carry a password). */
static void test_http_proxy(void)
{
	const char *good[] = { "http://proxy:3128", "https://u:p@proxy.example:443", "socks5h://127.0.0.1:1080" };
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		char var[128];
		snprintf(var, sizeof(var), "OUTBOX_HTTP_PROXY=%s", good[i]);
		const char *env[] = { "DATABASE_URL=postgresql:///x", var, NULL };
		struct obr_config cfg;
		char err[512] = "";
		CHECK_INT_EQ(load(&cfg, env, 0, NULL, err), 0);
		CHECK_STR_EQ(cfg.http_proxy, good[i]);
		obr_config_free(&cfg);
	}
	const char *bad[] = { "ftp://u:s3cret@proxy:21", "proxy:3128", "http://", "http://:3128", "http://pro xy:1",
		              "http:///path" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char var[128];
		snprintf(var, sizeof(var), "OUTBOX_HTTP_PROXY=%s", bad[i]);
		const char *env[] = { "DATABASE_URL=postgresql:///x", var, NULL };
		struct obr_config cfg;
		char err[512] = "";
		CHECK(load(&cfg, env, 0, NULL, err) != 0);
		CHECK(strstr(err, "OUTBOX_HTTP_PROXY") != NULL);
		CHECK(strstr(err, "s3cret") == NULL);
	}
	const char *unset[] = { "DATABASE_URL=postgresql:///x", NULL };
	struct obr_config cfg;
	char err[512] = "";
	CHECK_INT_EQ(load(&cfg, unset, 0, NULL, err), 0);
	CHECK(cfg.http_proxy == NULL);
	obr_config_free(&cfg);
}

/* OUTBOX_WEBHOOK_SECRET: whsec_<base64>, one or more; a bad one stops the start, never quoted. */
static void test_webhook_secret(void)
{
	const char *good = "OUTBOX_WEBHOOK_SECRET=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw whsec_c2Vjb25kLXNlY3JldC0yNC1ieXRlcyEh";
	const char *env[] = { "DATABASE_URL=postgresql:///x", good, NULL };
	struct obr_config cfg;
	char err[512] = "";
	CHECK_INT_EQ(load(&cfg, env, 0, NULL, err), 0);
	CHECK_STR_EQ(cfg.webhook_secret, good + strlen("OUTBOX_WEBHOOK_SECRET="));
	obr_config_free(&cfg);
	const char *bad[] = { "", " ", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS!",
		              "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw whsec_MfKQ9r8" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char var[160];
		snprintf(var, sizeof(var), "OUTBOX_WEBHOOK_SECRET=%s", bad[i]);
		const char *env_bad[] = { "DATABASE_URL=postgresql:///x", var, NULL };
		err[0] = '\0';
		CHECK(load(&cfg, env_bad, 0, NULL, err) != 0);
		CHECK(strstr(err, "OUTBOX_WEBHOOK_SECRET") != NULL);
		CHECK(strstr(err, "MfKQ9r8") == NULL);
	}
	/* the flag too */
	const char *argv[] = { "--webhook-secret", "whsec_short" };
	CHECK(load(&cfg, env, 2, argv, err) != 0);
	CHECK(strstr(err, "OUTBOX_WEBHOOK_SECRET") != NULL && strstr(err, "whsec_short") == NULL);
}

static void test_database_required(void)
{
	const char *env[] = { "PATH=/bin", NULL };
	struct obr_config cfg;
	char err[512];
	CHECK(load(&cfg, env, 0, NULL, err) != 0);
	CHECK(strstr(err, "DATABASE_URL") != NULL);
}

int main(int argc, char **argv)
{
	static const struct test tests[] = {
		TEST(test_defaults),
		TEST(test_poll_mode_default_interval),
		TEST(test_flag_beats_environment),
		TEST(test_bad_values_name_the_setting),
		TEST(test_bad_flags),
		TEST(test_durations),
		TEST(test_bad_database_url_is_refused_without_quoting_it),
		TEST(test_database_required),
		TEST(test_http_proxy),
		TEST(test_webhook_secret),
		TEST_END,
	};
	return run_tests(tests, argc, argv);
}
