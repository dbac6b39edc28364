/*
 * fake_pg.c - see fake_pg.h.
 */
#include "fake_pg.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct obr_pg {
	struct obr_pg *next_conn;
	char *name;
	struct obr_pg_callbacks cb;
	void *arg;
	bool up;
	bool fail_next_send;
	PGresult *handing;          /* the result whose callback is running */
	uint64_t reconnects;
	int statement_timeout_ms;
	bool session_dropped;       /* obr_pg_drop_session_state was called */
	struct fake_query *head, *tail;
};

static struct obr_pg *conns;

struct obr_pg *obr_pg_new(struct event_base *base, const char *conninfo, const char *name,
                          const char *setup_sql, const struct obr_pg_statement *prepared,
                          const struct obr_pg_callbacks *cb, void *arg)
{
	struct obr_pg *pg = calloc(1, sizeof(*pg));
	if (!pg)
		return NULL;
	pg->name = strdup(name);
	pg->cb = *cb;
	pg->arg = arg;
	pg->next_conn = conns;
	conns = pg;
	return pg;
}

void obr_pg_start(struct obr_pg *pg)
{
}

static void query_free(struct fake_query *q)
{
	for (int i = 0; i < q->nparams; i++)
		free(q->params[i]);
	free(q->params);
	free(q);
}

int obr_pg_query(struct obr_pg *pg, const char *sql, int nparams, const char *const *values, obr_pg_result_fn fn,
                 void *arg)
{
	if (!pg->up)
		return -1;
	struct fake_query *q = calloc(1, sizeof(*q));
	if (!q)
		return -1;
	q->sql = sql;
	q->nparams = nparams;
	q->params = calloc((size_t)nparams + 1, sizeof(char *));
	for (int i = 0; i < nparams; i++)
		q->params[i] = values[i] ? strdup(values[i]) : NULL;
	q->fn = fn;
	q->arg = arg;
	if (pg->tail)
		pg->tail->next = q;
	else
		pg->head = q;
	pg->tail = q;
	if (pg->fail_next_send) {
		pg->fail_next_send = false;
		fake_pg_drop(pg, "could not send query: fake");
	}
	return 0;
}

bool obr_pg_is_up(const struct obr_pg *pg)
{
	return pg->up;
}

int obr_pg_pending(const struct obr_pg *pg)
{
	return fake_pg_count((struct obr_pg *)(uintptr_t)pg);
}

void obr_pg_reset(struct obr_pg *pg, const char *why)
{
	if (pg->up)
		fake_pg_drop(pg, why);
}

int obr_pg_drop_session_state(struct obr_pg *pg)
{
	pg->statement_timeout_ms = 0;
	pg->session_dropped = true;
	return 0;
}

bool fake_pg_session_dropped(const struct obr_pg *pg)
{
	return pg->session_dropped;
}

int fake_pg_statement_timeout(const struct obr_pg *pg)
{
	return pg->statement_timeout_ms;
}

int obr_pg_set_statement_timeout(struct obr_pg *pg, int ms)
{
	pg->statement_timeout_ms = ms;
	return 0;
}

/* As pg.c: fake error results (PQmakeEmptyPGresult) carry no SQLSTATE. */
const char *obr_pg_sqlstate(const PGresult *res)
{
	const char *s = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	return s ? s : "";
}

uint64_t obr_pg_reconnects(const struct obr_pg *pg)
{
	return pg->reconnects;
}

static void fail_queue(struct obr_pg *pg, const char *why)
{
	struct fake_query *q = pg->head;
	pg->head = pg->tail = NULL;
	while (q) {
		struct fake_query *next = q->next;
		if (!q->answered)
			q->fn(q->arg, NULL, why);
		query_free(q);
		q = next;
	}
}

void obr_pg_free(struct obr_pg *pg)
{
	if (!pg)
		return;
	for (struct obr_pg **pp = &conns; *pp; pp = &(*pp)->next_conn)
		if (*pp == pg) {
			*pp = pg->next_conn;
			break;
		}
	/* as pg.c: statements still queued or running get their callback */
	fail_queue(pg, "the connection was closed");
	free(pg->name);
	free(pg);
}

struct obr_pg *fake_pg_find(const char *name)
{
	for (struct obr_pg *pg = conns; pg; pg = pg->next_conn)
		if (!strcmp(pg->name, name))
			return pg;
	return NULL;
}

void fake_pg_connect(struct obr_pg *pg)
{
	if (pg->up)
		return;
	pg->up = true;
	if (pg->cb.connected)
		pg->cb.connected(pg->arg);
}

struct fake_query *fake_pg_head(struct obr_pg *pg)
{
	return pg->head;
}

int fake_pg_count(struct obr_pg *pg)
{
	int n = 0;
	for (struct fake_query *q = pg->head; q; q = q->next)
		n++;
	return n;
}

void fake_pg_answer_more(struct obr_pg *pg, PGresult *res, const char *err)
{
	struct fake_query *q = pg->head;
	if (!q) {
		PQclear(res);
		return;
	}
	q->answered = true;
	pg->handing = res;
	q->fn(q->arg, res, err);
	PQclear(pg->handing); /* unless the callback kept it */
	pg->handing = NULL;
}

PGresult *obr_pg_keep_result(struct obr_pg *pg, const PGresult *res)
{
	if (!res || pg->handing != res)
		return NULL;
	pg->handing = NULL;
	return (PGresult *)(uintptr_t)res;
}

void fake_pg_finish(struct obr_pg *pg)
{
	struct fake_query *q = pg->head;
	if (!q)
		return;
	pg->head = q->next;
	if (!pg->head)
		pg->tail = NULL;
	query_free(q);
}

void fake_pg_answer(struct obr_pg *pg, PGresult *res, const char *err)
{
	struct fake_query *q = pg->head;
	fake_pg_answer_more(pg, res, err);
	if (q && pg->head == q) /* unless the callback dropped the connection */
		fake_pg_finish(pg);
}

void fake_pg_drop(struct obr_pg *pg, const char *why)
{
	bool was_up = pg->up;
	pg->up = false;
	pg->reconnects++;
	fail_queue(pg, why);
	if (was_up && pg->cb.disconnected)
		pg->cb.disconnected(pg->arg, why);
}

void fake_pg_fail_next_send(struct obr_pg *pg)
{
	pg->fail_next_send = true;
}

void fake_pg_notify(struct obr_pg *pg, const char *channel, const char *payload)
{
	if (pg->cb.notify)
		pg->cb.notify(pg->arg, channel, payload);
}

PGresult *fake_result(int ncols, const char *const *names)
{
	PGresult *res = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
	PGresAttDesc *attrs = calloc((size_t)ncols, sizeof(*attrs));
	for (int i = 0; i < ncols; i++) {
		attrs[i].name = (char *)(uintptr_t)names[i];
		attrs[i].format = 0;
		attrs[i].typid = 25; /* text */
		attrs[i].typlen = -1;
		attrs[i].atttypmod = -1;
	}
	PQsetResultAttrs(res, ncols, attrs);
	free(attrs);
	return res;
}

void fake_result_row(PGresult *res, const char *const *values)
{
	int row = PQntuples(res);
	for (int i = 0; i < PQnfields(res); i++) {
		if (values[i])
			PQsetvalue(res, row, i, (char *)(uintptr_t)values[i], (int)strlen(values[i]));
		else
			PQsetvalue(res, row, i, NULL, -1);
	}
}

PGresult *fake_error_result(void)
{
	return PQmakeEmptyPGresult(NULL, PGRES_FATAL_ERROR);
}
