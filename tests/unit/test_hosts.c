/*
 * test_hosts.c - per-host admission (src/relay/engine/hosts.c): the concurrency limit, the
 * circuit breaker's states (closed, open, probing) and cool-downs, host names from URLs, and
 * the bound on the table (host names come from rows).
 */
#include "engine/hosts.h"
#include "harness.h"

#include <stdio.h>
#include <string.h>

static void test_host_of_url(void)
{
	char h[OBR_HOST_NAME_MAX + 1];
	CHECK(obr_host_of_url("https://API.Example.com/hook?x=1", h));
	CHECK_STR_EQ(h, "api.example.com");
	CHECK(obr_host_of_url("http://127.0.0.1:8080", h));
	CHECK_STR_EQ(h, "127.0.0.1:8080");
	CHECK(obr_host_of_url("http://u:p@[::1]:9/x", h));
	CHECK_STR_EQ(h, "[::1]:9");
	CHECK(!obr_host_of_url("arn:aws:sns:eu-west-1:123456789012:t", h));
	CHECK(!obr_host_of_url("http:///path", h));
}

static void test_limit(void)
{
	struct obr_hosts t;
	CHECK(obr_hosts_init(&t, 2, 0) == 0);
	struct obr_host *a = obr_hosts_get(&t, "a:80"), *b = obr_hosts_get(&t, "b:80");
	CHECK(a && b && a != b && obr_hosts_get(&t, "a:80") == a);
	CHECK_INT_EQ(obr_host_admit(&t, a, 0), OBR_HOST_GO);
	obr_host_started(a, false);
	obr_host_started(a, false);
	CHECK_INT_EQ(obr_host_admit(&t, a, 0), OBR_HOST_BUSY);
	CHECK_INT_EQ(obr_host_admit(&t, b, 0), OBR_HOST_GO); /* another host is not held up */
	/* no breaker: failures never open it */
	for (int i = 0; i < 100; i++) {
		obr_host_started(b, false);
		CHECK_INT_EQ(obr_host_finished(&t, b, false, true, 0), OBR_HOST_SAME);
	}
	CHECK_INT_EQ(obr_host_admit(&t, b, 0), OBR_HOST_GO);
	CHECK_INT_EQ(obr_host_finished(&t, a, false, false, 0), OBR_HOST_SAME);
	CHECK_INT_EQ(obr_host_admit(&t, a, 0), OBR_HOST_GO);
	obr_hosts_free(&t);
}

