/*
 * ops_common.h - what the operator commands (status.c, requeue.c) share. Blocking libpq is
 * fine here: these are commands, not the loop. Errors are printed as
 * "outbox-relay CMD: ..." on stderr, and the functions say so by their return value.
 */
#ifndef OBR_OPS_COMMON_H
#define OBR_OPS_COMMON_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* exit codes: 0 done, 1 database error (connection, missing schema), 2 bad arguments */
#define OBR_OPS_EXIT_DB 1
#define OBR_OPS_EXIT_USAGE 2

/* The first line of libpq's message, without the trailing newline nor "ERROR:  ". */
void obr_ops_pq_message(char *out, size_t cap, const char *msg);

/* Takes --database URL / --database=URL at argv[*i]; returns true when it was one (*rc is
 * set when its value is missing). */
bool obr_ops_take_database(const char *cmd, int argc, char **argv, int *i, const char **url, int *rc);

/* A flag's value: "--flag VALUE" or "--flag=VALUE". Returns NULL when argv[*i] is not the
 * flag; sets *rc on a missing value. */
const char *obr_ops_take_value(const char *cmd, const char *flag, int argc, char **argv, int *i, int *rc);

/* Connects to url (DATABASE_URL or --database). Returns NULL with *rc = OBR_OPS_EXIT_USAGE when
 * url is missing or malformed, OBR_OPS_EXIT_DB when the connection failed. */
PGconn *obr_ops_connect(const char *cmd, const char *url, int *rc);

/* Runs sql with text parameters; returns the result when its status is ok, else prints
 * "outbox-relay CMD: WHAT: message" and returns NULL. */
PGresult *obr_ops_query(PGconn *conn, const char *cmd, const char *what, const char *sql, int nparams,
                        const char *const *params);
bool obr_ops_exec(PGconn *conn, const char *cmd, const char *sql);

/* An int8 column's value; NULL is 0. */
int64_t obr_ops_get_i64(const PGresult *res, int row, int col);

/* The outbox table with outbox-relay's columns must be there; prints why not. */
bool obr_ops_schema_present(PGconn *conn, const char *cmd);

#endif
