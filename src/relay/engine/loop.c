/*
 * loop.c - what every stage takes from the loop: clocks, timers, the kick that brings the
 * flush back at the end of the loop turn, the arrival rate that decides whether a statement
 * waits for company, and readiness. It calls no stage, so the stages can all use it.
 */
#include "engine/engine_int.h"

#include "admin/sdnotify.h"
#include "send/sender.h"
#include "util/clock.h"
#include "util/log.h"

#include <event2/event.h>
#include <stdlib.h>
#include <time.h>

const double obr_latency_bounds[OBR_LATENCY_BUCKETS] = {
	0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
};

int64_t relay_mono_us(void)
{
	return obr_mono_us();
}

int64_t relay_mono_ms(void)
{
	return relay_mono_us() / 1000;
}

int64_t relay_realtime_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void relay_timer_ms(struct event *ev, int64_t ms)
{
	struct timeval tv = obr_timeval_from_ms(ms);
	evtimer_add(ev, &tv);
}

int relay_vec_push(struct vec *v, void *item)
{
	if (v->len == v->cap) {
		size_t cap = v->cap ? v->cap * 2 : 64;
		void **items = realloc(v->items, cap * sizeof(*items));
		if (!items)
			return -1;
		v->items = items;
		v->cap = cap;
	}
	v->items[v->len++] = item;
	return 0;
}

/* One arrival; gaps count up to twice the window, so that after a pause a few quick arrivals
 * are enough to open it again. */
void relay_arrived(const struct obr_relay *r, struct arrivals *a, bool first_waiting)
{
	int64_t now = relay_mono_us();
	int64_t gap = now - a->last_us, cap = 2 * r->cfg->batch_window_ms * 1000;
	if (gap > cap)
		gap = cap;
	a->gap_us = a->last_us ? a->gap_us + (gap - a->gap_us) / 4 : gap;
	a->last_us = now;
	if (first_waiting)
		a->waiting_since_us = now;
}

/*
 * OUTBOX_BATCH_WINDOW_MS: whether to hold back a statement (claim, results) so that more of its
 * kind can go with it. Only while work of that kind arrives more often than once per window on
 * average (a lone row, or rows at a slower pace, wait for nothing), at most one window after the
 * oldest waiting arrival, never once enough is there, nor at shutdown. The timer brings the flush
 * back when the window closes.
 */
bool relay_gathering(struct obr_relay *r, const struct arrivals *a, size_t have, size_t enough, struct event *timer)
{
	int64_t window_us = r->cfg->batch_window_ms * 1000;
	if (window_us <= 0 || r->cfg->mode != OBR_MODE_LISTEN || r->stopping || have >= enough || a->gap_us >= window_us)
		return false;
	int64_t left_us = a->waiting_since_us + window_us - relay_mono_us();
	if (left_us <= 0)
		return false;
	struct timeval tv = { (time_t)(left_us / 1000000), (suseconds_t)(left_us % 1000000) };
	evtimer_add(timer, &tv);
	return true;
}

void relay_arm_due(struct obr_relay *r, int64_t in_ms)
{
	if (r->stopping)
		return;
	if (in_ms < 1)
		in_ms = 1;
	int64_t at = relay_mono_ms() + in_ms;
	if (r->due_at_ms && r->due_at_ms <= at)
		return;
	r->due_at_ms = at;
	relay_timer_ms(r->due_ev, in_ms);
}

void relay_statement_error(const char *what, const char *err)
{
	obr_log_warn("%s statement failed, will retry: %s", what, err ? err : "connection lost");
}

bool relay_senders_idle(const struct obr_relay *r)
{
	return obr_sender_in_flight(r->sender) == 0;
}

void relay_kick(struct obr_relay *r)
{
	if (r->kick_ev)
		event_active(r->kick_ev, EV_TIMEOUT, 0);
}


void relay_check_ready(struct obr_relay *r)
{
	if (r->ready_logged || r->cfg->mode != OBR_MODE_LISTEN)
		return;
	if (r->listen_ready && obr_pg_is_up(r->work.pg) && obr_pg_is_up(r->claim.pg)) {
		r->ready_logged = true;
		obr_log_info("relay ready: listening on channel %s, instance %s", r->cfg->channel, r->lock_id);
		obr_sd_notify("READY=1");
	}
}
