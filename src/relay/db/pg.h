/*
 * pg.h - one asynchronous libpq connection driven by libevent.
 *
 * Connects with PQconnectStartParams/PQconnectPoll, reconnects by itself with exponential
 * backoff and jitter, and runs queued statements one at a time with PQsendQueryParams
 * (unnamed statements only: it works through PgBouncer in transaction pooling mode).
 * Notifications are handed to a callback. Nothing here ever blocks the loop.
 */
#ifndef OBR_PG_H
#define OBR_PG_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>

struct event_base;
struct obr_pg;

/* res is NULL when the connection was lost before the statement completed; err says why.
 * res is owned by the caller of the callback (pg.c clears it after the callback returns). */
typedef void (*obr_pg_result_fn)(void *arg, const PGresult *res, const char *err);

struct obr_pg_callbacks {
	void (*connected)(void *arg);                       /* session ready (setup statements done) */
	void (*disconnected)(void *arg, const char *why);   /* before a reconnect is scheduled */
	void (*notify)(void *arg, const char *channel, const char *payload);
};

/* A statement prepared once per session: obr_pg_query with exactly this sql pointer then runs
 * it by name, skipping parse and plan (not through a transaction pooler: no session state). */
struct obr_pg_statement {
	const char *name;
	const char *sql;
};

/* name appears in logs and as application_name. setup_sql (may be NULL) runs after every
 * connect, before connected() is called (e.g. "LISTEN outbox"), and so does the PREPARE of
 * every entry of prepared (NULL, or an array ended by an entry with name NULL). */
struct obr_pg *obr_pg_new(struct event_base *base, const char *conninfo, const char *name,
                          const char *setup_sql, const struct obr_pg_statement *prepared,
                          const struct obr_pg_callbacks *cb, void *arg);
void obr_pg_start(struct obr_pg *pg);

/* Queues a statement; it runs when the connection is up and earlier ones are done. Values
 * are copied. Returns 0, or -1 when the connection is down (the callback is not called). */
int obr_pg_query(struct obr_pg *pg, const char *sql, int nparams, const char *const *values, obr_pg_result_fn fn,
                 void *arg);

bool obr_pg_is_up(const struct obr_pg *pg);
/* statements queued or running */
int obr_pg_pending(const struct obr_pg *pg);
/* Drops the connection (e.g. a health check timed out) and reconnects after backoff. */
void obr_pg_reset(struct obr_pg *pg, const char *why);
uint64_t obr_pg_reconnects(const struct obr_pg *pg);
void obr_pg_free(struct obr_pg *pg);

#endif
