/*
 * pg.c - asynchronous libpq connection on a libevent loop.
 */
#include "db/pg.h"

#include "db/pgaddr.h"
#include "db/pgresolve.h"
#include "util/log.h"
#include "util/strbuf.h"

#include <event2/event.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 10000
/* a session lost sooner than this after it was ready does not reset the backoff: a server
 * that takes connections but fails them (read-only after a failover) is not hammered */
#define STABLE_MS 2000

struct query {
	struct query *next;
	const char *prepared;       /* statement name when the caller's sql is a prepared one */
	char *sql;
	int nparams;
	char **values;
	obr_pg_result_fn fn;
	void *arg;
	PGresult *res;              /* the answer, handed over when the statement has ended */
};

enum pg_state { PG_IDLE, PG_RESOLVING, PG_CONNECTING, PG_SETUP, PG_READY, PG_WAITING };

struct obr_pg {
	struct event_base *base;
	struct obr_pg_target target;
	char *name;
	char *caller_setup;
	char *setup_sql;            /* SET statement_timeout, the caller's setup, the PREPAREs */
	const struct obr_pg_statement *prepared;
	int statement_timeout_ms;
	struct obr_pg_callbacks cb;
	void *arg;

	PGconn *conn;
	enum pg_state state;
	struct event *io;          /* on PQsocket; re-created whenever the socket changes */
	short io_what;
	int io_fd;
	struct event *retry;       /* reconnect backoff timer */
	struct event *send_failed; /* a send failed inside obr_pg_query: handled from the loop */
	struct event *timeout;     /* connect_timeout of the current attempt */
	int backoff_ms;
	int64_t ready_since_ms;
	uint64_t reconnects;
	bool ever_connected;

	struct obr_pg_resolver *resolver;
	struct obr_pg_host *entries; /* the attempts of this connect, names resolved */
	int nentries;
	int first;                 /* entries before it timed out: libpq gets the rest */
	int cur;                   /* the entry libpq is trying, -1: not known yet */

	struct query *head, *tail; /* head is running when busy */
	bool busy;
	struct query *handing;     /* the statement whose callback is running */
};

static void on_io(evutil_socket_t fd, short what, void *arg);
static void start_connect(struct obr_pg *pg);
static void connect_entries(struct obr_pg *pg);

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void query_free(struct query *q)
{
	if (!q)
		return;
	for (int i = 0; i < q->nparams; i++)
		free(q->values[i]);
	free(q->values);
	free(q->sql);
	PQclear(q->res);
	free(q);
}

/* Watches PQsocket() for what (the event is kept while socket and events stay the same). */
static void watch(struct obr_pg *pg, short what)
{
	int fd = PQsocket(pg->conn);
	if (pg->io && pg->io_what == what && pg->io_fd == fd)
		return;
	if (pg->io) {
		event_free(pg->io);
		pg->io = NULL;
	}
	if (fd < 0)
		return;
	pg->io = event_new(pg->base, fd, (short)(what | EV_PERSIST), on_io, pg);
	if (!pg->io)
		return;
	pg->io_what = what;
	pg->io_fd = fd;
	event_add(pg->io, NULL);
}

static void arm_timeout(struct obr_pg *pg)
{
	if (pg->target.connect_timeout_s <= 0)
		return;
	struct timeval tv = { pg->target.connect_timeout_s, 0 };
	evtimer_add(pg->timeout, &tv);
}

static void drop_entries(struct obr_pg *pg)
{
	for (int i = 0; i < pg->nentries; i++)
		obr_pg_host_clear(&pg->entries[i]);
	free(pg->entries);
	pg->entries = NULL;
	pg->nentries = pg->first = 0;
	pg->cur = -1;
}

/* Fails every queued statement: the connection they were meant for is gone. why NULL: drop
 * them without callbacks (the owner is being torn down). */
static void fail_queue(struct obr_pg *pg, const char *why)
{
	struct query *q = pg->head;
	pg->head = pg->tail = NULL;
	pg->busy = false;
	while (q) {
		struct query *next = q->next;
		if (why)
			q->fn(q->arg, NULL, why);
		query_free(q);
		q = next;
	}
}

