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
#include <string.h>
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

/* ---- statements the database refuses ---- */

static const char *const stmt_kind_names[SK_KINDS] = {
	[SK_CLAIM] = "claim",         [SK_SCAN] = "scan",     [SK_ADVANCE] = "advance",
	[SK_COMPLETE] = "results",    [SK_RENEW] = "lease renewal",
	[SK_SAMPLE] = "sample",       [SK_RETENTION] = "retention", [SK_SELFTEST] = "LISTEN self-test",
	[SK_LASTLOOK] = "last look",  [SK_PROBE] = "linger probe",
};

#define SQLSTATE_READ_ONLY "25006"
#define SQLSTATE_NO_PREPARED_STATEMENT "26000"

static void arm_backoff_timer(struct obr_relay *r)
{
	int64_t now = relay_mono_ms(), first = 0;
	for (int k = 0; k < SK_KINDS; k++)
		if (obr_backoff_waiting(&r->backoff[k], now) && (!first || r->backoff[k].until_ms < first))
			first = r->backoff[k].until_ms;
	if (first)
		relay_timer_ms(r->backoff_ev, first - now);
}

void relay_poll_every(struct obr_relay *r, int64_t ms)
{
	struct timeval tv = obr_timeval_from_ms(ms);
	event_del(r->poll_ev);
	event_add(r->poll_ev, &tv);
}

void relay_backoff_over(struct obr_relay *r)
{
	arm_backoff_timer(r); /* for the kinds whose pause ends later */
	relay_kick(r);
}

bool relay_backing_off(const struct obr_relay *r, enum stmt_kind k)
{
	return k < SK_KINDS && obr_backoff_waiting(&r->backoff[k], relay_mono_ms());
}

void relay_statement_failed(struct obr_relay *r, enum stmt_kind k, struct stmt *s, const PGresult *res, const char *err)
{
	const char *what = stmt_kind_names[k];
	if (!res) {
		/* the connection was lost: pg.c logs it and reconnects with its own backoff */
		obr_log_warn("%s statement failed, connection lost: %s", what, err ? err : "connection lost");
		return;
	}
	struct obr_backoff *b = &r->backoff[k];
	int64_t now = relay_mono_ms();
	int64_t pause = obr_backoff_failed(b, now, (uint32_t)random());
	arm_backoff_timer(r);
	uint64_t repeats;
	if (obr_backoff_should_log(b, now, STMT_LOG_EVERY_MS, &repeats)) {
		if (repeats)
			obr_log_warn("%s statement failed (%llu more times since the last message), retrying in %lld ms: %s",
			             what, (unsigned long long)repeats, (long long)pause, err ? err : "unknown error");
		else
			obr_log_warn("%s statement failed, retrying in %lld ms: %s", what, (long long)pause,
			             err ? err : "unknown error");
	}
	if (!strcmp(obr_pg_sqlstate(res), SQLSTATE_READ_ONLY) && s) {
		/* a standby, or a primary fenced or demoted in a failover: the address may now lead to
		 * the new primary (a multi-host URL with target_session_attrs=read-write finds it) */
		if (!r->read_only)
			obr_log_error("the database is read-only (SQLSTATE 25006): not ready; reconnecting with backoff until "
			              "writes work again");
		r->read_only = true;
		s->conn->reset_wanted = true; /* not from inside the handler: the reset frees s */
	}
	if (!strcmp(obr_pg_sqlstate(res), SQLSTATE_NO_PREPARED_STATEMENT) && s && !s->conn->drop_session_wanted) {
		/* prepared at connect, missing now: another server session, i.e. a transaction pooler */
		obr_log_error("a prepared statement is missing (SQLSTATE 26000): %s goes through a transaction pooler; "
		              "its statements run unprepared from the next connect on (prefer OUTBOX_MODE=poll there)",
		              s->conn == &r->work ? "the work connection" : "the claim connection");
		s->conn->drop_session_wanted = true;
		s->conn->reset_wanted = true;
	}
}

void relay_statement_ok(struct obr_relay *r, enum stmt_kind k)
{
	uint64_t ended = obr_backoff_ok(&r->backoff[k]);
	if (ended)
		obr_log_info("%s statement works again after %llu failures", stmt_kind_names[k], (unsigned long long)ended);
	/* only a write proves the database takes writes again */
	if (r->read_only && k != SK_SCAN && k != SK_SAMPLE) {
		r->read_only = false;
		obr_log_info("the database takes writes again");
	}
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
