/* test_uuid7.c: UUIDv7 layout, monotonicity (real, frozen, backward clock), text form. */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <uuid/uuid.h>

#include "harness.h"
#include "outbox.h"
#include "uuid7.h"

static uint64_t
ms_field(const unsigned char u[16])
{
	uint64_t ms = 0;

	for (int i = 0; i < 6; i++)
		ms = ms << 8 | u[i];
	return ms;
}

static unsigned
counter_field(const unsigned char u[16])
{
	return (unsigned)(u[6] & 0x0F) << 8 | u[7];
}

static void
random_entropy(unsigned char e[16])
{
	uuid_generate_random(e);
}

static void
test_version_and_variant(void)
{
	for (int i = 0; i < 1000; i++) {
		unsigned char u[16];

		outbox_uuid7(u);
		CHECK_INT_EQ(u[6] >> 4, 7);   /* version 7 */
		CHECK_INT_EQ(u[8] >> 6, 2);   /* variant 0b10 */
	}
}

/* Every field in its place, for fixed inputs: a wrong bit anywhere shows here. */
static void
test_exact_layout(void)
{
	struct outbox__uuid7_state st = { 0 };
	unsigned char e[16];
	unsigned char u[16];
	char text[OUTBOX_UUID_STRLEN];

	memset(e, 0xFF, sizeof(e));
	outbox__uuid7_next(&st, UINT64_C(0x0123456789AB), e, u);
	outbox_uuid_format(u, text);
	/* counter seeded with the low 11 bits of e[0..1] = 0x7ff; rand_b = e[8..15], variant set */
	CHECK_STR_EQ(text, "01234567-89ab-77ff-bfff-ffffffffffff");

	memset(e, 0x00, sizeof(e));
	outbox__uuid7_next(&st, UINT64_C(0x0123456789AC), e, u);
	outbox_uuid_format(u, text);
	CHECK_STR_EQ(text, "01234567-89ac-7000-8000-000000000000");
}

static void
test_timestamp_equals_given_ms(void)
{
	static const uint64_t samples[] = { 1, 1000, UINT64_C(1700000000123), UINT64_C(0xFFFFFFFFFFFE) };

	for (size_t i = 0; i < sizeof(samples) / sizeof(samples[0]); i++) {
		struct outbox__uuid7_state st = { 0 };
		unsigned char e[16];
		unsigned char u[16];

		random_entropy(e);
		outbox__uuid7_next(&st, samples[i], e, u);
		CHECK(ms_field(u) == samples[i]);
		CHECK_INT_EQ(u[6] >> 4, 7);
		CHECK_INT_EQ(u[8] >> 6, 2);
	}
}

static void
test_real_clock_timestamp(void)
{
	uint64_t before = outbox__now_ms();
	unsigned char u[16];
	uint64_t after;

	outbox_uuid7(u);
	after = outbox__now_ms();
	/* The counter may run ahead by a millisecond or two after earlier bursts in this process. */
	CHECK(ms_field(u) >= before);
	CHECK(ms_field(u) <= after + 2);
}

static void
test_increasing_real_clock(void)
{
	unsigned char prev[16];

	outbox_uuid7(prev);
	for (int i = 0; i < 1000; i++) {
		unsigned char u[16];

		outbox_uuid7(u);
		CHECK(memcmp(prev, u, 16) < 0);
		memcpy(prev, u, 16);
	}
}

static void
test_increasing_frozen_clock(void)
{
	const uint64_t ms = UINT64_C(1700000000000);
	struct outbox__uuid7_state st = { 0 };
	unsigned char prev[16];
	unsigned char e[16];

	random_entropy(e);
	outbox__uuid7_next(&st, ms, e, prev);
	for (int i = 0; i < 1000; i++) {
		unsigned char u[16];

		random_entropy(e);
		outbox__uuid7_next(&st, ms, e, u);
		CHECK(memcmp(prev, u, 16) < 0);
		CHECK(ms_field(u) == ms); /* seed <= 2047, + 1001 < 4096: no overflow yet */
		CHECK_INT_EQ(counter_field(u), counter_field(prev) + 1);
		memcpy(prev, u, 16);
	}
}

