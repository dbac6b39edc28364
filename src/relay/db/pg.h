/*
 * pg.h - one asynchronous libpq connection driven by libevent.
 *
 * Connects with PQconnectStartParams/PQconnectPoll, reconnects by itself with exponential
 * backoff and jitter, and runs queued statements one at a time with PQsendQueryParams
 * (unnamed statements only: it works through PgBouncer in transaction pooling mode).
 * Notifications are handed to a callback. Nothing here ever blocks the loop:
 * - host names are resolved with evdns (the hosts file, then resolv.conf's name servers) and
 *   libpq gets hostaddr= per address, host= kept for TLS verification and pg_hba (db/pgaddr.h);
 * - every address tried gets connect_timeout (the connection string's, else 10 s; it also
 *   bounds the lookups and the setup statements), then the next one is tried;
 * - keepalives and tcp_user_timeout (30 s) are set unless the connection string sets them.
 */
#ifndef OBR_PG_H
#define OBR_PG_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>

struct event_base;
struct obr_pg;

/* Called once per statement, when it has ended (libpq read its end): a result that a later
 * error overtook (a backend terminated before the commit) is never handed over. res is NULL
 * when the connection was lost before the statement ended; err says why.
 * When the statement failed, err is the server's message and res the error result: its
 * SQLSTATE is obr_pg_sqlstate(res). res is owned by pg.c (cleared after the callback). */
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

/* Runs SET statement_timeout = ms (0: the server's default) first in the setup of every
 * session from the next connect on: call it before obr_pg_start. A statement that runs
 * longer fails with SQLSTATE 57014. This is session state: through a transaction pooler set
 * statement_timeout on the relay's role instead. Returns -1 when out of memory. */
int obr_pg_set_statement_timeout(struct obr_pg *pg, int ms);

/* Forgets the setup statements, the prepared statements and the statement_timeout from the
 * next connect on (a transaction pooler hands each transaction any server session, where
 * they do not exist): statements then run unnamed. Returns -1 when out of memory. */
int obr_pg_drop_session_state(struct obr_pg *pg);

/* Queues a statement; it runs when the connection is up and earlier ones are done. Values
 * are copied. Returns 0, or -1 when the connection is down (the callback is not called). */
int obr_pg_query(struct obr_pg *pg, const char *sql, int nparams, const char *const *values, obr_pg_result_fn fn,
                 void *arg);

/* In a statement's callback only: takes its res over (the caller PQclears it; pg.c then does
 * not), so a large result need not be copied. NULL when res is not the one being handed over. */
PGresult *obr_pg_keep_result(struct obr_pg *pg, const PGresult *res);

bool obr_pg_is_up(const struct obr_pg *pg);
/* Statements queued or running. */
int obr_pg_pending(const struct obr_pg *pg);

/* The SQLSTATE of a failed statement's result ("25006": read-only transaction, "57014":
 * statement_timeout), or "" (res NULL: the connection was lost). */
const char *obr_pg_sqlstate(const PGresult *res);

/* Drops the connection (a health check timed out, the server is read-only after a failover
 * and the address may move) and reconnects after backoff: queued statements get their
 * callback with res NULL, disconnected() is called if the session was up. The backoff is
 * exponential with jitter (100 ms doubling up to 10 s) and is cleared only by a session that
 * stayed up for 2 s: a server that accepts connections but fails the owner's statements is
 * retried ever more slowly, not in a loop. */
void obr_pg_reset(struct obr_pg *pg, const char *why);
uint64_t obr_pg_reconnects(const struct obr_pg *pg);
/* Frees the connection without calling any of the owner's callbacks: statements still
 * queued are dropped, their arg is not touched (the owner frees what it passed). */
void obr_pg_free(struct obr_pg *pg);

#endif
