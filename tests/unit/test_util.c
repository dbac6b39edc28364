/*
 * test_util.c - the small modules of src/relay/util: numbers as text (numfmt.c) and the
 * clock helpers (clock.c).
 */
#include "util/clock.h"
#include "util/numfmt.h"
#include "harness.h"

#include <math.h>
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
	struct timeval tv = obr_timeval_from_ms(1500);
	CHECK_INT_EQ(tv.tv_sec, 1);
	CHECK_INT_EQ(tv.tv_usec, 500000);
	tv = obr_timeval_from_ms(999);
	CHECK_INT_EQ(tv.tv_sec, 0);
	CHECK_INT_EQ(tv.tv_usec, 999000);
	tv = obr_timeval_from_ms(-5);
	CHECK_INT_EQ(tv.tv_sec, 0);
	CHECK_INT_EQ(tv.tv_usec, 0);
	tv = obr_timeval_from_us(2000001);
	CHECK_INT_EQ(tv.tv_sec, 2);
	CHECK_INT_EQ(tv.tv_usec, 1);
	tv = obr_timeval_from_us(-1);
	CHECK_INT_EQ(tv.tv_sec, 0);
	CHECK_INT_EQ(tv.tv_usec, 0);
	/* no overflow for the largest settings (a week in ms) nor beyond */
	tv = obr_timeval_from_ms(7LL * 24 * 3600 * 1000);
	CHECK_INT_EQ(tv.tv_sec, 7 * 24 * 3600);
	tv = obr_timeval_from_ms(INT64_MAX);
	CHECK(tv.tv_sec > 0 && tv.tv_usec >= 0 && tv.tv_usec < 1000000);
}

static void test_monotonic(void)
{
	int64_t a = obr_mono_us(), ms = obr_mono_ms(), b = obr_mono_us();
	CHECK(a > 0);
	CHECK(b >= a);
	CHECK(ms >= a / 1000 && ms <= b / 1000);
}

int main(int argc, char **argv)
{
	static const struct test tests[] = {
		TEST(test_fmt_double),
		TEST(test_timeval),
		TEST(test_monotonic),
		TEST_END,
	};
	return run_tests(tests, argc, argv);
}
