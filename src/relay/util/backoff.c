/*
 * backoff.c - exponential backoff with jitter and a rate-limited log of a repeating failure.
 */
#include "util/backoff.h"

void obr_backoff_init(struct obr_backoff *b, int64_t min_ms, int64_t max_ms)
{
	*b = (struct obr_backoff){ .min_ms = min_ms > 0 ? min_ms : 1, .max_ms = max_ms };
	if (b->max_ms < b->min_ms)
		b->max_ms = b->min_ms;
	b->next_ms = b->min_ms;
}

int64_t obr_backoff_failed(struct obr_backoff *b, int64_t now_ms, uint32_t rnd)
{
	int64_t half = b->next_ms / 2;
	int64_t pause = b->next_ms - half + (int64_t)(rnd % (uint64_t)(half + 1));
	b->until_ms = now_ms + pause;
	b->next_ms = b->next_ms > b->max_ms / 2 ? b->max_ms : b->next_ms * 2;
	b->failures++;
	return pause;
}

uint64_t obr_backoff_ok(struct obr_backoff *b)
{
	uint64_t ended = b->failures;
	b->failures = 0;
	b->unlogged = 0;
	b->logged_ms = 0;
	b->until_ms = 0;
	b->next_ms = b->min_ms;
	return ended;
}

bool obr_backoff_waiting(const struct obr_backoff *b, int64_t now_ms)
{
	return b->until_ms != 0 && now_ms < b->until_ms;
}

bool obr_backoff_should_log(struct obr_backoff *b, int64_t now_ms, int64_t every_ms, uint64_t *repeats)
{
	if (b->logged_ms != 0 && now_ms - b->logged_ms < every_ms) {
		b->unlogged++;
		return false;
	}
	*repeats = b->unlogged;
	b->unlogged = 0;
	b->logged_ms = now_ms != 0 ? now_ms : 1;
	return true;
}
