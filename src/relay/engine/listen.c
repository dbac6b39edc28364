/*
 * listen.c - the listen connection: notifications name partitions to claim; a health check
 * finds a connection that stopped answering; a self-test proves that notifications arrive at
 * all (behind a pooler in transaction mode LISTEN succeeds and then hears nothing).
 */
#include "engine/engine_int.h"

#include "db/store.h"
#include "util/clock.h"
#include "util/log.h"

#include <event2/event.h>
#include <stdio.h>
#include <string.h>

static bool selftest_heard(struct obr_relay *r, const char *payload);
static void selftest_start(struct obr_relay *r);

void listen_on_notify(void *arg, const char *channel, const char *payload)
{
	struct obr_relay *r = arg;
	char key[OBR_KEY_LEN + 1];

	if (r->tearing_down || selftest_heard(r, payload))
		return;
	r->stats.notifications++;
	if (r->stopping)
		return;
	if (!part_key_normalize(payload, key)) {
		obr_log_warn("ignoring notification on channel %s: payload \"%.64s\" is not a partition key", channel, payload);
		return;
	}
	struct part *p = part_get(r, key);
	if (!p) {
		r->scan_wanted = true;
		relay_kick(r);
		return;
	}
	if (p->state == PS_IDLE || p->state == PS_CLAIM_WANTED)
		claim_want(r, p);
	else
		p->notified = true;
	relay_kick(r);
}

void listen_on_connected(void *arg)
{
	struct obr_relay *r = arg;
	r->listen_ready = true;
	r->listen_check_pending = false;
	/* notifications sent while we were not listening are lost: catch up with a scan */
	r->scan_wanted = true;
	relay_check_ready(r);
	selftest_start(r);
	relay_kick(r);
}

void listen_on_disconnected(void *arg, const char *why)
{
	struct obr_relay *r = arg;
	r->listen_ready = false;
	r->stats.reconnects++;
	evtimer_del(r->listen_check_timeout_ev);
	/* the next connection tests itself again; until then the verdict stands */
	r->selftest_wanted = false;
	r->selftest_pending = false;
	evtimer_del(r->selftest_ev);
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

static int64_t deaf_poll_ms(const struct obr_relay *r)
{
	return r->cfg->poll_interval_ms < SELFTEST_POLL_MS ? r->cfg->poll_interval_ms : SELFTEST_POLL_MS;
}

/* The fallback poll's interval: that of poll mode while notifications do not arrive. */
static void set_poll_interval(struct obr_relay *r, int64_t ms)
{
	if (r->stopping)
		return;
	struct timeval tv = obr_timeval_from_ms(ms);
	event_add(r->poll_ev, &tv);
}

/* After LISTEN: notify ourselves (from the work connection, as a writer would). */
static void selftest_start(struct obr_relay *r)
{
	evtimer_del(r->selftest_ev);
	if (r->cfg->listen_selftest_ms <= 0 || r->stopping)
		return;
	r->selftest_seq++;
	r->selftest_wanted = true;
	r->selftest_pending = true;
	relay_kick(r);
}

static void selftest_passed(struct obr_relay *r)
{
	r->selftest_pending = false;
	evtimer_del(r->selftest_ev);
	if (r->selftest == SELFTEST_FAILED) {
		obr_log_info("LISTEN self-test passed: notifications reach the listen connection again; "
		             "back to the fallback poll every %lld ms", (long long)r->cfg->poll_interval_ms);
		set_poll_interval(r, r->cfg->poll_interval_ms);
	} else if (r->selftest == SELFTEST_UNKNOWN) {
		obr_log_debug("LISTEN self-test passed: notifications reach the listen connection");
	}
	r->selftest = SELFTEST_OK;
	r->stats.listen_selftest_ok = 1;
}

static void selftest_failed(struct obr_relay *r)
{
	r->selftest_pending = false;
	if (r->selftest != SELFTEST_FAILED)
		obr_log_error("LISTEN self-test failed: a notification this relay sent on channel %s did not reach its "
		              "listen connection within %lld ms. Likely cause: a connection pooler in transaction mode "
		              "(e.g. PgBouncer with pool_mode=transaction) between the relay and PostgreSQL, which does "
		              "not keep the LISTEN session; connect the relay directly or use a session pool, or set "
		              "OUTBOX_MODE=poll. Polling every %lld ms until a later self-test passes (every %d s)",
		              r->cfg->channel, (long long)r->cfg->listen_selftest_ms, (long long)deaf_poll_ms(r),
		              SELFTEST_RETRY_MS / 1000);
	else
		obr_log_debug("LISTEN self-test failed again: still polling every %lld ms", (long long)deaf_poll_ms(r));
	if (r->selftest != SELFTEST_FAILED)
		set_poll_interval(r, deaf_poll_ms(r));
	r->selftest = SELFTEST_FAILED;
	r->stats.listen_selftest_ok = 0;
	/* rows may have waited for a notification that did not come */
	r->scan_wanted = true;
	relay_kick(r);
	relay_timer_ms(r->selftest_ev, SELFTEST_RETRY_MS);
}

/* Our own notification, or another instance's (ignored): true when payload is a self-test's. */
static bool selftest_heard(struct obr_relay *r, const char *payload)
{
	if (strncmp(payload, SELFTEST_PREFIX, strlen(SELFTEST_PREFIX)))
		return false;
	char mine[OBR_KEY_LEN + 64];
	snprintf(mine, sizeof(mine), SELFTEST_PREFIX "%s %llu", r->lock_id, (unsigned long long)r->selftest_seq);
	if (r->selftest_pending && !strcmp(payload, mine))
		selftest_passed(r);
	return true;
}

bool listen_selftest_wanted(struct obr_relay *r)
{
	return r->selftest_wanted && r->listen_ready && !r->stopping;
}

static void on_selftest_result(void *arg, const PGresult *res, const char *err)
{
	struct stmt *s = stmt_answer(arg, err);
	if (!s)
		return;
	struct obr_relay *r = s->relay;
	relay_kick(r); /* the work connection is free for the next statement */
	if (!r->selftest_pending)
		return; /* heard already, or the listen connection went away meanwhile */
	if (!res || err) {
		/* not a verdict on LISTEN: try again later */
		relay_statement_error("LISTEN self-test notification", err);
		r->selftest_pending = false;
		relay_timer_ms(r->selftest_ev, SELFTEST_RETRY_MS);
		return;
	}
	/* committed: from now on it should arrive within the setting */
	relay_timer_ms(r->selftest_ev, r->cfg->listen_selftest_ms);
}

bool listen_selftest_send(struct obr_relay *r)
{
	r->selftest_wanted = false;
	char payload[OBR_KEY_LEN + 64];
	snprintf(payload, sizeof(payload), SELFTEST_PREFIX "%s %llu", r->lock_id, (unsigned long long)r->selftest_seq);
	const char *params[] = { r->cfg->channel, payload };
	struct stmt *s = stmt_new(r, &r->work);
	if (s && stmt_send(s, OBR_SQL_NOTIFY_SELF, 2, params, on_selftest_result))
		return true;
	stmt_free(s);
	r->selftest_pending = false;
	relay_timer_ms(r->selftest_ev, SELFTEST_RETRY_MS);
	return false;
}

/* The deadline of a pending self-test, or the time for the next one. */
void listen_on_selftest_timer(struct obr_relay *r)
{
	if (r->stopping)
		return;
	if (r->selftest_pending)
		selftest_failed(r);
	else if (r->listen_ready)
		selftest_start(r);
}
