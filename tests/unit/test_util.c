/*
 * test_util.c - the small modules of src/relay/util: numbers as text (numfmt.c) and the
 * clock helpers (clock.c), backoff with a rate-limited log (backoff.c).
 */
#include "util/backoff.h"
#include "util/clock.h"
#include "util/numfmt.h"
#include "harness.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

static void check_fmt(double v, const char *want)
{
	char buf[32];
	obr_fmt_double(buf, sizeof(buf), v);
	CHECK_STR_EQ(buf, want);
}

static void test_fmt_double(void)
{
	check_fmt(0, "0");
	check_fmt(60, "60");
	check_fmt(-3, "-3");
	check_fmt(0.1, "0.1");
	check_fmt(0.005, "0.005");
	check_fmt(2.5, "2.5");
	check_fmt(1e15, "1e+15");
	check_fmt(NAN, "NaN");
	check_fmt(INFINITY, "+Inf");
	check_fmt(-INFINITY, "-Inf");
	/* the shortest text that reads back exactly, however many digits that takes */
	const double hard[] = { 0.1 + 0.2, 1.0 / 3.0, 123456.789e-12, 5e-324, 1.7976931348623157e308 };
	for (size_t i = 0; i < sizeof(hard) / sizeof(hard[0]); i++) {
		char buf[32];
		obr_fmt_double(buf, sizeof(buf), hard[i]);
		CHECK(strtod(buf, NULL) == hard[i]);
	}
	check_fmt(0.1 + 0.2, "0.30000000000000004");
}

static void test_timeval(void)
{
	static const struct {
		bool ms;              /* obr_timeval_from_ms, else _us */
		int64_t in;
		long sec, usec;
	} cases[] = {
		{ true, 1500, 1, 500000 },
		{ true, 999, 0, 999000 },
		{ true, -5, 0, 0 },                 /* a deadline already past: fire at once */
		{ true, 7LL * 24 * 3600 * 1000, 7L * 24 * 3600, 0 },   /* the largest setting, a week */
		{ false, 2000001, 2, 1 },
		{ false, -1, 0, 0 },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct timeval tv = cases[i].ms ? obr_timeval_from_ms(cases[i].in) : obr_timeval_from_us(cases[i].in);
		CHECK_INT_EQ(tv.tv_sec, cases[i].sec);
		CHECK_INT_EQ(tv.tv_usec, cases[i].usec);
	}
	/* no overflow beyond */
	struct timeval tv = obr_timeval_from_ms(INT64_MAX);
	CHECK(tv.tv_sec > 0 && tv.tv_usec >= 0 && tv.tv_usec < 1000000);
}

static void test_monotonic(void)
{
	int64_t a = obr_mono_us(), ms = obr_mono_ms(), b = obr_mono_us();
	CHECK(a > 0);
	CHECK(b >= a);
	CHECK(ms >= a / 1000 && ms <= b / 1000);
}

/* The pause doubles from min to max, jittered within [next/2, next]; a success starts over. */
static void test_backoff_pauses(void)
{
	struct obr_backoff b;
	obr_backoff_init(&b, 100, 30000);
	CHECK(!obr_backoff_waiting(&b, 0));
	int64_t want = 100, now = 1000;
	for (int i = 0; i < 12; i++) {
		int64_t lo = obr_backoff_failed(&b, now, 0);
		CHECK_INT_EQ(lo, want - want / 2);
		CHECK(obr_backoff_waiting(&b, now + lo - 1));
		CHECK(!obr_backoff_waiting(&b, now + lo));
		want = want * 2 > 30000 ? 30000 : want * 2;
	}
	CHECK_INT_EQ(b.failures, 12);
	/* at max: the jitter spans [max/2, max], never beyond */
	CHECK_INT_EQ(obr_backoff_failed(&b, now, 15001 * 7), 15000);
	CHECK_INT_EQ(obr_backoff_failed(&b, now, 15000), 30000);
	CHECK_INT_EQ(obr_backoff_failed(&b, now, UINT32_MAX), 15000 + (int64_t)(UINT32_MAX % 15001));
	CHECK_INT_EQ(obr_backoff_ok(&b), 15);
	CHECK(!obr_backoff_waiting(&b, now));
	CHECK_INT_EQ(obr_backoff_failed(&b, now, 0), 50);
	CHECK_INT_EQ(obr_backoff_ok(&b), 1);
	CHECK_INT_EQ(obr_backoff_ok(&b), 0);
	/* nonsense limits still give a pause */
	obr_backoff_init(&b, 0, -5);
	CHECK(obr_backoff_failed(&b, now, 7) >= 1);
}

/* The first failure of a run is logged, then one line per interval with the count left out. */
static void test_backoff_log(void)
{
	struct obr_backoff b;
	obr_backoff_init(&b, 100, 30000);
	uint64_t repeats = 99;
	CHECK(obr_backoff_should_log(&b, 5000, 10000, &repeats));
	CHECK_INT_EQ(repeats, 0);
	for (int i = 1; i <= 7; i++)
		CHECK(!obr_backoff_should_log(&b, 5000 + i * 1000, 10000, &repeats));
	CHECK(obr_backoff_should_log(&b, 15000, 10000, &repeats));
	CHECK_INT_EQ(repeats, 7);
	CHECK(!obr_backoff_should_log(&b, 15001, 10000, &repeats));
	/* a success ends the run: the next failure is logged at once */
	obr_backoff_ok(&b);
	CHECK(obr_backoff_should_log(&b, 15002, 10000, &repeats));
	CHECK_INT_EQ(repeats, 0);
}

int main(int argc, char **argv)
{
	static const struct test tests[] = {
		TEST(test_fmt_double),
		TEST(test_timeval),
		TEST(test_monotonic),
		TEST(test_backoff_pauses),
		TEST(test_backoff_log),
		TEST_END,
	};
	return run_tests(tests, argc, argv);
}
