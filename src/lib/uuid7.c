/* uuid7.c: UUIDv7 (RFC 9562) and UUID text form. See uuid7.h and outbox.h. */
#include "uuid7.h"

#include <string.h>
#include <time.h>

#include <uuid/uuid.h>

#include "error.h"
#include "outbox.h"

#define MS_MASK      ((UINT64_C(1) << 48) - 1)
#define COUNTER_BITS 12

/*
 * The process-wide state behind outbox_uuid7(); file-local, zero at start. A forked child
 * inherits it and may reuse a (ms, counter) pair of its parent: the 62 random bits of rand_b
 * still keep the two ids apart.
 */
static struct outbox__uuid7_state process_state;

void
outbox__uuid7_next(struct outbox__uuid7_state *st, uint64_t unix_ms,
		   const unsigned char entropy[16], unsigned char out[16])
{
	uint64_t now = unix_ms & MS_MASK;
	/*
	 * The counter starts from 11 random bits each new millisecond: random enough that ids of
	 * one millisecond from different processes rarely share a prefix, and it leaves at least
	 * 2048 increments before the counter spills into the timestamp.
	 */
	uint64_t seed = ((uint64_t)entropy[0] << 8 | entropy[1]) & 0x7FF;
	uint64_t old = atomic_load_explicit(&st->last, memory_order_relaxed);
	uint64_t next;
	uint64_t ms;
	uint64_t counter;

	for (;;) {
		if (now > old >> COUNTER_BITS)
			next = now << COUNTER_BITS | seed;
		else
			/*
			 * Same millisecond, or the clock went back: count up from the last value.
			 * A full counter carries into the millisecond field, i.e. the timestamp
			 * runs 1 ms ahead of the clock until the clock catches up.
			 */
			next = old + 1;
		if (atomic_compare_exchange_weak_explicit(&st->last, &old, next,
							  memory_order_relaxed,
							  memory_order_relaxed))
			break;
	}

	ms = (next >> COUNTER_BITS) & MS_MASK;
	counter = next & ((UINT64_C(1) << COUNTER_BITS) - 1);

	out[0] = (unsigned char)(ms >> 40);
	out[1] = (unsigned char)(ms >> 32);
	out[2] = (unsigned char)(ms >> 24);
	out[3] = (unsigned char)(ms >> 16);
	out[4] = (unsigned char)(ms >> 8);
	out[5] = (unsigned char)ms;
	out[6] = (unsigned char)(0x70 | (counter >> 8)); /* version 7, rand_a high nibble */
	out[7] = (unsigned char)counter;
	memcpy(out + 8, entropy + 8, 8);
	out[8] = (unsigned char)(0x80 | (out[8] & 0x3F)); /* variant 0b10, 62 random bits follow */
}

uint64_t
outbox__now_ms(void)
{
	struct timespec ts;

	if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
		return 0; /* cannot happen for CLOCK_REALTIME; the counter keeps ids increasing */
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int64_t
outbox__now_us(void)
{
	struct timespec ts;

	if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
		return 0;
	return (int64_t)ts.tv_sec * 1000000 + (int64_t)ts.tv_nsec / 1000;
}

void
outbox_uuid7(unsigned char out[16])
{
	uuid_t entropy;

	/* A version 4 UUID is 122 bits from libuuid's random source (getrandom). */
	uuid_generate_random(entropy);
	outbox__uuid7_next(&process_state, outbox__now_ms(), entropy, out);
}

void
outbox_uuid7_text(char out[OUTBOX_UUID_STRLEN])
{
	unsigned char bin[16];

	outbox_uuid7(bin);
	outbox_uuid_format(bin, out);
}

void
outbox_uuid_format(const unsigned char in[16], char out[OUTBOX_UUID_STRLEN])
{
	static const char hex[] = "0123456789abcdef";
	size_t o = 0;

	for (size_t i = 0; i < 16; i++) {
		if (i == 4 || i == 6 || i == 8 || i == 10)
			out[o++] = '-';
		out[o++] = hex[in[i] >> 4];
		out[o++] = hex[in[i] & 0x0F];
	}
	out[o] = '\0';
}

static int
hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

enum outbox_rc
outbox_uuid_parse(const char *text, unsigned char out[16], struct outbox_error *err)
{
	unsigned char bin[16];
	size_t b = 0;

	if (text == NULL)
		return outbox__fail(err, OUTBOX_E_INVALID, "uuid is NULL");
	for (size_t i = 0; i < 36; i++) {
		int hi;
		int lo;

		if (i == 8 || i == 13 || i == 18 || i == 23) {
			if (text[i] != '-')
				return outbox__fail(err, OUTBOX_E_INVALID,
						    "invalid uuid \"%.40s\": expected '-' at position %zu",
						    text, i + 1);
			continue;
		}
		hi = hex_value(text[i]);
		lo = hi < 0 ? -1 : hex_value(text[i + 1]);
		if (hi < 0 || lo < 0)
			return outbox__fail(err, OUTBOX_E_INVALID,
					    "invalid uuid \"%.40s\": expected 8-4-4-4-12 hex digits",
					    text);
		bin[b++] = (unsigned char)(hi << 4 | lo);
		i++;
	}
	if (text[36] != '\0')
		return outbox__fail(err, OUTBOX_E_INVALID,
				    "invalid uuid \"%.40s\": expected 36 characters", text);
	memcpy(out, bin, 16);
	return OUTBOX_OK;
}
