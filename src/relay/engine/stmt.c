/*
 * stmt.c - the ledger of statements on each statement connection. pg.c answers statements in
 * the order they were sent; a statement's answer is handed to its stage only once pg.c has
 * read its end (until then it may still turn into an error), and a lost connection answers
 * the one in flight with the reason and forgets the rest.
 */
#include "engine/engine_int.h"

#include "util/log.h"

#include <event2/event.h>
#include <stdlib.h>
#include <string.h>

void mark_free(struct mark *m)
{
	free(m->error);
	free(m->sent);
	free(m);
}

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
	s->sent_ms = relay_mono_ms();
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
void stmt_settle(struct obr_relay *r, struct conn *c)
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
void stmt_forget_all(struct conn *c, const char *why)
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
