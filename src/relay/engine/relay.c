/*
 * relay.c - the loop: one flush of the statement connections per loop turn (a table of
 * "wanted -> send" entries in priority order), timers, connections, shutdown and the public
 * API of relay.h. The stages of the data flow live in listen.c, claim.c, deliver.c and
 * complete.c; partition state changes only through partition.c's gate.
 *
 * The work connection runs one statement at a time; what accumulates while one runs goes out
 * together in the next (results of many rows in one statement, many partitions per claim).
 * Within a held partition one row is "current" from its first request until its result is
 * committed; the next row starts only then, so a crash repeats at most the current row.
 */
#include "engine/engine_int.h"

#include "admin/sdnotify.h"
#include "db/store.h"
#include "send/sender.h"
#include "util/clock.h"
#include "util/log.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uuid/uuid.h>

/* ---- the scheduler ---- */

static void on_sample_result(void *arg, const PGresult *res, const char *err)
{
	struct stmt *s = stmt_answer(arg, err);
	if (!s)
		return;
	struct obr_relay *r = s->relay;
	if (res && !err && PQntuples(res) == 1 && PQnfields(res) == OBR_SAMPLE_COLUMNS) {
		r->stats.due_rows = strtoll(PQgetvalue(res, 0, OBR_SAMPLE_DUE_ROWS), NULL, 10);
		r->stats.oldest_due_age_s = strtod(PQgetvalue(res, 0, OBR_SAMPLE_OLDEST_DUE_AGE_S), NULL);
		r->stats.notification_queue_usage = strtod(PQgetvalue(res, 0, OBR_SAMPLE_QUEUE_USAGE), NULL);
		r->stats.notify_lock_waiters = strtoll(PQgetvalue(res, 0, OBR_SAMPLE_NOTIFY_LOCK_WAITERS), NULL, 10);
		r->stats.sampled_at_unix = relay_realtime_ms() / 1000;
		relay_statement_ok(r, SK_SAMPLE);
	} else {
		relay_statement_failed(r, SK_SAMPLE, s, res, err);
	}
	relay_kick(r);
}

static void on_retention_result(void *arg, const PGresult *res, const char *err)
{
	struct stmt *s = stmt_answer(arg, err);
	if (!s)
		return;
	struct obr_relay *r = s->relay;
	if (!res || err || PQntuples(res) != 1) {
		relay_statement_failed(r, SK_RETENTION, s, res, err ? err : "unexpected result");
		r->retention_wanted = true; /* after the backoff */
		relay_kick(r);
		return;
	}
	relay_statement_ok(r, SK_RETENTION);
	bool got = !strcmp(PQgetvalue(res, 0, 0), "t");
	long long rows = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
	long long leases = strtoll(PQgetvalue(res, 0, 2), NULL, 10);
	r->stats.retention_deleted += (uint64_t)rows;
	if (rows || leases)
		obr_log_debug("retention deleted %lld processed rows and %lld released leases", rows, leases);
	/* a full batch: more is waiting; the next batch goes after whatever else is due */
	if (got && (rows >= r->cfg->retention_batch || leases >= r->cfg->retention_batch))
		r->retention_wanted = true;
	relay_kick(r);
}

/* Sends a statement that needs no state but its parameters; true when it went out. */
static bool send_simple(struct obr_relay *r, const char *sql, int nparams, const char *const *params,
                        obr_pg_result_fn fn)
{
	struct stmt *s = stmt_new(r, &r->work);
	if (s && stmt_send(s, sql, nparams, params, fn))
		return true;
	stmt_free(s);
	return false;
}

/* The gauges for /metrics, every few seconds. */
static bool sample_wanted(struct obr_relay *r)
{
	return r->sample_wanted;
}

static bool sample_send(struct obr_relay *r)
{
	r->sample_wanted = false;
	return send_simple(r, OBR_SQL_SAMPLE, 0, NULL, on_sample_result);
}

/* Retention, the least urgent. */
static bool retention_wanted(struct obr_relay *r)
{
	return r->retention_wanted && !r->scan_wanted;
}

static bool retention_send(struct obr_relay *r)
{
	r->retention_wanted = false;
	const char *params[] = { r->param.retention_ms, r->param.retention_batch };
	return send_simple(r, OBR_SQL_RETENTION, 2, params, on_retention_result);
}

