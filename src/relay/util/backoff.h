/*
 * backoff.h - for something that keeps failing: an exponential pause with jitter, reset by a
 * success, and a log that speaks at the first failure of a run and then at most once per
 * interval with the number of failures it did not report. Pure: the caller passes the clock
 * and the random number, so it is unit-tested without either.
 */
#ifndef OBR_BACKOFF_H
#define OBR_BACKOFF_H

#include <stdbool.h>
#include <stdint.h>

struct obr_backoff {
	int64_t min_ms, max_ms;
	int64_t next_ms;       /* the pause the next failure gets, before jitter */
	int64_t until_ms;      /* monotonic: nothing before then; 0: not waiting */
	uint64_t failures;     /* consecutive */
	uint64_t unlogged;     /* failures since the last log line */
	int64_t logged_ms;     /* monotonic: the last log line; 0: none in this run */
};

void obr_backoff_init(struct obr_backoff *b, int64_t min_ms, int64_t max_ms);

/* A failure at now_ms: returns the pause, "equal jitter" in [next/2, next] (so runs of many
 * instances spread out but a pause never collapses to 0), and doubles the next up to max. */
int64_t obr_backoff_failed(struct obr_backoff *b, int64_t now_ms, uint32_t rnd);

/* A success: the pause is over and the next failure starts small again. Returns how many
 * consecutive failures it ended (0: it was not failing). */
uint64_t obr_backoff_ok(struct obr_backoff *b);

/* Still in the pause of the latest failure at now_ms. */
bool obr_backoff_waiting(const struct obr_backoff *b, int64_t now_ms);

/* Call once per failure: true when this one should be logged (the first of a run, then at
 * most once per every_ms); *repeats is then the failures since the previous line that were not
 * logged. */
bool obr_backoff_should_log(struct obr_backoff *b, int64_t now_ms, int64_t every_ms, uint64_t *repeats);

#endif