static void test_circuit(void)
{
	struct obr_hosts t;
	CHECK(obr_hosts_init(&t, 0, 3) == 0);
	struct obr_host *h = obr_hosts_get(&t, "sick:443");
	int64_t now = 1000;
	/* a 4xx between failures shows the host alive: the count starts over */
	for (int i = 0; i < 2; i++) {
		obr_host_started(h, false);
		CHECK_INT_EQ(obr_host_finished(&t, h, false, true, now), OBR_HOST_SAME);
	}
	obr_host_started(h, false);
	CHECK_INT_EQ(obr_host_finished(&t, h, false, false, now), OBR_HOST_SAME);
	for (int i = 0; i < 2; i++) {
		obr_host_started(h, false);
		CHECK_INT_EQ(obr_host_finished(&t, h, false, true, now), OBR_HOST_SAME);
	}
	/* three in a row: open for the first cool-down */
	obr_host_started(h, false);
	obr_host_started(h, false); /* another one still running */
	CHECK_INT_EQ(obr_host_finished(&t, h, false, true, now), OBR_HOST_OPENED);
	CHECK_INT_EQ(obr_hosts_open_count(&t), 1);
	CHECK_INT_EQ(obr_host_admit(&t, h, now), OBR_HOST_OPEN);
	CHECK_INT_EQ(obr_host_wait_ms(h, now), OBR_CIRCUIT_COOLDOWN_MIN_MS);
	CHECK_INT_EQ(obr_hosts_next_change(&t, now), now + OBR_CIRCUIT_COOLDOWN_MIN_MS);
	/* a request started before it opened succeeds: only a probe closes it */
	CHECK_INT_EQ(obr_host_finished(&t, h, false, false, now + 10), OBR_HOST_SAME);
	CHECK_INT_EQ(obr_host_admit(&t, h, now + 10), OBR_HOST_OPEN);
	/* cool-down over: one probe, the others keep waiting */
	now += OBR_CIRCUIT_COOLDOWN_MIN_MS;
	CHECK_INT_EQ(obr_host_admit(&t, h, now), OBR_HOST_PROBE);
	obr_host_started(h, true);
	CHECK_INT_EQ(obr_host_admit(&t, h, now), OBR_HOST_OPEN);
	CHECK(obr_host_wait_ms(h, now) >= 1);
	/* the probe fails: open again for twice as long, and again */
	CHECK_INT_EQ(obr_host_finished(&t, h, true, true, now), OBR_HOST_SAME);
	CHECK_INT_EQ(obr_host_admit(&t, h, now + 2 * OBR_CIRCUIT_COOLDOWN_MIN_MS - 1), OBR_HOST_OPEN);
	now += 2 * OBR_CIRCUIT_COOLDOWN_MIN_MS;
	int64_t want = 4 * OBR_CIRCUIT_COOLDOWN_MIN_MS;
	for (int i = 0; i < 20; i++) {
		CHECK_INT_EQ(obr_host_admit(&t, h, now), OBR_HOST_PROBE);
		obr_host_started(h, true);
		obr_host_finished(&t, h, true, true, now);
		CHECK_INT_EQ(obr_host_wait_ms(h, now), want);
		now += want;
		want = want * 2 > OBR_CIRCUIT_COOLDOWN_MAX_MS ? OBR_CIRCUIT_COOLDOWN_MAX_MS : want * 2;
	}
	/* the probe succeeds: closed, and the next opening starts from the first cool-down */
	CHECK_INT_EQ(obr_host_admit(&t, h, now), OBR_HOST_PROBE);
	obr_host_started(h, true);
	CHECK_INT_EQ(obr_host_finished(&t, h, true, false, now), OBR_HOST_CLOSED);
	CHECK_INT_EQ(obr_host_admit(&t, h, now), OBR_HOST_GO);
	CHECK_INT_EQ(obr_hosts_open_count(&t), 0);
	CHECK_INT_EQ(h->in_flight, 0);
	for (int i = 0; i < 3; i++) {
		obr_host_started(h, false);
		obr_host_finished(&t, h, false, true, now);
	}
	CHECK_INT_EQ(obr_host_wait_ms(h, now), OBR_CIRCUIT_COOLDOWN_MIN_MS);
	CHECK_INT_EQ(h->opened, 2);
	obr_hosts_free(&t);
}

/* Beyond OBR_HOSTS_MAX entries idle healthy hosts are forgotten; hosts in use or sick are kept,
 * and a host that finds no room gets no entry (admitted without limits). */
static void test_bounded(void)
{
	struct obr_hosts t;
	CHECK(obr_hosts_init(&t, 1, 1) == 0);
	char name[64];
	struct obr_host *busy = obr_hosts_get(&t, "busy:1");
	obr_host_started(busy, false);
	for (int i = 0; i < OBR_HOSTS_MAX * 2; i++) {
		snprintf(name, sizeof(name), "h%d:80", i);
		CHECK(obr_hosts_get(&t, name) != NULL);
	}
	CHECK(t.n <= OBR_HOSTS_MAX);
	CHECK(obr_hosts_get(&t, "busy:1") == busy);
	/* fill the table with sick hosts: then there is no room */
	for (int i = 0; i < OBR_HOSTS_MAX; i++) {
		snprintf(name, sizeof(name), "s%d:80", i);
		struct obr_host *h = obr_hosts_get(&t, name);
		if (!h)
			break;
		obr_host_started(h, false);
		obr_host_finished(&t, h, false, true, 0);
	}
	CHECK(obr_hosts_get(&t, "new:80") == NULL);
	CHECK(t.n <= OBR_HOSTS_MAX);
	obr_hosts_free(&t);
}

int main(int argc, char **argv)
{
	static const struct test tests[] = {
		TEST(test_host_of_url),
		TEST(test_limit),
		TEST(test_circuit),
		TEST(test_bounded),
		TEST_END,
	};
	return run_tests(tests, argc, argv);
}
