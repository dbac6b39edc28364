/*
 * uuid7.h: UUIDv7 generation with an explicit clock and state, for the library and its tests.
 *
 * outbox_uuid7() (outbox.h) is outbox__uuid7_next() on one process-wide state with the real
 * clock. Tests use their own state and feed chosen millisecond values, so that monotonicity
 * with a frozen or backward clock is checked deterministically.
 */
#ifndef OUTBOX_UUID7_H
#define OUTBOX_UUID7_H

#include <stdatomic.h>
#include <stdint.h>

/*
 * The last value handed out: unix_ms << 12 | rand_a. Zero-initialise it. Packing both in one
 * 64-bit word lets one compare-and-swap advance them together, so that concurrent callers never
 * get the same (ms, counter) pair and never see it go back.
 */
struct outbox__uuid7_state {
	_Atomic uint64_t last;
};

/*
 * Writes a UUIDv7 for clock reading unix_ms (only its low 48 bits are used), strictly greater
 * than every one previously produced from st. entropy is 16 random bytes (libuuid in the
 * library): its bytes 0-1 seed the counter, 8-15 fill rand_b.
 */
void outbox__uuid7_next(struct outbox__uuid7_state *st, uint64_t unix_ms,
			const unsigned char entropy[16], unsigned char out[16]);

/* The Unix time in milliseconds (CLOCK_REALTIME), and in microseconds. */
uint64_t outbox__now_ms(void);
int64_t outbox__now_us(void);

#endif /* OUTBOX_UUID7_H */