/* More ids in one millisecond than the counter holds: the timestamp moves 1 ms ahead. */
static void
test_counter_overflow_bumps_timestamp(void)
{
	const uint64_t ms = UINT64_C(1700000000000);
	struct outbox__uuid7_state st = { 0 };
	unsigned char prev[16];
	unsigned char e[16];
	int bumped = 0;

	memset(e, 0xFF, sizeof(e)); /* seed 0x7ff: 2048 ids fit before the overflow */
	outbox__uuid7_next(&st, ms, e, prev);
	CHECK_INT_EQ(counter_field(prev), 0x7FF);
	for (int i = 0; i < 5000; i++) {
		unsigned char u[16];

		random_entropy(e);
		outbox__uuid7_next(&st, ms, e, u);
		CHECK(memcmp(prev, u, 16) < 0);
		if (ms_field(u) == ms + 1 && ms_field(prev) == ms) {
			CHECK_INT_EQ(counter_field(prev), 0xFFF);
			CHECK_INT_EQ(counter_field(u), 0);
			CHECK_INT_EQ(i, 2048);
			bumped = 1;
		}
		CHECK(ms_field(u) <= ms + 1);
		CHECK_INT_EQ(u[6] >> 4, 7);
		memcpy(prev, u, 16);
	}
	CHECK(bumped);
	CHECK(ms_field(prev) == ms + 1);
}

static void
test_increasing_backward_clock(void)
{
	const uint64_t start = UINT64_C(1700000000000);
	struct outbox__uuid7_state st = { 0 };
	unsigned char prev[16];
	unsigned char e[16];

	random_entropy(e);
	outbox__uuid7_next(&st, start, e, prev);
	for (uint64_t i = 1; i <= 1000; i++) {
		unsigned char u[16];

		random_entropy(e);
		outbox__uuid7_next(&st, start - i * 7, e, u); /* the clock keeps going back */
		CHECK(memcmp(prev, u, 16) < 0);
		CHECK(ms_field(u) >= start);
		memcpy(prev, u, 16);
	}
}

/* Once the clock passes the last timestamp again, ids follow the clock and a fresh seed. */
static void
test_clock_catches_up(void)
{
	const uint64_t ms = UINT64_C(1700000000000);
	struct outbox__uuid7_state st = { 0 };
	unsigned char e[16];
	unsigned char u[16];

	random_entropy(e);
	for (int i = 0; i < 10; i++)
		outbox__uuid7_next(&st, ms, e, u);
	e[0] = 0x01;
	e[1] = 0x23;
	outbox__uuid7_next(&st, ms + 10, e, u);
	CHECK(ms_field(u) == ms + 10);
	CHECK_INT_EQ(counter_field(u), 0x123);
}

#define THREADS        4
#define IDS_PER_THREAD 20000

static void *
generate_many(void *arg)
{
	unsigned char(*ids)[16] = arg;

	for (int i = 0; i < IDS_PER_THREAD; i++)
		outbox_uuid7(ids[i]);
	return NULL;
}

static int
cmp16(const void *a, const void *b)
{
	return memcmp(a, b, 16);
}

/* Concurrent callers: each thread's ids increase and no two ids are equal. */
static void
test_threads_unique(void)
{
	const size_t total = (size_t)THREADS * IDS_PER_THREAD;
	unsigned char(*ids)[16] = calloc(total, 16);
	pthread_t th[THREADS];
	int started = 0;
	int dupes = 0;
	int unordered = 0;

	CHECK(ids != NULL);
	for (int i = 0; i < THREADS; i++)
		if (pthread_create(&th[i], NULL, generate_many, ids + (size_t)i * IDS_PER_THREAD) == 0)
			started++;
	for (int i = 0; i < started; i++)
		pthread_join(th[i], NULL);
	for (size_t k = 1; k < total; k++)
		if (k % IDS_PER_THREAD != 0 && memcmp(ids[k - 1], ids[k], 16) >= 0)
			unordered++;
	qsort(ids, total, 16, cmp16);
	for (size_t k = 1; k < total; k++)
		if (memcmp(ids[k - 1], ids[k], 16) == 0)
			dupes++;
	free(ids);
	CHECK_INT_EQ(started, THREADS);
	CHECK_INT_EQ(unordered, 0);
	CHECK_INT_EQ(dupes, 0);
}