static void schedule_reconnect(struct obr_pg *pg, const char *why)
{
	bool was_ready = pg->state == PG_READY || pg->state == PG_SETUP;
	if (pg->state == PG_READY && mono_ms() - pg->ready_since_ms >= STABLE_MS)
		pg->backoff_ms = BACKOFF_MIN_MS;
	if (pg->io) {
		event_free(pg->io);
		pg->io = NULL;
	}
	evtimer_del(pg->timeout);
	obr_pg_resolver_cancel(pg->resolver);
	drop_entries(pg);
	if (pg->conn) {
		PQfinish(pg->conn);
		pg->conn = NULL;
	}
	pg->state = PG_WAITING;
	fail_queue(pg, why);
	if (was_ready && pg->cb.disconnected)
		pg->cb.disconnected(pg->arg, why);

	/* exponential backoff with full jitter in [backoff/2, backoff] */
	int delay = pg->backoff_ms / 2 + (int)(random() % (pg->backoff_ms / 2 + 1));
	pg->backoff_ms = pg->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : pg->backoff_ms * 2;
	obr_log_warn("%s connection lost, reconnecting in %d ms: %s", pg->name, delay, why);
	struct timeval tv = { delay / 1000, (delay % 1000) * 1000 };
	evtimer_add(pg->retry, &tv);
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
	struct obr_pg *pg = arg;
	pg->reconnects++;
	start_connect(pg);
}

static void conn_error(struct obr_pg *pg, const char *prefix)
{
	char why[512];
	const char *msg = pg->conn ? PQerrorMessage(pg->conn) : "no connection";
	snprintf(why, sizeof(why), "%s: %s", prefix, msg && *msg ? msg : "unknown error");
	/* libpq messages end with a newline */
	obr_trim_end(why, " \n");
	schedule_reconnect(pg, why);
}

static void on_send_failed(evutil_socket_t fd, short what, void *arg)
{
	struct obr_pg *pg = arg;
	if (pg->state == PG_READY)
		conn_error(pg, "could not send query");
}

/* A failed send fails every queued statement, but not from here: send_next runs inside
 * obr_pg_query, and a callback that ran before obr_pg_query returned would meet an owner that
 * has not yet recorded the statement as running (and may free what the caller still uses). */
static void send_next(struct obr_pg *pg)
{
	if (pg->state != PG_READY || pg->busy || !pg->head)
		return;
	struct query *q = pg->head;
	int sent = q->prepared
	                   ? PQsendQueryPrepared(pg->conn, q->prepared, q->nparams, (const char *const *)q->values, NULL, NULL, 0)
	                   : PQsendQueryParams(pg->conn, q->sql, q->nparams, NULL, (const char *const *)q->values, NULL, NULL, 0);
	if (!sent) {
		event_active(pg->send_failed, EV_TIMEOUT, 1);
		return;
	}
	pg->busy = true;
	int f = PQflush(pg->conn);
	if (f < 0) {
		event_active(pg->send_failed, EV_TIMEOUT, 1);
		return;
	}
	watch(pg, f > 0 ? (EV_READ | EV_WRITE) : EV_READ);
}

static void setup_done(struct obr_pg *pg)
{
	pg->state = PG_READY;
	pg->ready_since_ms = mono_ms();
	evtimer_del(pg->timeout);
	drop_entries(pg);
	if (pg->ever_connected)
		obr_log_info("%s connection re-established", pg->name);
	else
		obr_log_debug("%s connection established", pg->name);
	pg->ever_connected = true;
	watch(pg, EV_READ);
	if (pg->cb.connected)
		pg->cb.connected(pg->arg);
	send_next(pg);
}

static void deliver_notifications(struct obr_pg *pg)
{
	PGnotify *n;
	while (pg->conn && (n = PQnotifies(pg->conn)) != NULL) {
		if (pg->cb.notify)
			pg->cb.notify(pg->arg, n->relname, n->extra);
		PQfreemem(n);
	}
}

/* Reads whatever arrived; completes the running statement when all its results are in. */
static void read_results(struct obr_pg *pg)
{
	if (!PQconsumeInput(pg->conn)) {
		conn_error(pg, "connection failed");
		return;
	}
	deliver_notifications(pg);

	while (pg->busy && !PQisBusy(pg->conn)) {
		/* a statement yields one result (or an error), then NULL */
		PGresult *res = PQgetResult(pg->conn);
		if (pg->state == PG_SETUP) {
			if (!res) {
				pg->busy = false;
				setup_done(pg);
				return;
			}
			ExecStatusType st = PQresultStatus(res);
			if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
				char why[512];
				snprintf(why, sizeof(why), "setup statement failed: %s", PQresultErrorMessage(res));
				PQclear(res);
				schedule_reconnect(pg, why);
				return;
			}
			PQclear(res);
			continue;
		}
		struct query *q = pg->head;
		if (res) {
			/* keep the statement's answer until it has ended: a result can still be followed
			 * by an error (a backend terminated before the commit at Sync), and then the
			 * statement did not happen */
			ExecStatusType st = PQresultStatus(res);
			if (st == PGRES_FATAL_ERROR && PQstatus(pg->conn) == CONNECTION_BAD) {
				PQclear(res);
				conn_error(pg, "connection failed");
				return;
			}
			if (!q->res || st == PGRES_FATAL_ERROR) {
				PQclear(q->res);
				q->res = res;
			} else {
				PQclear(res);
			}
			continue;
		}
		/* the statement has ended: its owner hears of it once, with its outcome (an error is
		 * a result too: the owner decides what it means for its rows) */
		pg->busy = false;
		pg->head = q->next;
		if (!pg->head)
			pg->tail = NULL;
		const char *err = NULL;
		if (!q->res)
			err = "no result";
		else if (PQresultStatus(q->res) == PGRES_FATAL_ERROR)
			err = PQresultErrorMessage(q->res);
		pg->handing = q;
		q->fn(q->arg, q->res, err);
		pg->handing = NULL;
		query_free(q);
		if (!pg->conn) /* the callback reset us */
			return;
		send_next(pg);
	}
	deliver_notifications(pg);
}

