/*
 * listen.c - the listen connection: notifications name partitions to claim; a health check
 * finds a connection that stopped answering; a self-test finds a LISTEN that hears nothing.
 *
 * Behind a transaction pooler (PgBouncer pool_mode=transaction, some managed poolers) LISTEN
 * succeeds on whichever server session ran it and the relay's connection then hears nothing,
 * silently: rows would wait for the fallback poll. So after every LISTEN the relay notifies
 * itself from the work connection and expects to hear it; if it does not, it says so (log,
 * /ready, metric) and polls as poll mode does until a later self-test passes.
 */
#include "engine/engine_int.h"

#include "util/log.h"

#include <event2/event.h>
#include <stdio.h>
#include <string.h>

static void selftest_heard(struct obr_relay *r);

void listen_on_notify(void *arg, const char *channel, const char *payload)
{
	struct obr_relay *r = arg;
	char key[OBR_KEY_LEN + 1];

	r->stats.notifications++;
	if (r->tearing_down)
		return;
	if (!strncmp(payload, SELFTEST_PREFIX, strlen(SELFTEST_PREFIX))) {
		/* ours, or another instance's (every listener hears every self-test) */
		if (r->selftest_pending && !strcmp(payload, r->selftest_token))
			selftest_heard(r);
		return;
	}
	if (r->stopping)
		return;
	if (!part_key_normalize(payload, key)) {
		obr_log_warn("ignoring notification on channel %s: payload \"%.64s\" is not a partition key", channel, payload);
		return;
	}
	listen_wake(r, key);
}

void listen_wake(struct obr_relay *r, const char key[OBR_KEY_LEN + 1])
{
	struct part *p = part_get(r, key);
	if (!p) { /* out of memory: a scan finds it */
		r->scan_wanted = true;
		relay_kick(r);
		return;
	}
	if (p->state == PS_IDLE || p->state == PS_CLAIM_WANTED)
		claim_want(r, p);
	else
		p->notified = true; /* held: its holder looks again before letting go */
	if (p->state == PS_LINGERING)
		linger_poke(r); /* a writer did not see our lease (or notified anyway): look now */
	relay_kick(r);
}

void listen_on_connected(void *arg)
{
	struct obr_relay *r = arg;
	r->listen_ready = true;
	r->listen_check_pending = false;
	/* notifications sent while we were not listening are lost: catch up with a scan; and once
	 * the transactions in progress now have ended, scan again (writers that skipped their
	 * NOTIFY under a lease of an instance that stopped meanwhile) */
	r->scan_wanted = true;
	lastlook_rescan(r);
	r->selftest_wanted = true; /* and is this LISTEN really heard? */
	relay_check_ready(r);
	relay_kick(r);
}

void listen_on_disconnected(void *arg, const char *why)
{
	struct obr_relay *r = arg;
	r->listen_ready = false;
	r->stats.reconnects++;
	evtimer_del(r->listen_check_timeout_ev);
	r->selftest_pending = false;
	evtimer_del(r->selftest_timeout_ev);
}

static void on_check_result(void *arg, const PGresult *res, const char *err)
{
	struct obr_relay *r = arg;
	r->listen_check_pending = false;
	evtimer_del(r->listen_check_timeout_ev);
}

void listen_check(struct obr_relay *r)
{
	if (!r->listen_pg || !obr_pg_is_up(r->listen_pg) || r->listen_check_pending)
		return;
	if (obr_pg_query(r->listen_pg, "SELECT 1", 0, NULL, on_check_result, r) == 0) {
		r->listen_check_pending = true;
		relay_timer_ms(r->listen_check_timeout_ev, LISTEN_CHECK_TIMEOUT_MS);
	}
}

void listen_on_check_timeout(struct obr_relay *r)
{
	r->listen_check_pending = false;
	obr_pg_reset(r->listen_pg, "the listen connection did not answer a health check");
}

/* ---- the self-test ---- */

static void on_selftest_sent(void *arg, const PGresult *res, const char *err)
{
	struct stmt *s = stmt_answer(arg, err);
	if (!s)
		return;
	struct obr_relay *r = s->relay;
	if (!res || err) {
		relay_statement_failed(r, SK_SELFTEST, s, res, err);
		r->selftest_pending = false;
		evtimer_del(r->selftest_timeout_ev);
		r->selftest_wanted = true; /* after the backoff */
		relay_kick(r);
		return;
	}
	relay_statement_ok(r, SK_SELFTEST);
	/* committed: from now on it must arrive soon. Not from the send: a commit that waited (for
	 * the notify commit lock behind busy writers, a slow WAL flush) says nothing about LISTEN */
	if (r->selftest_pending)
		relay_timer_ms(r->selftest_timeout_ev, SELFTEST_TIMEOUT_MS);
	relay_kick(r);
}

bool listen_selftest_wanted(struct obr_relay *r)
{
	return r->selftest_wanted && r->listen_pg && r->listen_ready && !r->stopping;
}

/* From the work connection, as a writer's transaction would (through the same pooler, if any). */
bool listen_selftest_send(struct obr_relay *r)
{
	r->selftest_wanted = false;
	snprintf(r->selftest_token, sizeof(r->selftest_token), SELFTEST_PREFIX "%s %llu", r->lock_id,
	         (unsigned long long)++r->selftest_seq);
	struct stmt *s = stmt_new(r, &r->work);
	const char *params[] = { r->cfg->channel, r->selftest_token };
	if (!s || !stmt_send(s, "SELECT pg_notify($1, $2)", 2, params, on_selftest_sent)) {
		stmt_free(s);
		relay_timer_ms(r->selftest_retry_ev, SELFTEST_RETRY_MS);
		return false;
	}
	r->selftest_pending = true;
	return true;
}

static void selftest_heard(struct obr_relay *r)
{
	r->selftest_pending = false;
	evtimer_del(r->selftest_timeout_ev);
	evtimer_del(r->selftest_retry_ev);
	r->stats.listen_selftest_ok = 1;
	if (r->listen_deaf) {
		r->listen_deaf = false;
		relay_poll_every(r, r->cfg->poll_interval_ms);
		obr_log_info("LISTEN hears notifications again (self-test passed): back to the fallback poll every %lld ms",
		             (long long)r->cfg->poll_interval_ms);
	}
}

void listen_selftest_timeout(struct obr_relay *r)
{
	if (!r->selftest_pending || r->stopping)
		return; /* no verdict at shutdown: the test may simply have been cut short */
	r->selftest_pending = false;
	r->stats.listen_selftest_ok = 0;
	if (!r->listen_deaf) {
		r->listen_deaf = true;
		int64_t every = r->cfg->poll_interval_ms < DEAF_POLL_MS ? r->cfg->poll_interval_ms : DEAF_POLL_MS;
		relay_poll_every(r, every);
		obr_log_error("LISTEN heard nothing: the relay's own notification on channel %s did not arrive within %d ms. "
		              "Behind a transaction pooler (PgBouncer pool_mode=transaction, a managed pooler) LISTEN never "
		              "hears notifications: use OUTBOX_MODE=poll there, or connect to PostgreSQL or a session pool. "
		              "Polling every %lld ms meanwhile, testing again every %d s",
		              r->cfg->channel, SELFTEST_TIMEOUT_MS, (long long)every, SELFTEST_RETRY_MS / 1000);
	}
	relay_timer_ms(r->selftest_retry_ev, SELFTEST_RETRY_MS);
}

void listen_selftest_retry(struct obr_relay *r)
{
	r->selftest_wanted = true;
	relay_kick(r);
}