/* One entry of a connection's priorities: when wanted, send; send returns true when the
 * connection is taken (or deliberately held back) for this turn, false to look further. A
 * kind the database refused waits out its backoff; the entries below it go meanwhile. */
struct want {
	enum stmt_kind kind;
	bool (*wanted)(struct obr_relay *r);
	bool (*send)(struct obr_relay *r);
};

static const struct want work_wants[] = {
	{ SK_RENEW, renew_wanted, renew_send },             /* a late renewal lets another instance send our rows */
	{ SK_COMPLETE, complete_wanted, complete_send },    /* results unblock their partitions */
	{ SK_NONE, advance_drop_wanted, advance_drop },     /* at shutdown nothing is fetched any more */
	{ SK_ADVANCE, advance_wanted, advance_send },       /* held with nothing left: more rows, or release */
	{ SK_LASTLOOK, lastlook_wanted, lastlook_send },      /* after releases: rows of writers that skipped NOTIFY */
	{ SK_NONE, release_all_wanted, release_all_send },  /* shutdown: nothing below runs any more */
	{ SK_SELFTEST, listen_selftest_wanted, listen_selftest_send },
	{ SK_SAMPLE, sample_wanted, sample_send },
	{ SK_RETENTION, retention_wanted, retention_send },
};

static const struct want claim_wants[] = {
	{ SK_CLAIM, claim_wanted, claim_send },             /* notified partitions first */
	{ SK_PROBE, linger_probe_wanted, linger_probe_send }, /* new rows of lingering partitions */
	{ SK_SCAN, claim_scan_wanted, claim_send_scan },    /* then partitions no notification announced */
};

static void run_wants(struct obr_relay *r, const struct want *w, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!relay_backing_off(r, w[i].kind) && w[i].wanted(r) && w[i].send(r))
			return;
}

/* A statement found the server read-only: reconnect (pg.c backs off), now that its handler
 * is done with the statement the reset frees. */
static void reset_if_wanted(struct conn *c)
{
	if (!c->reset_wanted)
		return;
	c->reset_wanted = false;
	if (c->drop_session_wanted && obr_pg_drop_session_state(c->pg) == 0) {
		obr_pg_reset(c->pg, "statements run unprepared from now on (a transaction pooler)");
		return;
	}
	obr_pg_reset(c->pg, "the server is read-only");
}

static void on_kick(evutil_socket_t fd, short what, void *arg)
{
	struct obr_relay *r = arg;
	stmt_settle(r, &r->work);
	stmt_settle(r, &r->claim);
	reset_if_wanted(&r->work);
	reset_if_wanted(&r->claim);
	deliver_dispatch(r);
	if (!r->work.running && obr_pg_is_up(r->work.pg))
		run_wants(r, work_wants, sizeof(work_wants) / sizeof(work_wants[0]));
	if (!r->claim.running && !r->stopping && obr_pg_is_up(r->claim.pg))
		run_wants(r, claim_wants, sizeof(claim_wants) / sizeof(claim_wants[0]));
	/* the end of the turn: no callback holds a partition that nothing wants any more */
	part_reap(&r->parts);
}

/* ---- timers ---- */

static void on_linger(evutil_socket_t fd, short what, void *arg)
{
	linger_poke(arg); /* the poll interval is over */
}

static void on_lastlook(evutil_socket_t fd, short what, void *arg)
{
	lastlook_on_timer(arg);
}

static void on_listen_check(evutil_socket_t fd, short what, void *arg)
{
	listen_check(arg);
}

static void on_listen_check_timeout(evutil_socket_t fd, short what, void *arg)
{
	listen_on_check_timeout(arg);
}

static void on_selftest_timeout(evutil_socket_t fd, short what, void *arg)
{
	listen_selftest_timeout(arg);
}

static void on_selftest_retry(evutil_socket_t fd, short what, void *arg)
{
	listen_selftest_retry(arg);
}

/* The fallback poll tick also carries the periodic chores (the listen connection's health
 * check, retention), so an idle relay sends nothing between two polls. */