/* Which entry is libpq trying? A new one gets its own connect_timeout. */
static void track_attempt(struct obr_pg *pg)
{
	int i = obr_pg_host_find(pg->entries + pg->first, pg->nentries - pg->first, PQhost(pg->conn),
	                         PQport(pg->conn), PQhostaddr(pg->conn));
	if (i < 0 || pg->first + i == pg->cur)
		return;
	pg->cur = pg->first + i;
	arm_timeout(pg);
}

/* The socket may be a new one after any step (libpq closed the last and tried the next
 * address, often under the same descriptor number, which epoll no longer watches): the
 * event is made anew every time. */
static void rewatch(struct obr_pg *pg, short what)
{
	if (pg->io) {
		event_free(pg->io);
		pg->io = NULL;
	}
	track_attempt(pg);
	watch(pg, what);
}

static void continue_connect(struct obr_pg *pg)
{
	switch (PQconnectPoll(pg->conn)) {
	case PGRES_POLLING_READING:
		rewatch(pg, EV_READ);
		return;
	case PGRES_POLLING_WRITING:
		rewatch(pg, EV_WRITE);
		return;
	case PGRES_POLLING_FAILED:
		conn_error(pg, "could not connect");
		return;
	case PGRES_POLLING_OK:
		break;
	default:
		return;
	}
	if (PQsetnonblocking(pg->conn, 1) != 0) {
		conn_error(pg, "could not set non-blocking mode");
		return;
	}
	/* the setup statements still run under the connect timer: a server that accepts and
	 * then says nothing must not hold the connection in "connecting" */
	if (pg->setup_sql) {
		pg->state = PG_SETUP;
		if (!PQsendQuery(pg->conn, pg->setup_sql)) {
			conn_error(pg, "could not send setup statement");
			return;
		}
		pg->busy = true;
		int f = PQflush(pg->conn);
		if (f < 0) {
			conn_error(pg, "could not send setup statement");
			return;
		}
		watch(pg, f > 0 ? (EV_READ | EV_WRITE) : EV_READ);
	} else {
		setup_done(pg);
	}
}

static void on_io(evutil_socket_t fd, short what, void *arg)
{
	struct obr_pg *pg = arg;

	if (pg->state == PG_CONNECTING) {
		continue_connect(pg);
		return;
	}
	if (what & EV_WRITE) {
		int f = PQflush(pg->conn);
		if (f < 0) {
			conn_error(pg, "could not send");
			return;
		}
		if (f == 0)
			watch(pg, EV_READ);
	}
	if (what & EV_READ)
		read_results(pg);
}

/* Server messages outside a query (a WARNING, the FATAL of a terminated backend) go to our
 * log instead of libpq's default raw line on stderr. */
static void on_notice(void *arg, const PGresult *res)
{
	struct obr_pg *pg = arg;
	char msg[1024];
	snprintf(msg, sizeof(msg), "%s", PQresultErrorMessage(res));
	obr_trim_end(msg, " \n");
	const char *severity = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
	if (severity && (!strcmp(severity, "NOTICE") || !strcmp(severity, "INFO") || !strcmp(severity, "LOG") ||
	                 !strncmp(severity, "DEBUG", 5)))
		obr_log_debug("%s connection: server says: %s", pg->name, msg);
	else
		obr_log_warn("%s connection: server says: %s", pg->name, msg);
}

