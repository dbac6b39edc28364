/*
 * linger.c - busy partitions stay held a little after their last row (OUTBOX_LINGER_MS).
 *
 * Writers skip their NOTIFY for a partition a relay holds (sql/010), and each NOTIFY they do
 * send queues their commit on PostgreSQL's cluster-wide notify lock, held through the WAL
 * flush. Released at once, a busy partition is held only while a row is in flight, so most
 * writers still notify. So while the relay delivers OUTBOX_LINGER_MIN_RATE rows/s or more, a
 * busy partition (its previous row written less than OUTBOX_LINGER_MS ago, while held or
 * before its last release) whose last row is done keeps its lease (LINGERING), and one
 * read-only statement on the claim connection reads the heads of every lingering partition
 * each OUTBOX_LINGER_POLL_MS (the probe): new rows of a busy partition cost its writers no
 * NOTIFY and the relay no claim.
 * A partition without a row for OUTBOX_LINGER_MS, or once the rate drops, goes to the advance,
 * which releases it (the last look then covers writers that skipped meanwhile). At lower rates
 * nothing lingers and the relay behaves as without it.
 *
 * Lingering partitions take no slot of OUTBOX_MAX_IN_FLIGHT; at most OUTBOX_CLAIM_LIMIT linger,
 * so one probe reads at most that many partition heads.
 */
#include "engine/engine_int.h"

#include "db/store.h"
#include "util/log.h"

#include <event2/event.h>
#include <stdlib.h>

#define RATE_GAP_CAP_US 1000000 /* a pause counts as at most a second: the rate recovers quickly */

void linger_init(struct obr_relay *r)
{
	r->linger.gap_us = RATE_GAP_CAP_US;
}

void linger_row_done(struct obr_relay *r)
{
	struct lingering *l = &r->linger;
	int64_t now = relay_mono_us(), gap = l->last_row_us ? now - l->last_row_us : RATE_GAP_CAP_US;
	if (gap > RATE_GAP_CAP_US)
		gap = RATE_GAP_CAP_US;
	l->gap_us += (gap - l->gap_us) / 16;
	l->last_row_us = now;
}

/* Rows arrive fast enough for lingering to pay: at the minimum rate or above. */
static bool fast_enough(const struct obr_relay *r)
{
	const struct obr_config *c = r->cfg;
	if (c->linger_ms <= 0 || r->stopping)
		return false;
	if (c->linger_min_rate <= 0)
		return true;
	/* the latest result must be recent too: the average alone keeps a burst's rate for a while */
	int64_t now = relay_mono_us();
	return r->linger.gap_us * c->linger_min_rate <= 1000000 && now - r->linger.last_row_us < c->linger_ms * 1000;
}


/* A partition that rows come to more often than once per OUTBOX_LINGER_MS: its previous row was
 * written that recently, while held or before its last release. A partition written once in a
 * while is released at once, as before: lingering on it would cost probes and save nothing. */
static bool part_busy(const struct obr_relay *r, const struct part *p, int64_t now)
{
	int64_t ms = r->cfg->linger_ms;
	return (p->last_row_ms && now - p->last_row_ms < ms) || recent_release_within(&r->linger.recent, p->key, now, ms);
}

bool linger_takes(const struct obr_relay *r, const struct part *p)
{
	return p->state == PS_DELIVERING && !p->queue && !p->fetched_full && fast_enough(r) &&
	       part_busy(r, p, relay_mono_ms()) && part_lingering(&r->parts) < (size_t)r->cfg->claim_limit;
}

void linger_row_written(struct part *p)
{
	p->last_row_ms = relay_mono_ms();
}

static void arm(struct obr_relay *r)
{
	struct lingering *l = &r->linger;
	if (!l->probe_due && part_count(&r->parts, PS_LINGERING) && !evtimer_pending(l->ev, NULL))
		relay_timer_ms(l->ev, r->cfg->linger_poll_ms);
}

void linger_enter(struct obr_relay *r, struct part *p)
{
	part_set_state(r, p, PS_LINGERING);
	if (p->notified)
		linger_poke(r);
	arm(r);
}

void linger_poke(struct obr_relay *r)
{
	r->linger.probe_due = true;
	relay_kick(r);
}

void linger_stop(struct obr_relay *r)
{
	struct part *p;
	while ((p = part_first(&r->parts, PS_LINGERING)))
		part_set_state(r, p, PS_ADVANCE_WANTED);
}

static void on_probe_result(void *arg, const PGresult *res, const char *err)
{
	struct stmt *s = stmt_answer(arg, err);
	if (!s)
		return;
	struct obr_relay *r = s->relay;
	if (res && !err) {
		relay_statement_ok(r, SK_PROBE);
		claim_take_heads(r, s, res, PS_PROBING, HEADS_PROBE);
	} else {
		relay_statement_failed(r, SK_PROBE, s, res, err);
	}
	/* no pending row (or the statement failed): linger on; at shutdown, let go */
	struct part *p;
	while ((p = part_first(&r->parts, PS_PROBING)))
		part_set_state(r, p, r->stopping ? PS_ADVANCE_WANTED : PS_LINGERING);
	arm(r);
	deliver_dispatch(r);
	relay_kick(r);
}

bool linger_probe_wanted(struct obr_relay *r)
{
	return r->linger.probe_due && part_count(&r->parts, PS_LINGERING) > 0 && !r->stopping;
}

bool linger_probe_send(struct obr_relay *r)
{
	r->linger.probe_due = false;
	int64_t now = relay_mono_ms();
	bool still_fast = fast_enough(r);
	struct part *p, *next;
	for (p = part_first(&r->parts, PS_LINGERING); p; p = next) {
		next = p->next;
		/* quiet for the linger time, or rows slowed down: the advance releases it */
		bool over = !still_fast || now - p->last_row_ms >= r->cfg->linger_ms;
		part_set_state(r, p, over ? PS_ADVANCE_WANTED : PS_PROBING);
		if (!over)
			p->notified = false; /* what was notified has committed: this probe sees it */
	}
	if (!part_count(&r->parts, PS_PROBING))
		return false;
	struct stmt *s = stmt_new(r, &r->claim);
	char *keys = claim_keys_in(r, PS_PROBING);
	char budget[24];
	claim_fetch_budget(r, budget);
	const char *params[] = { r->lock_id, keys, r->param.batch, budget };
	bool ok = s && keys && stmt_send(s, OBR_SQL_PROBE, 4, params, on_probe_result);
	free(keys);
	if (!ok) {
		stmt_free(s);
		while ((p = part_first(&r->parts, PS_PROBING)))
			part_set_state(r, p, PS_LINGERING);
		arm(r);
		return false;
	}
	return true;
}
