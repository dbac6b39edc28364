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
#include "util/log.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uuid/uuid.h>

const double obr_latency_bounds[OBR_LATENCY_BUCKETS] = {
	0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
};

/* ---- small helpers ---- */

int64_t relay_mono_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
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

static struct timeval ms_timeval(int64_t ms)
{
	return (struct timeval){ (time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000) };
}

void relay_timer_ms(struct event *ev, int64_t ms)
{
	struct timeval tv = ms_timeval(ms < 0 ? 0 : ms);
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

int relay_active(const struct obr_relay *r)
{
	return (int)(part_count(&r->parts, PS_DELIVERING) + part_count(&r->parts, PS_LOST));
}

bool relay_senders_idle(const struct obr_relay *r)
{
	return obr_sender_in_flight(r->sender) == 0;
}

/* ---- statements: the ledger of each connection ---- */

struct stmt *stmt_new(struct obr_relay *r, struct conn *c)
{
	struct stmt *s = calloc(1, sizeof(*s));
	if (s) {
		s->relay = r;
		s->conn = c;
	}
	return s;
}

void stmt_free(struct stmt *s)
{
	if (!s)
		return;
	for (size_t i = 0; i < s->marks.len; i++)
		mark_free(s->marks.items[i]);
	free(s->marks.items);
	PQclear(s->res);
	free(s->err);
	free(s);
}

static void hand_over(struct stmt *s, const PGresult *res, const char *err)
{
	s->handed_over = true;
	s->handler(s, res, err);
}

/* pg.c's callback for every statement of the ledger. */
static void on_stmt_answer(void *arg, const PGresult *res, const char *err)
{
	struct stmt *s = arg;
	if (s->answered) {
		/* another result of the same statement: an error means it failed after all */
		obr_log_warn("%s after the statement's result", err ? err : "another result");
		if (err && !s->handed_over) {
			free(s->err);
			s->err = strdup(err);
			if (!s->err) {
				PQclear(s->res);
				s->res = NULL; /* its outcome is unknown: as if the connection was lost */
			}
		}
		return;
	}
	s->answered = true;
	if (!res) {
		hand_over(s, NULL, err); /* the connection was lost: pg.c is done with it */
		return;
	}
	/* the answer itself, not a copy: a claim's rows can be many megabytes */
	s->res = obr_pg_keep_result(s->conn->pg, res);
	s->err = err ? strdup(err) : NULL;
	if (!s->res || (err && !s->err)) {
		PQclear(s->res);
		s->res = NULL;
		obr_log_error("out of memory keeping a statement's result");
	}
	relay_kick(s->relay); /* handed over when the statement has ended (stmt_settle) */
}

bool stmt_send(struct stmt *s, const char *sql, int nparams, const char *const *params, obr_pg_result_fn fn)
{
	struct conn *c = s->conn;
	s->handler = fn;
	if (c->tail)
		c->tail->next = s;
	else
		c->head = s;
	c->tail = s;
	/* before the query: a connection that fails at once answers inside obr_pg_query */
	c->running = true;
	if (obr_pg_query(c->pg, sql, nparams, params, on_stmt_answer, s) == 0)
		return true;
	c->running = false;
	struct stmt **pp = &c->head, *prev = NULL;
	while (*pp != s) {
		prev = *pp;
		pp = &(*pp)->next;
	}
	*pp = NULL;
	c->tail = prev;
	return false;
}

struct stmt *stmt_answer(void *arg, const char *err)
{
	struct stmt *s = arg;
	struct conn *c = s->conn;
	c->running = false;
	/* pg.c runs statements in order: whatever was sent before is done with */
	while (c->head != s) {
		struct stmt *done = c->head;
		c->head = done->next;
		stmt_free(done);
	}
	return s->relay->tearing_down ? NULL : s;
}

/* Hands over the connection's answered statement once pg.c has finished it (read its end);
 * until then the answer may still turn into an error. */
static void stmt_settle(struct obr_relay *r, struct conn *c)
{
	struct stmt *s = c->tail;
	if (!s || !s->answered || s->handed_over)
		return;
	if (obr_pg_pending(c->pg) > 0) {
		relay_timer_ms(r->settle_ev, 1); /* its end is not read yet (rare: usually one packet) */
		return;
	}
	PGresult *res = s->res;
	s->res = NULL;
	if (res)
		hand_over(s, res, s->err);
	else
		hand_over(s, NULL, "out of memory");
	PQclear(res);
}

/* The connection is lost: pg.c has answered every statement on it and forgotten them. A
 * statement answered but not ended did not commit, as far as anyone knows. */
static void stmt_forget_all(struct conn *c, const char *why)
{
	struct stmt *s = c->tail;
	if (s && s->answered && !s->handed_over && !s->relay->tearing_down)
		hand_over(s, NULL, why);
	while (c->head) {
		s = c->head;
		c->head = s->next;
		stmt_free(s);
	}
	c->tail = NULL;
	c->running = false;
}

/* ---- the scheduler ---- */

static void on_sample_result(void *arg, const PGresult *res, const char *err)
{
	struct stmt *s = stmt_answer(arg, err);
	if (!s)
		return;
	struct obr_relay *r = s->relay;
	if (res && !err && PQntuples(res) == 1) {
		r->stats.due_rows = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
		r->stats.oldest_due_age_s = strtod(PQgetvalue(res, 0, 1), NULL);
		r->stats.notification_queue_usage = strtod(PQgetvalue(res, 0, 2), NULL);
		r->stats.sampled_at_unix = relay_realtime_ms() / 1000;
	} else {
		relay_statement_error("sample", err);
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
		relay_statement_error("retention", err);
		relay_kick(r);
		return;
	}
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
 * connection is taken (or deliberately held back) for this turn, false to look further. */
struct want {
	bool (*wanted)(struct obr_relay *r);
	bool (*send)(struct obr_relay *r);
};

static const struct want work_wants[] = {
	{ renew_wanted, renew_send },             /* a late renewal lets another instance send our rows */
	{ complete_wanted, complete_send },       /* results unblock their partitions */
	{ advance_drop_wanted, advance_drop },    /* at shutdown nothing is fetched any more */
	{ advance_wanted, advance_send },         /* held with nothing left: more rows, or release */
	{ release_all_wanted, release_all_send }, /* shutdown: nothing below runs any more */
	{ sample_wanted, sample_send },
	{ retention_wanted, retention_send },
};

static const struct want claim_wants[] = {
	{ claim_wanted, claim_send },             /* notified partitions first */
	{ claim_scan_wanted, claim_send_scan },   /* then partitions no notification announced */
};

static void run_wants(struct obr_relay *r, const struct want *w, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (w[i].wanted(r) && w[i].send(r))
			return;
}

static void on_kick(evutil_socket_t fd, short what, void *arg)
{
	struct obr_relay *r = arg;
	stmt_settle(r, &r->work);
	stmt_settle(r, &r->claim);
	deliver_dispatch(r);
	if (!r->work.running && obr_pg_is_up(r->work.pg))
		run_wants(r, work_wants, sizeof(work_wants) / sizeof(work_wants[0]));
	if (!r->claim.running && !r->stopping && obr_pg_is_up(r->claim.pg))
		run_wants(r, claim_wants, sizeof(claim_wants) / sizeof(claim_wants[0]));
	/* the end of the turn: no callback holds a partition that nothing wants any more */
	part_reap(&r->parts);
}

void relay_kick(struct obr_relay *r)
{
	if (r->kick_ev)
		event_active(r->kick_ev, EV_TIMEOUT, 0);
}

/* ---- timers ---- */

static void on_listen_check(evutil_socket_t fd, short what, void *arg)
{
	listen_check(arg);
}

static void on_listen_check_timeout(evutil_socket_t fd, short what, void *arg)
{
	listen_on_check_timeout(arg);
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

static void on_complete_retry(evutil_socket_t fd, short what, void *arg)
{
	struct obr_relay *r = arg;
	r->complete_paused = false;
	relay_kick(r);
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

	bool table_ok = part_table_init(&r->parts) == 0;
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
	r->complete_retry_ev = evtimer_new(base, on_complete_retry, r);
	r->claim_window_ev = evtimer_new(base, on_window, r);
	r->marks_window_ev = evtimer_new(base, on_window, r);
	r->hard_stop_ev = evtimer_new(base, on_hard_stop, r);
	r->settle_ev = evtimer_new(base, on_window, r);
	r->complete_backoff_ms = COMPLETE_BACKOFF_MIN_MS;
	r->statement_limit = MAX_STATEMENT_BYTES;
	r->stats.due_rows = -1;
	r->stats.oldest_due_age_s = -1;
	r->stats.notification_queue_usage = -1;
	if (!r->complete_retry_ev || !r->hard_stop_ev || !r->settle_ev || !r->claim_window_ev || !r->marks_window_ev || !table_ok ||
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
		{ NULL, NULL },
	};
	static const struct obr_pg_statement claim_prepared[] = {
		{ "obr_claim", OBR_SQL_CLAIM },
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
	struct timeval tv = ms_timeval(r->cfg->poll_interval_ms);
	event_add(r->poll_ev, &tv);
	tv = ms_timeval(r->cfg->lease_ms / 3);
	event_add(r->renew_ev, &tv);
	r->sample_wanted = true;
	r->last_sample_ms = relay_mono_ms();
	if (r->cfg->retention_ms > 0) {
		r->retention_wanted = true;
		r->last_retention_ms = relay_mono_ms();
	}
	if (r->listen_pg) {
		if (r->cfg->health_check_ms > 0) {
			tv = ms_timeval(r->cfg->health_check_ms);
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
	return &r->stats;
}

bool obr_relay_ready(const struct obr_relay *r, char *why, size_t whylen)
{
	if (r->stopping) {
		snprintf(why, whylen, "shutting down");
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
	for (size_t i = 0; i < r->marks.len; i++)
		mark_free(r->marks.items[i]);
	free(r->marks.items);
	obr_sender_free(r->sender);
	struct event *evs[] = { r->kick_ev, r->poll_ev, r->due_ev, r->renew_ev, r->listen_check_ev,
		                r->listen_check_timeout_ev, r->grace_ev,
		                r->complete_retry_ev, r->hard_stop_ev, r->settle_ev, r->claim_window_ev, r->marks_window_ev };
	for (size_t i = 0; i < sizeof(evs) / sizeof(evs[0]); i++)
		if (evs[i])
			event_free(evs[i]);
	free(r);
}