/* Starts libpq on entries[first..nentries): numeric addresses only, so it never blocks. */
static void connect_entries(struct obr_pg *pg)
{
	char **keys, **vals;
	if (obr_pg_params_build(&pg->target, pg->entries + pg->first, pg->nentries - pg->first, pg->name, &keys, &vals)) {
		schedule_reconnect(pg, "out of memory");
		return;
	}
	pg->conn = PQconnectStartParams((const char *const *)keys, (const char *const *)vals, 0);
	obr_pg_params_free(keys, vals);
	if (!pg->conn) {
		schedule_reconnect(pg, "out of memory");
		return;
	}
	if (PQstatus(pg->conn) == CONNECTION_BAD) {
		conn_error(pg, "could not connect");
		return;
	}
	PQsetNoticeReceiver(pg->conn, on_notice, pg);
	pg->state = PG_CONNECTING;
	pg->cur = -1;
	arm_timeout(pg); /* until track_attempt knows the entry; also covers a passthrough */
	rewatch(pg, EV_WRITE);
}

/* The lookups are over (answered, or timed_out): connect to what they found. */
static void lookups_done(struct obr_pg *pg, bool timed_out)
{
	evtimer_del(pg->timeout);
	drop_entries(pg);
	char unresolved[256];
	int n = obr_pg_resolver_entries(pg->resolver, &pg->target, &pg->entries, unresolved, sizeof(unresolved));
	if (n < 0) {
		schedule_reconnect(pg, "out of memory");
		return;
	}
	pg->nentries = n;
	if (*unresolved)
		obr_log_warn("%s connection: could not resolve host name %s%s", pg->name, unresolved,
		             timed_out ? " (no answer within connect_timeout)" : "");
	if (!n && !pg->target.passthrough) {
		schedule_reconnect(pg, "no host name could be resolved");
		return;
	}
	connect_entries(pg);
}

static void on_resolved(void *arg)
{
	lookups_done(arg, false);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct obr_pg *pg = arg;
	if (pg->state == PG_RESOLVING) {
		lookups_done(pg, true);
		return;
	}
	char why[512];
	if (pg->state != PG_CONNECTING) {
		snprintf(why, sizeof(why), "the session setup did not finish within connect_timeout (%d s)",
		         pg->target.connect_timeout_s);
		schedule_reconnect(pg, why);
		return;
	}
	/* libpq cannot be told to give up on one address: start it again after that one */
	int next = (pg->cur < 0 ? pg->first : pg->cur) + 1;
	snprintf(why, sizeof(why), "timeout expired after %d s connecting to host \"%s\" (%s) port %s",
	         pg->target.connect_timeout_s, PQhost(pg->conn), PQhostaddr(pg->conn), PQport(pg->conn));
	if (next >= pg->nentries) {
		schedule_reconnect(pg, why);
		return;
	}
	obr_log_warn("%s connection: %s, trying the next address", pg->name, why);
	if (pg->io) {
		event_free(pg->io);
		pg->io = NULL;
	}
	PQfinish(pg->conn);
	pg->conn = NULL;
	pg->first = next;
	connect_entries(pg);
}

static void start_connect(struct obr_pg *pg)
{
	drop_entries(pg);
	int rc = pg->target.passthrough ? 1 : obr_pg_resolver_start(pg->resolver, &pg->target);
	if (rc < 0) {
		schedule_reconnect(pg, "could not start a host name lookup");
		return;
	}
	if (rc == 0) {
		pg->state = PG_RESOLVING;
		arm_timeout(pg);
		return;
	}
	lookups_done(pg, false);
}

/* setup_sql: SET statement_timeout, the caller's setup, then a PREPARE per statement. */
static int build_setup(struct obr_pg *pg)
{
	struct obr_strbuf b;
	obr_strbuf_init(&b, 1 << 20);
	if (pg->statement_timeout_ms > 0)
		obr_strbuf_printf(&b, "SET statement_timeout = %d; ", pg->statement_timeout_ms);
	if (pg->caller_setup)
		obr_strbuf_printf(&b, "%s; ", pg->caller_setup);
	for (const struct obr_pg_statement *s = pg->prepared; s && s->name; s++)
		obr_strbuf_printf(&b, "PREPARE %s AS %s; ", s->name, s->sql);
	if (b.failed) {
		obr_strbuf_free(&b);
		return -1;
	}
	free(pg->setup_sql);
	pg->setup_sql = b.len ? b.data : NULL;
	if (!b.len)
		obr_strbuf_free(&b);
	return 0;
}