static void on_poll(evutil_socket_t fd, short what, void *arg)
{
	struct obr_relay *r = arg;
	int64_t now = relay_mono_ms();
	r->scan_wanted = true;
	if (r->cfg->retention_ms > 0 && now - r->last_retention_ms >= RETENTION_EVERY_MS) {
		r->last_retention_ms = now;
		r->retention_wanted = true;
	}
	if (r->listen_pg && r->cfg->health_check_ms == 0)
		listen_check(r);
	relay_kick(r);
}

static void on_due(evutil_socket_t fd, short what, void *arg)
{
	struct obr_relay *r = arg;
	r->due_at_ms = 0;
	r->scan_wanted = true;
	relay_kick(r);
}

static void on_window(evutil_socket_t fd, short what, void *arg)
{
	relay_kick(arg);
}


static void on_backoff(evutil_socket_t fd, short what, void *arg)
{
	relay_backoff_over(arg);
}

static void on_hard_stop(evutil_socket_t fd, short what, void *arg)
{
	struct obr_relay *r = arg;
	obr_log_warn("exiting with %zu delivery results not recorded: their rows will be delivered again", r->marks.len);
	event_base_loopbreak(r->base);
}

static void on_renew(evutil_socket_t fd, short what, void *arg)
{
	struct obr_relay *r = arg;
	if (part_held(&r->parts) > 0) {
		r->renew_wanted = true;
		relay_kick(r);
	}
}

/* ---- connections ---- */

static void on_work_connected(void *arg)
{
	struct obr_relay *r = arg;
	r->scan_wanted = true;
	relay_check_ready(r);
	relay_kick(r);
}

/*
 * A statement connection was lost, maybe in a database crash. Claims commit without waiting for
 * the WAL flush (a lease is not a delivery record; the first result written for a partition,
 * which does wait, makes its lease durable too), so a crash can lose a lease taken a moment
 * before. Rows fetched but not started are dropped: each partition finishes its current row,
 * then an advance checks that the lease is still ours before anything more is sent.
 */
void relay_forget_fetched_rows(struct obr_relay *r)
{
	struct part *p;
	while ((p = part_first(&r->parts, PS_READY))) {
		part_drop_queue(p);
		part_set_state(r, p, PS_ADVANCE_WANTED);
	}
	for (p = part_first(&r->parts, PS_DELIVERING); p; p = p->next)
		part_drop_queue(p);
}

static void on_work_disconnected(void *arg, const char *why)
{
	struct obr_relay *r = arg;
	r->stats.reconnects++;
	stmt_forget_all(&r->work, why);
	relay_forget_fetched_rows(r);
}

static void on_claim_disconnected(void *arg, const char *why)
{
	struct obr_relay *r = arg;
	r->stats.reconnects++;
	stmt_forget_all(&r->claim, why);
	relay_forget_fetched_rows(r);
}

/* ---- shutdown ---- */

static void on_grace(evutil_socket_t fd, short what, void *arg)
{
	struct obr_relay *r = arg;
	int n = obr_sender_in_flight(r->sender);
	if (n > 0)
		obr_log_warn("shutdown grace period over: abandoning %d requests in flight (their rows will be sent again)", n);
	obr_sender_abort_all(r->sender);
	deliver_abandon(r);
	if (!obr_pg_is_up(r->work.pg)) {
		obr_log_warn("database unreachable at shutdown: leases expire by themselves");
		event_base_loopbreak(r->base);
		return;
	}
	/* write what can still be written, then go, whatever the database says */
	relay_timer_ms(r->hard_stop_ev, HARD_STOP_AFTER_GRACE_MS);
	relay_kick(r);
}

void obr_relay_shutdown(struct obr_relay *r)
{
	if (r->stopping)
		return;
	r->stopping = true;
	obr_log_info("shutting down: %d rows in flight, grace period %lld ms", relay_active(r),
	             (long long)r->cfg->shutdown_grace_ms);
	struct part *p;
	while ((p = part_first(&r->parts, PS_CLAIM_WANTED)))
		part_set_state(r, p, PS_IDLE);
	linger_stop(r);
	evtimer_del(r->poll_ev);
	evtimer_del(r->due_ev);
	relay_timer_ms(r->grace_ev, r->cfg->shutdown_grace_ms);
	relay_kick(r);
}

/* ---- lifecycle ---- */