static void
test_format(void)
{
	static const unsigned char u[16] = { 0x01, 0x90, 0xF5, 0xC5, 0x7B, 0x1E, 0x7C, 0x3A,
					     0x9D, 0x2E, 0x3F, 0x4A, 0x5B, 0x6C, 0x7D, 0x8E };
	char text[OUTBOX_UUID_STRLEN];

	outbox_uuid_format(u, text);
	CHECK_STR_EQ(text, "0190f5c5-7b1e-7c3a-9d2e-3f4a5b6c7d8e");

	for (int n = 0; n < 100; n++) {
		outbox_uuid7_text(text);
		CHECK_INT_EQ(strlen(text), 36);
		for (int i = 0; i < 36; i++) {
			if (i == 8 || i == 13 || i == 18 || i == 23)
				CHECK(text[i] == '-');
			else
				CHECK((text[i] >= '0' && text[i] <= '9') ||
				      (text[i] >= 'a' && text[i] <= 'f'));
		}
		CHECK(text[14] == '7');
	}
}

static void
test_parse(void)
{
	static const char *const bad[] = {
		"",
		"0190f5c5-7b1e-7c3a-9d2e-3f4a5b6c7d8",   /* short */
		"0190f5c5-7b1e-7c3a-9d2e-3f4a5b6c7d8e0", /* long */
		"0190f5c5x7b1e-7c3a-9d2e-3f4a5b6c7d8e",  /* separator */
		"0190f5c57b1e7c3a9d2e3f4a5b6c7d8e",      /* no dashes */
		"0190f5c5-7b1e-7c3a-9d2e-3f4a5b6c7d8g",  /* not hex */
		"{0190f5c5-7b1e-7c3a-9d2e-3f4a5b6c7d8e}",
		" 0190f5c5-7b1e-7c3a-9d2e-3f4a5b6c7d8e",
	};
	unsigned char u[16];
	unsigned char v[16];
	char text[OUTBOX_UUID_STRLEN];
	struct outbox_error err;

	CHECK_INT_EQ(outbox_uuid_parse("0190F5C5-7B1E-7C3A-9D2E-3F4A5B6C7D8E", u, &err), OUTBOX_OK);
	outbox_uuid_format(u, text);
	CHECK_STR_EQ(text, "0190f5c5-7b1e-7c3a-9d2e-3f4a5b6c7d8e");

	outbox_uuid7(u);
	outbox_uuid_format(u, text);
	CHECK_INT_EQ(outbox_uuid_parse(text, v, NULL), OUTBOX_OK);
	CHECK(memcmp(u, v, 16) == 0);

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		memset(&err, 0, sizeof(err));
		memset(v, 0xAA, sizeof(v));
		CHECK_INT_EQ(outbox_uuid_parse(bad[i], v, &err), OUTBOX_E_INVALID);
		CHECK_INT_EQ(err.code, OUTBOX_E_INVALID);
		CHECK(strstr(err.message, "uuid") != NULL);
		CHECK_INT_EQ(v[0], 0xAA); /* out untouched on failure */
	}
	CHECK_INT_EQ(outbox_uuid_parse(NULL, v, &err), OUTBOX_E_INVALID);
}

int
main(int argc, char **argv)
{
	static const struct test tests[] = {
		TEST(test_version_and_variant),
		TEST(test_exact_layout),
		TEST(test_timestamp_equals_given_ms),
		TEST(test_real_clock_timestamp),
		TEST(test_increasing_real_clock),
		TEST(test_increasing_frozen_clock),
		TEST(test_counter_overflow_bumps_timestamp),
		TEST(test_increasing_backward_clock),
		TEST(test_clock_catches_up),
		TEST(test_threads_unique),
		TEST(test_format),
		TEST(test_parse),
		TEST_END,
	};

	return run_tests(tests, argc, argv);
}
