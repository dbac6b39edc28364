/*
 * ops_common.c - what the operator commands share: their arguments (--database, --flag VALUE),
 * the connection, statements with a one-line error message, and the schema check.
 */
#include "cli/ops_common.h"

#include "config.h"
#include "util/strbuf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void obr_ops_pq_message(char *out, size_t cap, const char *msg)
{
	if (!cap)
		return;
	if (!msg)
		msg = "";
	if (!strncmp(msg, "ERROR:  ", 8))
		msg += 8;
	snprintf(out, cap, "%s", msg);
	char *nl = strchr(out, '\n');
	if (nl)
		*nl = '\0';
	obr_trim_end(out, " \n.");
	if (!out[0])
		snprintf(out, cap, "unknown error");
}

bool obr_ops_take_database(const char *cmd, int argc, char **argv, int *i, const char **url, int *rc)
{
	if (!strcmp(argv[*i], "--database")) {
		if (*i + 1 >= argc) {
			fprintf(stderr, "outbox-relay %s: option --database needs a value\n", cmd);
			*rc = OBR_OPS_EXIT_USAGE;
			return true;
		}
		*url = argv[++*i];
		return true;
	}
	if (!strncmp(argv[*i], "--database=", 11)) {
		*url = argv[*i] + 11;
		return true;
	}
	return false;
}

const char *obr_ops_take_value(const char *cmd, const char *flag, int argc, char **argv, int *i, int *rc)
{
	size_t n = strlen(flag);
	if (strncmp(argv[*i], flag, n) != 0)
		return NULL;
	if (argv[*i][n] == '=')
		return argv[*i] + n + 1;
	if (argv[*i][n] != '\0')
		return NULL;
	if (*i + 1 >= argc) {
		fprintf(stderr, "outbox-relay %s: option %s needs a value\n", cmd, flag);
		*rc = OBR_OPS_EXIT_USAGE;
		return NULL;
	}
	return argv[++*i];
}

PGconn *obr_ops_connect(const char *cmd, const char *url, int *rc)
{
	if (!url || !*url) {
		fprintf(stderr, "outbox-relay %s: DATABASE_URL is not set: give the database as DATABASE_URL or --database\n",
		        cmd);
		*rc = OBR_OPS_EXIT_USAGE;
		return NULL;
	}
	char bad[512];
	if (obr_conninfo_check(url, bad, sizeof(bad))) {
		fprintf(stderr, "outbox-relay %s: %s\n", cmd, bad);
		*rc = OBR_OPS_EXIT_USAGE;
		return NULL;
	}
	*rc = OBR_OPS_EXIT_DB;
	char app[64];
	snprintf(app, sizeof(app), "outbox-relay %s", cmd);
	/* ours first: what the URL says overrides them (expand_dbname) */
	const char *const kw[] = { "connect_timeout", "fallback_application_name", "dbname", NULL };
	const char *const val[] = { "10", app, url, NULL };
	PGconn *conn = PQconnectdbParams(kw, val, 1);
	if (PQstatus(conn) != CONNECTION_OK) {
		char msg[1024];
		snprintf(msg, sizeof(msg), "%s", conn ? PQerrorMessage(conn) : "out of memory");
		obr_trim_end(msg, " \n.");
		/* one line: "...failed: Connection refused\n\tIs the server running..." */
		char *w = msg;
		for (const char *r = msg; *r; r++) {
			if (*r == '\n' || *r == '\t') {
				if (w > msg && w[-1] != ' ')
					*w++ = ' ';
			} else {
				*w++ = *r;
			}
		}
		*w = '\0';
		fprintf(stderr, "outbox-relay %s: could not connect to the database: %s\n", cmd, msg);
		PQfinish(conn);
		return NULL;
	}
	*rc = 0;
	return conn;
}

PGresult *obr_ops_query(PGconn *conn, const char *cmd, const char *what, const char *sql, int nparams,
                        const char *const *params)
{
	PGresult *res = PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);
	ExecStatusType st = PQresultStatus(res);
	if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK)
		return res;
	char msg[1024];
	obr_ops_pq_message(msg, sizeof(msg), res ? PQresultErrorMessage(res) : PQerrorMessage(conn));
	fprintf(stderr, "outbox-relay %s: %s: %s\n", cmd, what, msg);
	PQclear(res);
	return NULL;
}

bool obr_ops_exec(PGconn *conn, const char *cmd, const char *sql)
{
	PGresult *res = obr_ops_query(conn, cmd, sql, sql, 0, NULL);
	PQclear(res);
	return res != NULL;
}

int64_t obr_ops_get_i64(const PGresult *res, int row, int col)
{
	return PQgetisnull(res, row, col) ? 0 : strtoll(PQgetvalue(res, row, col), NULL, 10);
}

bool obr_ops_schema_present(PGconn *conn, const char *cmd)
{
	PGresult *res = obr_ops_query(conn, cmd, "could not inspect the schema",
	                      "SELECT to_regclass('outbox') IS NOT NULL, to_regclass('outbox_lock') IS NOT NULL, "
	                      "       (SELECT count(*) FROM pg_attribute WHERE attrelid = to_regclass('outbox') "
	                      "           AND attname IN ('dead_at', 'retry_after', 'last_error') AND NOT attisdropped)",
	                      0, NULL);
	if (!res)
		return false;
	bool outbox = PQgetvalue(res, 0, 0)[0] == 't';
	bool lock = PQgetvalue(res, 0, 1)[0] == 't';
	int64_t cols = obr_ops_get_i64(res, 0, 2);
	PQclear(res);
	if (!outbox || !lock) {
		fprintf(stderr, "outbox-relay %s: table %s does not exist in this database (search_path)\n"
		                "HINT: run outbox-relay migrate first\n", cmd, outbox ? "outbox_lock" : "outbox");
		return false;
	}
	if (cols != 3) {
		fprintf(stderr, "outbox-relay %s: table outbox lacks the columns outbox-relay adds (dead_at, retry_after, last_error)\n"
		                "HINT: run outbox-relay migrate first\n", cmd);
		return false;
	}
	return true;
}