struct obr_relay *obr_relay_new(struct event_base *base, const struct obr_config *cfg)
{
	struct obr_relay *r = calloc(1, sizeof(*r));
	if (!r)
		return NULL;
	r->base = base;
	r->cfg = cfg;
	uuid_t id;
	uuid_generate_random(id);
	uuid_unparse_lower(id, r->lock_id);
	snprintf(r->param.batch, sizeof(r->param.batch), "%lld", (long long)cfg->batch_size);
	snprintf(r->param.lease, sizeof(r->param.lease), "%lld", (long long)cfg->lease_ms);
	snprintf(r->param.claim_limit, sizeof(r->param.claim_limit), "%lld", (long long)cfg->claim_limit);
	snprintf(r->param.retention_ms, sizeof(r->param.retention_ms), "%lld", (long long)cfg->retention_ms);
	snprintf(r->param.retention_batch, sizeof(r->param.retention_batch), "%lld", (long long)cfg->retention_batch);

	bool table_ok = part_table_init(&r->parts) == 0 &&
	                obr_hosts_init(&r->hosts, (int)cfg->host_max_in_flight, (int)cfg->circuit_failures) == 0;
	struct obr_send_options sopt = { .timeout_ms = (long)cfg->http_timeout_ms,
		                         .ca_file = cfg->ca_file,
		                         .tls_verify = cfg->tls_verify,
		                         .deny_private = cfg->deny_private_addresses,
		                         .allowed_hosts = cfg->allowed_hosts,
		                         .proxy = cfg->http_proxy,
		                         .webhook_secret = cfg->webhook_secret };
	if (!cfg->tls_verify)
		obr_log_warn("OUTBOX_TLS_VERIFY is off: HTTPS certificates and host names are not checked");
	char send_err[256];
	r->sender = obr_senders_new(base, &sopt, send_err, sizeof(send_err));
	if (!r->sender) {
		obr_log_error("%s", send_err);
		goto fail;
	}
	r->kick_ev = event_new(base, -1, 0, on_kick, r);
	r->poll_ev = event_new(base, -1, EV_PERSIST, on_poll, r);
	r->due_ev = evtimer_new(base, on_due, r);
	r->renew_ev = event_new(base, -1, EV_PERSIST, on_renew, r);
	r->listen_check_ev = event_new(base, -1, EV_PERSIST, on_listen_check, r);
	r->listen_check_timeout_ev = evtimer_new(base, on_listen_check_timeout, r);
	r->grace_ev = evtimer_new(base, on_grace, r);
	r->backoff_ev = evtimer_new(base, on_backoff, r);
	r->selftest_timeout_ev = evtimer_new(base, on_selftest_timeout, r);
	r->selftest_retry_ev = evtimer_new(base, on_selftest_retry, r);
	r->claim_window_ev = evtimer_new(base, on_window, r);
	r->marks_window_ev = evtimer_new(base, on_window, r);
	r->hard_stop_ev = evtimer_new(base, on_hard_stop, r);
	r->settle_ev = evtimer_new(base, on_window, r);
	r->lastlook.ev = evtimer_new(base, on_lastlook, r);
	lastlook_init(r);
	r->linger.ev = evtimer_new(base, on_linger, r);
	linger_init(r);
	for (int k = 0; k < SK_KINDS; k++)
		obr_backoff_init(&r->backoff[k], STMT_BACKOFF_MIN_MS, STMT_BACKOFF_MAX_MS);
	r->statement_limit = MAX_STATEMENT_BYTES;
	r->stats.due_rows = -1;
	r->stats.oldest_due_age_s = -1;
	r->stats.notification_queue_usage = -1;
	r->stats.notify_lock_waiters = -1;
	r->stats.listen_selftest_ok = -1;
	if (!r->backoff_ev || !r->selftest_timeout_ev || !r->selftest_retry_ev || !r->hard_stop_ev || !r->settle_ev || !r->lastlook.ev || !r->linger.ev || !r->claim_window_ev || !r->marks_window_ev || !table_ok ||
	    !r->kick_ev || !r->poll_ev || !r->due_ev || !r->renew_ev || !r->listen_check_ev ||
	    !r->listen_check_timeout_ev || !r->grace_ev)
		goto fail;

