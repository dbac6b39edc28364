/*
 * migrate.c - schema migrations. Blocking libpq is fine here: this is a command, not the loop.
 */
#include "db/migrate.h"
#include "config.h"

#include "util/log.h"
#include "util/strbuf.h"

#include <libpq-fe.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Any constant works: it only has to be the same for every migrate run ("obr\0migr"). */
#define MIGRATE_LOCK_KEY "7957355443025064306"

static int exec_ok(PGconn *conn, const char *sql, const char *what)
{
	PGresult *res = PQexec(conn, sql);
	ExecStatusType st = PQresultStatus(res);
	if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && st != PGRES_EMPTY_QUERY) {
		char msg[2048];
		snprintf(msg, sizeof(msg), "%s", PQresultErrorMessage(res));
		obr_trim_end(msg, " \n");
		obr_log_error("migrate: %s failed: %s", what, msg);
		PQclear(res);
		return -1;
	}
	PQclear(res);
	return 0;
}

/* The crate's table must have the crate's column types: a table of the same name with other
 * types is not ours to change. */
static int check_compatible(PGconn *conn)
{
	static const char sql[] =
		"SELECT c.column_name, c.data_type FROM information_schema.columns c "
		" WHERE c.table_schema = current_schema() AND c.table_name = 'outbox' AND "
		" (c.column_name, c.data_type) NOT IN (('idempotent_key','uuid'),('partition_key','uuid'),"
		"  ('destinations','jsonb'),('headers','jsonb'),('payload','text'),('attempts','integer'),"
		"  ('created_at','timestamp with time zone'),('process_after','timestamp with time zone'),"
		"  ('processed_at','timestamp with time zone'),('last_error','text'),('retry_after','timestamp with time zone'),"
		"  ('dead_at','timestamp with time zone'),('sent_destinations','ARRAY'))"
		"   AND c.column_name IN ('idempotent_key','partition_key','destinations','headers','payload','attempts',"
		"  'created_at','process_after','processed_at','last_error','retry_after','dead_at','sent_destinations')";
	PGresult *res = PQexec(conn, sql);
	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		obr_log_error("migrate: could not inspect table outbox: %s", PQresultErrorMessage(res));
		PQclear(res);
		return -1;
	}
	int bad = PQntuples(res);
	for (int i = 0; i < bad; i++)
		obr_log_error("migrate: table outbox exists but column %s has type %s, which outbox-relay cannot use",
		          PQgetvalue(res, i, 0), PQgetvalue(res, i, 1));
	PQclear(res);
	return bad ? -1 : 0;
}

int obr_migrate(const char *conninfo)
{
	int rc = 1;
	int applied = 0;
	char bad[512];
	if (obr_conninfo_check(conninfo, bad, sizeof(bad))) {
		obr_log_error("migrate: %s", bad);
		return 2;
	}
	PGconn *conn = PQconnectdb(conninfo);
	if (PQstatus(conn) != CONNECTION_OK) {
		char msg[1024];
		snprintf(msg, sizeof(msg), "%s", PQerrorMessage(conn));
		obr_trim_end(msg, " \n");
		obr_log_error("migrate: could not connect to the database: %s", msg);
		PQfinish(conn);
		return 1;
	}
	/* quiet "already exists, skipping" notices of the IF NOT EXISTS statements */
	if (exec_ok(conn, "SET client_min_messages = warning", "setting client_min_messages") ||
	    exec_ok(conn, "BEGIN", "BEGIN") ||
	    exec_ok(conn, "SELECT pg_advisory_xact_lock(" MIGRATE_LOCK_KEY ")", "taking the migration lock") ||
	    exec_ok(conn,
	            "CREATE TABLE IF NOT EXISTS outbox_relay_schema_version ("
	            " version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
	            "creating outbox_relay_schema_version") ||
	    check_compatible(conn))
		goto out;

	for (int i = 0; i < obr_migration_count; i++) {
		const struct obr_migration *m = &obr_migrations[i];
		char version[16];
		snprintf(version, sizeof(version), "%d", m->version);
		const char *params[] = { version, m->name };
		PGresult *res = PQexecParams(conn, "SELECT 1 FROM outbox_relay_schema_version WHERE version = $1::int", 1,
		                             NULL, params, NULL, NULL, 0);
		if (PQresultStatus(res) != PGRES_TUPLES_OK) {
			obr_log_error("migrate: could not read outbox_relay_schema_version: %s", PQresultErrorMessage(res));
			PQclear(res);
			goto out;
		}
		bool done = PQntuples(res) > 0;
		PQclear(res);
		if (done)
			continue;
		char what[256];
		snprintf(what, sizeof(what), "migration %s", m->name);
		if (exec_ok(conn, m->sql, what))
			goto out;
		res = PQexecParams(conn, "INSERT INTO outbox_relay_schema_version (version, name) VALUES ($1::int, $2)", 2,
		                   NULL, params, NULL, NULL, 0);
		if (PQresultStatus(res) != PGRES_COMMAND_OK) {
			obr_log_error("migrate: could not record migration %s: %s", m->name, PQresultErrorMessage(res));
			PQclear(res);
			goto out;
		}
		PQclear(res);
		obr_log_info("migrate: applied %s", m->name);
		applied++;
	}
	if (exec_ok(conn, "COMMIT", "COMMIT"))
		goto out;
	obr_log_info("migrate: schema is at version %d (%d migrations applied now)",
	         obr_migration_count ? obr_migrations[obr_migration_count - 1].version : 0, applied);
	rc = 0;
out:
	PQfinish(conn);
	return rc;
}
