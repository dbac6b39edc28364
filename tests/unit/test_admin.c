/*
 * test_admin.c - src/relay/admin/admin.c without a network: the /metrics document built by
 * obr_metrics_format (every family with HELP and TYPE, by-kind counters, the cumulative
 * latency histogram, sampled gauges absent until sampled, a hard size cap).
 */
#include "admin/admin.h"
#include "harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct obr_relay_stats sample_stats(void)
{
	struct obr_relay_stats st;
	memset(&st, 0, sizeof(st));
	st.rows_delivered = 40;
	st.delivered[0] = 42;    /* http */
	st.delivered[1] = 7;     /* sqs */
	st.failed[0] = 5;
	st.failed[2] = 1;        /* sns */
	st.parked[0] = 2;
	st.parked_malformed = 3;
	st.notifications = 11;
	st.scans = 4;
	st.scan_found = 9;
	st.claims = 6;
	st.reconnects = 1;
	st.latency_buckets[0] = 1;
	st.latency_buckets[3] = 2;
	st.latency_buckets[OBR_LATENCY_BUCKETS - 1] = 4;
	st.latency_count = 8;    /* one row slower than the last bound: only in +Inf */
	st.latency_sum = 12.5;
	st.in_flight_requests = 3;
	st.leases_held = 2;
	st.partitions_lingering = 3;
	st.due_rows = -1;
	st.oldest_due_age_s = -1;
	st.notification_queue_usage = -1;
	return st;
}

static char *format(const struct obr_relay_stats *st, bool ready)
{
	struct obr_strbuf b;
	obr_strbuf_init(&b, OBR_METRICS_MAX_BYTES);
	if (obr_metrics_format(st, ready, &b)) {
		obr_strbuf_free(&b);
		return NULL;
	}
	return b.data;
}

/* The value of the sample line "name{labels} VALUE" (exact name and labels), or NULL. */
static const char *value_of(const char *doc, const char *series, char *out, size_t cap)
{
	size_t n = strlen(series);
	for (const char *line = doc; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
		if (!strncmp(line, series, n) && line[n] == ' ') {
			const char *v = line + n + 1;
			size_t len = strcspn(v, "\n");
			snprintf(out, cap, "%.*s", (int)len, v);
			return out;
		}
	}
	return NULL;
}

static void test_counters_by_kind(void)
{
	struct obr_relay_stats st = sample_stats();
	char *doc = format(&st, true);
	char v[64];
	CHECK(doc != NULL);
	CHECK_STR_EQ(value_of(doc, "outbox_relay_delivered_total{kind=\"http\"}", v, sizeof(v)), "42");
	CHECK_STR_EQ(value_of(doc, "outbox_relay_delivered_total{kind=\"sqs\"}", v, sizeof(v)), "7");
	CHECK_STR_EQ(value_of(doc, "outbox_relay_delivered_total{kind=\"sns\"}", v, sizeof(v)), "0");
	CHECK_STR_EQ(value_of(doc, "outbox_relay_failed_total{kind=\"http\"}", v, sizeof(v)), "5");
	CHECK_STR_EQ(value_of(doc, "outbox_relay_failed_total{kind=\"sns\"}", v, sizeof(v)), "1");
	CHECK_STR_EQ(value_of(doc, "outbox_relay_parked_total{kind=\"http\"}", v, sizeof(v)), "2");
	CHECK_STR_EQ(value_of(doc, "outbox_relay_parked_total{kind=\"malformed\"}", v, sizeof(v)), "3");
	CHECK_STR_EQ(value_of(doc, "outbox_relay_rows_delivered_total", v, sizeof(v)), "40");
	CHECK_STR_EQ(value_of(doc, "outbox_relay_notifications_total", v, sizeof(v)), "11");
	CHECK_STR_EQ(value_of(doc, "outbox_relay_polls_total", v, sizeof(v)), "4");
	CHECK_STR_EQ(value_of(doc, "outbox_relay_poll_found_partitions_total", v, sizeof(v)), "9");
	CHECK_STR_EQ(value_of(doc, "outbox_relay_claims_total", v, sizeof(v)), "6");
	CHECK_STR_EQ(value_of(doc, "outbox_relay_reconnects_total", v, sizeof(v)), "1");
	CHECK_STR_EQ(value_of(doc, "outbox_relay_requests_in_flight", v, sizeof(v)), "3");
	CHECK_STR_EQ(value_of(doc, "outbox_relay_leases_held", v, sizeof(v)), "2");
	CHECK_STR_EQ(value_of(doc, "outbox_relay_partitions_lingering", v, sizeof(v)), "3");
	CHECK_STR_EQ(value_of(doc, "outbox_relay_up", v, sizeof(v)), "1");
	CHECK_STR_EQ(value_of(doc, "outbox_relay_ready", v, sizeof(v)), "1");
	const char *info = strstr(doc, "\noutbox_relay_info{version=\"");
	CHECK(info != NULL);
	CHECK(!strncmp(strstr(info, "\"}") , "\"} 1\n", 5));
	free(doc);
}