	/* In listen mode the statement connections are ours alone: the hot statements are prepared
	 * once (planning cost more than executing them). Claims do not wait for the WAL flush (see
	 * forget_fetched_rows): that flush would sit between the writer's commit and the request.
	 * Results wait for it unless asked otherwise (OUTBOX_SYNCHRONOUS_COMMIT). Poll mode keeps no
	 * session state: it may run through a transaction pooler. */
	static const struct obr_pg_statement work_prepared[] = {
		{ "obr_advance", OBR_SQL_ADVANCE },
		{ "obr_complete", OBR_SQL_COMPLETE },
		{ "obr_complete_delete", OBR_SQL_COMPLETE_DELETE },
		{ "obr_lastlook", OBR_SQL_LASTLOOK },
		{ NULL, NULL },
	};
	static const struct obr_pg_statement claim_prepared[] = {
		{ "obr_claim", OBR_SQL_CLAIM },
		{ "obr_probe", OBR_SQL_PROBE },
		{ NULL, NULL },
	};
	bool session = cfg->mode == OBR_MODE_LISTEN;
	/* Generic plans: with the default plan_cache_mode PostgreSQL kept re-planning the results
	 * statement on nearly every execution (its generic plan is estimated dearer than a custom
	 * plan), and planning it costs more than running it (contrib/bench, analysis). */
	const char *generic = "SET plan_cache_mode = force_generic_plan";
	const char *generic_async = "SET plan_cache_mode = force_generic_plan; SET synchronous_commit = off";
	const char *work_setup = session ? (cfg->synchronous_commit ? generic : generic_async) : NULL;
	const char *claim_setup = session ? generic_async : NULL;
	struct obr_pg_callbacks work_cb = { on_work_connected, on_work_disconnected, NULL };
	struct obr_pg_callbacks claim_cb = { on_work_connected, on_claim_disconnected, NULL };
	r->work.pg = obr_pg_new(base, cfg->database_url, "outbox-relay work", work_setup, session ? work_prepared : NULL,
	                        &work_cb, r);
	r->claim.pg = obr_pg_new(base, cfg->database_url, "outbox-relay claim", claim_setup, session ? claim_prepared : NULL,
	                         &claim_cb, r);
	if (!r->work.pg || !r->claim.pg)
		goto fail;
	/* a statement stalled on the connection that renews (a lock wait, an I/O stall, a
	 * synchronous standby away) is cancelled well before the lease could expire behind it */
	if (session && obr_pg_set_statement_timeout(r->work.pg, (int)(cfg->lease_ms / STATEMENT_TIMEOUT_SHARE)))
		goto fail;
	if (cfg->mode == OBR_MODE_LISTEN) {
		char listen_sql[128];
		snprintf(listen_sql, sizeof(listen_sql), "LISTEN %s", cfg->channel);
		struct obr_pg_callbacks listen_cb = { listen_on_connected, listen_on_disconnected, listen_on_notify };
		r->listen_pg = obr_pg_new(base, cfg->database_url, "outbox-relay listen", listen_sql, NULL, &listen_cb, r);
		if (!r->listen_pg)
			goto fail;
	}
	return r;
fail:
	obr_relay_free(r);
	return NULL;
}

int obr_relay_start(struct obr_relay *r)
{
	struct timeval tv = obr_timeval_from_ms(r->cfg->poll_interval_ms);
	event_add(r->poll_ev, &tv);
	tv = obr_timeval_from_ms(r->cfg->lease_ms / 3);
	event_add(r->renew_ev, &tv);
	r->sample_wanted = true;
	r->last_sample_ms = relay_mono_ms();
	if (r->cfg->retention_ms > 0) {
		r->retention_wanted = true;
		r->last_retention_ms = relay_mono_ms();
	}
	if (r->listen_pg) {
		if (r->cfg->health_check_ms > 0) {
			tv = obr_timeval_from_ms(r->cfg->health_check_ms);
			event_add(r->listen_check_ev, &tv);
		}
		obr_pg_start(r->listen_pg);
	}
	obr_pg_start(r->work.pg);
	obr_pg_start(r->claim.pg);
	obr_log_info("outbox-relay %s starting: mode %s, instance %s", OBR_VERSION, obr_mode_name(r->cfg->mode), r->lock_id);
	return 0;
}

