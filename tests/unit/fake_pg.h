/*
 * fake_pg.h - a scripted stand-in for src/relay/db/pg.c, for testing the engine without a
 * server: it implements db/pg.h, keeps each connection's statements in order, and lets the
 * test answer them with results built here, answer one twice (libpq can return an error
 * result after a statement's result), or drop the connection mid-statement. It calls the
 * engine's callbacks exactly as pg.c does: a statement answered once with a result is not
 * answered again by a lost connection; the others get (NULL, why), then disconnected().
 */
#ifndef OBR_FAKE_PG_H
#define OBR_FAKE_PG_H

#include "db/pg.h"

#include <libpq-fe.h>
#include <stdbool.h>

struct fake_query {
	struct fake_query *next;
	const char *sql;            /* the engine's pointer: compare with OBR_SQL_* */
	int nparams;
	char **params;              /* copies; NULL for SQL NULL */
	obr_pg_result_fn fn;
	void *arg;
	bool answered;
};

/* A connection the engine made, by the name it gave ("outbox-relay work"); NULL if none. */
struct obr_pg *fake_pg_find(const char *name);
/* Brings it up: connected() is called. */
void fake_pg_connect(struct obr_pg *pg);
/* The statement running (oldest not finished), or NULL. */
struct fake_query *fake_pg_head(struct obr_pg *pg);
int fake_pg_count(struct obr_pg *pg);
/* Answers the head with res (an error when err is set) and finishes it. res is cleared. */
void fake_pg_answer(struct obr_pg *pg, PGresult *res, const char *err);
/* Answers the head but does not finish it (pg.c has not read its end yet): a second answer
 * may follow. res is cleared. */
void fake_pg_answer_more(struct obr_pg *pg, PGresult *res, const char *err);
/* Finishes the head without another answer: pg.c read the statement's end. */
void fake_pg_finish(struct obr_pg *pg);
/* The connection is lost: statements not answered get (NULL, why), then disconnected(). */
void fake_pg_drop(struct obr_pg *pg, const char *why);
/* The next obr_pg_query on pg queues the statement, then loses the connection at once (as
 * pg.c does when sending fails), before returning 0. */
void fake_pg_fail_next_send(struct obr_pg *pg);
/* Delivers a notification on pg. */
void fake_pg_notify(struct obr_pg *pg, const char *channel, const char *payload);

/* A result with these columns (all text); rows are added with fake_result_row. */
PGresult *fake_result(int ncols, const char *const *names);
/* values has one entry per column; NULL is SQL NULL. */
void fake_result_row(PGresult *res, const char *const *values);
/* An error result, for fake_pg_answer(pg, res, message). */
PGresult *fake_error_result(void);

/* What the engine asked for with obr_pg_set_statement_timeout (0: nothing). */
int fake_pg_statement_timeout(const struct obr_pg *pg);

/* Whether the engine dropped the connection's session state (obr_pg_drop_session_state). */
bool fake_pg_session_dropped(const struct obr_pg *pg);

#endif
