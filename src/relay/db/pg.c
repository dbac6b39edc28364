/*
 * pg.c - asynchronous libpq connection on a libevent loop.
 */
#include "db/pg.h"

#include "util/log.h"
#include "util/strbuf.h"

#include <event2/event.h>
#include <stdlib.h>
#include <string.h>

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 10000

struct query {
	struct query *next;
	const char *prepared;       /* statement name when the caller's sql is a prepared one */
	char *sql;
	int nparams;
	char **values;
	obr_pg_result_fn fn;
	void *arg;
	bool answered;              /* fn has been called (its owner may have freed arg): never again */
};

enum pg_state { PG_IDLE, PG_CONNECTING, PG_SETUP, PG_READY, PG_WAITING };

struct obr_pg {
	struct event_base *base;
	char *conninfo;
	char *name;
	char *setup_sql;            /* the caller's setup plus the PREPAREs */
	const struct obr_pg_statement *prepared;
	struct obr_pg_callbacks cb;
	void *arg;

	PGconn *conn;
	enum pg_state state;
	struct event *io;          /* on PQsocket; re-created after every connect */
	short io_what;
	struct event *retry;       /* reconnect backoff timer */
	struct event *send_failed; /* a send failed inside obr_pg_query: handled from the loop */
	int backoff_ms;
	uint64_t reconnects;
	bool ever_connected;

	struct query *head, *tail; /* head is running when busy */
	bool busy;
	int pending;
};

static void on_io(evutil_socket_t fd, short what, void *arg);
static void start_connect(struct obr_pg *pg);

static void query_free(struct query *q)
{
	if (!q)
		return;
	for (int i = 0; i < q->nparams; i++)
		free(q->values[i]);
	free(q->values);
	free(q->sql);
	free(q);
}

static void watch(struct obr_pg *pg, short what)
{
	if (pg->io && pg->io_what == what)
		return;
	if (pg->io) {
		event_free(pg->io);
		pg->io = NULL;
	}
	int fd = PQsocket(pg->conn);
	if (fd < 0)
		return;
	pg->io = event_new(pg->base, fd, (short)(what | EV_PERSIST), on_io, pg);
	pg->io_what = what;
	event_add(pg->io, NULL);
}

/* Fails every queued statement: the connection they were meant for is gone. */
static void fail_queue(struct obr_pg *pg, const char *why)
{
	struct query *q = pg->head;
	pg->head = pg->tail = NULL;
	pg->busy = false;
	pg->pending = 0;
	while (q) {
		struct query *next = q->next;
		if (!q->answered)
			q->fn(q->arg, NULL, why);
		query_free(q);
		q = next;
	}
}

static void schedule_reconnect(struct obr_pg *pg, const char *why)
{
	bool was_ready = pg->state == PG_READY || pg->state == PG_SETUP;
	if (pg->io) {
		event_free(pg->io);
		pg->io = NULL;
	}
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
	pg->backoff_ms = BACKOFF_MIN_MS;
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
		if (!res) {
			pg->busy = false;
			pg->head = q->next;
			if (!pg->head)
				pg->tail = NULL;
			pg->pending--;
			query_free(q);
			send_next(pg);
			continue;
		}
		ExecStatusType st = PQresultStatus(res);
		if (st == PGRES_FATAL_ERROR && PQstatus(pg->conn) == CONNECTION_BAD) {
			PQclear(res);
			conn_error(pg, "connection failed");
			return;
		}
		/* the callback sees errors as results: it decides what an error means for its rows.
		 * It runs once per statement: a statement can yield a second result (a terminated
		 * backend's FATAL, then libpq's "server closed the connection"), and the owner may have
		 * freed arg after the first. */
		if (!q->answered) {
			q->answered = true;
			q->fn(q->arg, res, st == PGRES_FATAL_ERROR ? PQresultErrorMessage(res) : NULL);
		}
		PQclear(res);
		if (!pg->conn) /* the callback reset us */
			return;
	}
	deliver_notifications(pg);
}

static void continue_connect(struct obr_pg *pg)
{
	switch (PQconnectPoll(pg->conn)) {
	case PGRES_POLLING_READING:
		watch(pg, EV_READ);
		return;
	case PGRES_POLLING_WRITING:
		watch(pg, EV_WRITE);
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
	/* the socket may differ after connect (e.g. a second host tried); rewatch */
	if (pg->io) {
		event_free(pg->io);
		pg->io = NULL;
	}
	if (pg->setup_sql) {
		pg->state = PG_SETUP;
		if (!PQsendQuery(pg->conn, pg->setup_sql)) {
			conn_error(pg, "could not send setup statement");
			return;
		}
		pg->busy = true;
		PQflush(pg->conn);
		watch(pg, EV_READ);
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

static void start_connect(struct obr_pg *pg)
{
	/* keepalives detect a half-open connection; application_name names us in pg_stat_activity */
	const char *keys[] = { "dbname", "application_name", "keepalives", "keepalives_idle", "keepalives_interval",
	                       "keepalives_count", "connect_timeout", NULL };
	const char *vals[] = { pg->conninfo, pg->name, "1", "10", "5", "3", "10", NULL };

	pg->conn = PQconnectStartParams(keys, vals, 1);
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
	watch(pg, EV_WRITE);
}

struct obr_pg *obr_pg_new(struct event_base *base, const char *conninfo, const char *name,
                          const char *setup_sql, const struct obr_pg_statement *prepared,
                          const struct obr_pg_callbacks *cb, void *arg)
{
	struct obr_pg *pg = calloc(1, sizeof(*pg));
	if (!pg)
		return NULL;
	pg->base = base;
	pg->conninfo = strdup(conninfo);
	pg->name = strdup(name);
	pg->prepared = prepared;
	size_t len = setup_sql ? strlen(setup_sql) + 2 : 0;
	for (const struct obr_pg_statement *s = prepared; s && s->name; s++)
		len += strlen(s->name) + strlen(s->sql) + 16;
	if (len) {
		pg->setup_sql = malloc(len + 1);
		if (pg->setup_sql) {
			size_t o = 0;
			pg->setup_sql[0] = '\0';
			if (setup_sql)
				o += (size_t)snprintf(pg->setup_sql + o, len + 1 - o, "%s; ", setup_sql);
			for (const struct obr_pg_statement *s = prepared; s && s->name; s++)
				o += (size_t)snprintf(pg->setup_sql + o, len + 1 - o, "PREPARE %s AS %s; ", s->name, s->sql);
		}
	}
	pg->cb = *cb;
	pg->arg = arg;
	pg->backoff_ms = BACKOFF_MIN_MS;
	pg->retry = evtimer_new(base, on_retry, pg);
	pg->send_failed = evtimer_new(base, on_send_failed, pg);
	if (!pg->conninfo || !pg->name || (len && !pg->setup_sql) || !pg->retry || !pg->send_failed) {
		obr_pg_free(pg);
		return NULL;
	}
	return pg;
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
	pg->pending++;
	send_next(pg);
	return 0;
}

bool obr_pg_is_up(const struct obr_pg *pg)
{
	return pg->state == PG_READY;
}

int obr_pg_pending(const struct obr_pg *pg)
{
	return pg->pending;
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
	/* statements still queued or running get their callback, so their owners free their state */
	fail_queue(pg, "the connection was closed");
	if (pg->conn)
		PQfinish(pg->conn);
	free(pg->conninfo);
	free(pg->name);
	free(pg->setup_sql);
	free(pg);
}