static void test_not_ready(void)
{
	struct obr_relay_stats st = sample_stats();
	char *doc = format(&st, false);
	char v[64];
	CHECK(doc != NULL);
	CHECK_STR_EQ(value_of(doc, "outbox_relay_ready", v, sizeof(v)), "0");
	free(doc);
}

static void test_histogram_is_cumulative(void)
{
	struct obr_relay_stats st = sample_stats();
	char *doc = format(&st, true);
	char v[64], series[128];
	CHECK(doc != NULL);
	CHECK_STR_EQ(value_of(doc, "outbox_relay_delivery_latency_seconds_bucket{le=\"0.0005\"}", v, sizeof(v)), "1");
	CHECK_STR_EQ(value_of(doc, "outbox_relay_delivery_latency_seconds_bucket{le=\"0.001\"}", v, sizeof(v)), "1");
	CHECK_STR_EQ(value_of(doc, "outbox_relay_delivery_latency_seconds_bucket{le=\"0.005\"}", v, sizeof(v)), "3");
	CHECK_STR_EQ(value_of(doc, "outbox_relay_delivery_latency_seconds_bucket{le=\"1\"}", v, sizeof(v)), "3");
	CHECK_STR_EQ(value_of(doc, "outbox_relay_delivery_latency_seconds_bucket{le=\"60\"}", v, sizeof(v)), "7");
	CHECK_STR_EQ(value_of(doc, "outbox_relay_delivery_latency_seconds_bucket{le=\"+Inf\"}", v, sizeof(v)), "8");
	CHECK_STR_EQ(value_of(doc, "outbox_relay_delivery_latency_seconds_sum", v, sizeof(v)), "12.5");
	CHECK_STR_EQ(value_of(doc, "outbox_relay_delivery_latency_seconds_count", v, sizeof(v)), "8");
	/* one bucket line per bound, in order, never decreasing */
	long last = -1;
	const char *prev = doc;
	for (int i = 0; i < OBR_LATENCY_BUCKETS; i++) {
		char le[40];
		snprintf(le, sizeof(le), "%.6g", obr_latency_bounds[i]);
		snprintf(series, sizeof(series), "outbox_relay_delivery_latency_seconds_bucket{le=\"%s\"}", le);
		const char *at = strstr(doc, series);
		CHECK(at != NULL);
		CHECK(at >= prev);
		prev = at;
		CHECK(value_of(doc, series, v, sizeof(v)) != NULL);
		long n = strtol(v, NULL, 10);
		CHECK(n >= last);
		last = n;
	}
	CHECK(strstr(doc, "# TYPE outbox_relay_delivery_latency_seconds histogram\n") != NULL);
	free(doc);
}

static void test_sampled_gauges_absent_until_sampled(void)
{
	struct obr_relay_stats st = sample_stats();
	char *doc = format(&st, true);
	char v[64];
	CHECK(doc != NULL);
	CHECK(strstr(doc, "outbox_relay_due_rows") == NULL);
	CHECK(strstr(doc, "outbox_relay_oldest_due_age_seconds") == NULL);
	CHECK(strstr(doc, "outbox_relay_notification_queue_usage") == NULL);
	free(doc);

	st.due_rows = 17;
	st.oldest_due_age_s = 2.25;
	st.notification_queue_usage = 0;
	st.sampled_at_unix = 1700000000;
	doc = format(&st, true);
	CHECK(doc != NULL);
	CHECK_STR_EQ(value_of(doc, "outbox_relay_due_rows", v, sizeof(v)), "17");
	CHECK_STR_EQ(value_of(doc, "outbox_relay_oldest_due_age_seconds", v, sizeof(v)), "2.25");
	CHECK_STR_EQ(value_of(doc, "outbox_relay_notification_queue_usage", v, sizeof(v)), "0");
	CHECK_STR_EQ(value_of(doc, "outbox_relay_last_sample_timestamp_seconds", v, sizeof(v)), "1700000000");
	CHECK(strstr(doc, "# TYPE outbox_relay_due_rows gauge\n") != NULL);
	free(doc);
}