const struct obr_relay_stats *obr_relay_stats(struct obr_relay *r)
{
	/* a scrape asks for fresh gauges; the answer serves the next scrape (no query when idle
	 * and nobody looks, and never more than one every SAMPLE_MS) */
	int64_t now = relay_mono_ms();
	if (now - r->last_sample_ms >= SAMPLE_MS) {
		r->last_sample_ms = now;
		r->sample_wanted = true;
		relay_kick(r);
	}
	r->stats.in_flight_requests = obr_sender_in_flight(r->sender);
	r->stats.leases_held = (int64_t)part_held(&r->parts);
	r->stats.partitions_lingering = (int64_t)part_lingering(&r->parts);
	r->stats.circuits_open = (int64_t)obr_hosts_open_count(&r->hosts);
	r->stats.nhosts = 0;
	for (size_t i = 0; i < r->hosts.nbuckets && r->stats.nhosts < OBR_HOST_STATS; i++)
		for (const struct obr_host *h = r->hosts.buckets[i]; h && r->stats.nhosts < OBR_HOST_STATS; h = h->hash_next) {
			if (!h->in_flight && !h->failures && !h->open_until_ms)
				continue; /* idle and healthy: no series */
			size_t k = r->stats.nhosts++;
			snprintf(r->stats.hosts[k].name, sizeof(r->stats.hosts[k].name), "%s", h->name);
			r->stats.hosts[k].in_flight = h->in_flight;
			r->stats.hosts[k].failures = h->failures;
			r->stats.hosts[k].open = h->open_until_ms != 0;
		}
	return &r->stats;
}

bool obr_relay_ready(const struct obr_relay *r, char *why, size_t whylen)
{
	if (r->stopping) {
		snprintf(why, whylen, "shutting down");
		return false;
	}
	if (r->read_only) {
		snprintf(why, whylen, "the database is read-only (SQLSTATE 25006: a standby, or a primary fenced or demoted "
		                      "in a failover); reconnecting until writes work");
		return false;
	}
	if (!obr_pg_is_up(r->work.pg) || !obr_pg_is_up(r->claim.pg)) {
		snprintf(why, whylen, "database connection is down");
		return false;
	}
	if (r->listen_pg && !r->listen_ready) {
		snprintf(why, whylen, "LISTEN is not active (listen connection down)");
		return false;
	}
	if (r->listen_deaf) {
		snprintf(why, whylen, "LISTEN hears no notifications (the relay's own test notification did not arrive: a "
		                      "transaction pooler?); polling every %lld ms instead",
		         (long long)(r->cfg->poll_interval_ms < DEAF_POLL_MS ? r->cfg->poll_interval_ms : DEAF_POLL_MS));
		return false;
	}
	if (!r->listen_pg && !r->first_scan_done) {
		snprintf(why, whylen, "first poll not done yet");
		return false;
	}
	return true;
}

void obr_relay_free(struct obr_relay *r)
{
	if (!r)
		return;
	/* pg.c answers the statements still queued: tearing_down makes their callbacks no-ops,
	 * and the ledgers free what the statements own afterwards */
	r->tearing_down = true;
	obr_pg_free(r->listen_pg);
	obr_pg_free(r->work.pg);
	obr_pg_free(r->claim.pg);
	stmt_forget_all(&r->work, NULL);
	stmt_forget_all(&r->claim, NULL);
	obr_sender_abort_all(r->sender);
	part_table_free(&r->parts);
	obr_hosts_free(&r->hosts);
	for (size_t i = 0; i < r->marks.len; i++)
		mark_free(r->marks.items[i]);
	free(r->marks.items);
	obr_sender_free(r->sender);
	struct event *evs[] = { r->kick_ev, r->poll_ev, r->due_ev, r->renew_ev, r->listen_check_ev,
		                r->listen_check_timeout_ev, r->grace_ev,
		                r->backoff_ev, r->selftest_timeout_ev, r->selftest_retry_ev, r->hard_stop_ev, r->settle_ev, r->claim_window_ev, r->marks_window_ev };
	for (size_t i = 0; i < sizeof(evs) / sizeof(evs[0]); i++)
		if (evs[i])
			event_free(evs[i]);
	if (r->lastlook.ev)
		event_free(r->lastlook.ev);
	if (r->linger.ev)
		event_free(r->linger.ev);
	lastlook_free(r);
	free(r);
}