struct obr_pg *obr_pg_new(struct event_base *base, const char *conninfo, const char *name,
                          const char *setup_sql, const struct obr_pg_statement *prepared,
                          const struct obr_pg_callbacks *cb, void *arg)
{
	struct obr_pg *pg = calloc(1, sizeof(*pg));
	if (!pg)
		return NULL;
	pg->base = base;
	pg->name = strdup(name);
	pg->caller_setup = setup_sql ? strdup(setup_sql) : NULL;
	pg->prepared = prepared;
	pg->cb = *cb;
	pg->arg = arg;
	pg->backoff_ms = BACKOFF_MIN_MS;
	pg->cur = -1;
	pg->io_fd = -1;
	pg->retry = evtimer_new(base, on_retry, pg);
	pg->send_failed = evtimer_new(base, on_send_failed, pg);
	pg->timeout = evtimer_new(base, on_timeout, pg);
	pg->resolver = obr_pg_resolver_new(base, name, on_resolved, pg);
	char err[256];
	int parsed = obr_pg_target_parse(conninfo, &pg->target, err, sizeof(err));
	if (parsed)
		obr_log_error("%s connection: DATABASE_URL: %s", name, err);
	if (parsed || !pg->name || (setup_sql && !pg->caller_setup) || !pg->retry || !pg->send_failed || !pg->timeout ||
	    !pg->resolver || build_setup(pg)) {
		obr_pg_free(pg);
		return NULL;
	}
	return pg;
}

int obr_pg_set_statement_timeout(struct obr_pg *pg, int ms)
{
	int old = pg->statement_timeout_ms;
	pg->statement_timeout_ms = ms > 0 ? ms : 0;
	if (build_setup(pg)) {
		pg->statement_timeout_ms = old;
		return -1;
	}
	return 0;
}

int obr_pg_drop_session_state(struct obr_pg *pg)
{
	free(pg->caller_setup);
	pg->caller_setup = NULL;
	pg->prepared = NULL;
	pg->statement_timeout_ms = 0;
	return build_setup(pg);
}

void obr_pg_start(struct obr_pg *pg)
{
	start_connect(pg);
}

int obr_pg_query(struct obr_pg *pg, const char *sql, int nparams, const char *const *values, obr_pg_result_fn fn,
                 void *arg)
{
	if (pg->state != PG_READY)
		return -1;
	struct query *q = calloc(1, sizeof(*q));
	if (!q)
		return -1;
	for (const struct obr_pg_statement *s = pg->prepared; s && s->name && !q->prepared; s++)
		if (s->sql == sql)
			q->prepared = s->name;
	q->sql = strdup(sql);
	q->nparams = nparams;
	q->values = nparams ? calloc((size_t)nparams, sizeof(char *)) : NULL;
	q->fn = fn;
	q->arg = arg;
	if (!q->sql || (nparams && !q->values)) {
		query_free(q);
		return -1;
	}
	for (int i = 0; i < nparams; i++) {
		if (values[i] && !(q->values[i] = strdup(values[i]))) {
			query_free(q);
			return -1;
		}
	}
	if (pg->tail)
		pg->tail->next = q;
	else
		pg->head = q;
	pg->tail = q;
	send_next(pg);
	return 0;
}

PGresult *obr_pg_keep_result(struct obr_pg *pg, const PGresult *res)
{
	struct query *q = pg->handing;
	if (!q || !res || q->res != res)
		return NULL;
	q->res = NULL;
	return (PGresult *)(uintptr_t)res;
}

int obr_pg_pending(const struct obr_pg *pg)
{
	int n = 0;
	for (const struct query *q = pg->head; q; q = q->next)
		n++;
	return n;
}

bool obr_pg_is_up(const struct obr_pg *pg)
{
	return pg->state == PG_READY;
}

const char *obr_pg_sqlstate(const PGresult *res)
{
	const char *s = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	return s ? s : "";
}

void obr_pg_reset(struct obr_pg *pg, const char *why)
{
	if (pg->state == PG_WAITING)
		return;
	schedule_reconnect(pg, why);
}

uint64_t obr_pg_reconnects(const struct obr_pg *pg)
{
	return pg->reconnects;
}

void obr_pg_free(struct obr_pg *pg)
{
	if (!pg)
		return;
	if (pg->io)
		event_free(pg->io);
	if (pg->retry)
		event_free(pg->retry);
	if (pg->send_failed)
		event_free(pg->send_failed);
	if (pg->timeout)
		event_free(pg->timeout);
	/* the owner is being torn down: statements still queued are dropped without callbacks */
	fail_queue(pg, NULL);
	obr_pg_resolver_free(pg->resolver);
	drop_entries(pg);
	if (pg->conn)
		PQfinish(pg->conn);
	obr_pg_target_free(&pg->target);
	free(pg->name);
	free(pg->caller_setup);
	free(pg->setup_sql);
	free(pg);
}