/* Per-host series for the hosts in use or sick; host names come from rows: escaped. */
static void test_host_series(void)
{
	struct obr_relay_stats st = sample_stats();
	st.circuits_open = 1;
	st.circuit_deferred = 7;
	char *doc = format(&st, true);
	char v[64];
	CHECK(doc != NULL);
	CHECK_STR_EQ(value_of(doc, "outbox_relay_circuits_open", v, sizeof(v)), "1");
	CHECK_STR_EQ(value_of(doc, "outbox_relay_circuit_deferred_total", v, sizeof(v)), "7");
	CHECK(strstr(doc, "outbox_relay_host_") == NULL); /* no host in use */
	free(doc);
	st.nhosts = 2;
	snprintf(st.hosts[0].name, sizeof(st.hosts[0].name), "sick.example:8443");
	st.hosts[0].failures = 12;
	st.hosts[0].open = true;
	snprintf(st.hosts[1].name, sizeof(st.hosts[1].name), "a\"b\\c");
	st.hosts[1].in_flight = 3;
	doc = format(&st, true);
	CHECK(doc != NULL);
	CHECK_STR_EQ(value_of(doc, "outbox_relay_host_circuit_open{host=\"sick.example:8443\"}", v, sizeof(v)), "1");
	CHECK_STR_EQ(value_of(doc, "outbox_relay_host_failures{host=\"sick.example:8443\"}", v, sizeof(v)), "12");
	CHECK_STR_EQ(value_of(doc, "outbox_relay_host_requests_in_flight{host=\"a\\\"b\\\\c\"}", v, sizeof(v)), "3");
	free(doc);
}

/* Every line is a HELP, a TYPE or a sample of the family last typed; each family is typed once. */
static void test_exposition_format(void)
{
	struct obr_relay_stats st = sample_stats();
	st.due_rows = 1;
	st.oldest_due_age_s = 0.1;
	st.notification_queue_usage = 0.5;
	st.sampled_at_unix = 1700000000;
	char *doc = format(&st, true);
	CHECK(doc != NULL);
	CHECK(doc[strlen(doc) - 1] == '\n');
	char family[128] = "";
	int types = 0, helps = 0, samples = 0;
	for (char *line = doc; *line; line = strchr(line, '\n') + 1) {
		size_t len = strcspn(line, "\n");
		char text[512];
		snprintf(text, sizeof(text), "%.*s", (int)len, line);
		if (!strncmp(text, "# HELP ", 7)) {
			helps++;
			continue;
		}
		if (!strncmp(text, "# TYPE ", 7)) {
			types++;
			char type[32];
			CHECK(sscanf(text + 7, "%127s %31s", family, type) == 2);
			CHECK(!strcmp(type, "counter") || !strcmp(type, "gauge") || !strcmp(type, "histogram"));
			/* each family appears once */
			char needle[160];
			snprintf(needle, sizeof(needle), "# TYPE %s ", family);
			CHECK(strstr(doc, needle) == line);
			continue;
		}
		CHECK(text[0] != '#');
		CHECK(family[0] != '\0');
		CHECK(!strncmp(text, family, strlen(family)));
		CHECK(strchr(text, ' ') != NULL);
		samples++;
	}
	CHECK_INT_EQ(helps, types);
	CHECK_INT_EQ(types, 25); /* listen_selftest_ok and notify_lock_waiters are present (0 here) */
	CHECK(samples > types);
	/* no secrets: the document never names a database */
	CHECK(strstr(doc, "postgres") == NULL);
	free(doc);
}

static void test_size_cap(void)
{
	struct obr_relay_stats st = sample_stats();
	struct obr_strbuf b;
	obr_strbuf_init(&b, 512);
	CHECK_INT_EQ(obr_metrics_format(&st, true, &b), -1);
	CHECK(b.failed);
	obr_strbuf_free(&b);
}

int main(int argc, char **argv)
{
	static const struct test tests[] = {
		TEST(test_counters_by_kind),
		TEST(test_not_ready),
		TEST(test_histogram_is_cumulative),
		TEST(test_sampled_gauges_absent_until_sampled),
		TEST(test_exposition_format),
		TEST(test_host_series),
		TEST(test_size_cap),
		TEST_END,
	};
	return run_tests(tests, argc, argv);
}
