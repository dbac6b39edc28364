/*
 * migrate.c - schema migrations. Blocking libpq is fine here: this is a command, not the loop.
 *
 * Every lock it waits for (but the advisory lock between migrate runs) is bounded by
 * lock_timeout: an ALTER TABLE queued behind a long transaction would hold up every writer
 * of outbox for as long. On a lock timeout the whole run is rolled back and tried again, a
 * bounded number of times, naming the sessions that hold locks on the outbox tables.
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
#include <time.h>

/* Any constant works: it only has to be the same for every migrate run ("obr\0migr"). */
#define MIGRATE_LOCK_KEY "7957355443025064306"

/* lock_not_available: lock_timeout expired */
#define SQLSTATE_LOCK_TIMEOUT "55P03"
#define LOCK_TIMEOUT_DEFAULT "2s"
#define LOCK_ATTEMPTS 10
#define RETRY_PAUSE_MAX_MS 5000

/* Set when a statement failed because lock_timeout expired: the run is retried. */
static bool lock_timed_out;

static int exec_ok(PGconn *conn, const char *sql, const char *what)
{
	PGresult *res = PQexec(conn, sql);
	ExecStatusType st = PQresultStatus(res);
	if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && st != PGRES_EMPTY_QUERY) {
		const char *code = PQresultErrorField(res, PG_DIAG_SQLSTATE);
		char msg[2048];
		snprintf(msg, sizeof(msg), "%s", PQresultErrorMessage(res));
		obr_trim_end(msg, " \n");
		if (code && !strcmp(code, SQLSTATE_LOCK_TIMEOUT)) {
			lock_timed_out = true;
			obr_log_info("migrate: %s: %s", what, msg);
		} else {
			obr_log_error("migrate: %s failed: %s", what, msg);
		}
		PQclear(res);
		return -1;
	}
	PQclear(res);
	return 0;
}

/* After a lock timeout: who holds locks on the outbox tables (the longest transaction
 * first), so the message names what to wait for or end. */
static void describe_blockers(PGconn *conn, char *out, size_t outlen)
{
	static const char sql[] =
		"SELECT a.pid, coalesce(a.usename, ''), coalesce(a.application_name, ''), coalesce(a.state, ''),"
		"       coalesce(extract(epoch FROM now() - a.xact_start)::bigint, 0),"
		"       left(regexp_replace(coalesce(a.query, ''), '\\s+', ' ', 'g'), 120),"
		"       string_agg(DISTINCT c.relname || ' (' || l.mode || ')', ', ')"
		"  FROM pg_locks l JOIN pg_class c ON c.oid = l.relation JOIN pg_stat_activity a ON a.pid = l.pid"
		" WHERE l.granted AND l.pid <> pg_backend_pid() AND c.relname LIKE 'outbox%'"
		"   AND c.relnamespace = current_schema()::regnamespace"
		" GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 5 DESC LIMIT 3";
	PGresult *res = PQexec(conn, sql);
	size_t o = 0;
	out[0] = '\0';
	for (int i = 0; PQresultStatus(res) == PGRES_TUPLES_OK && i < PQntuples(res) && o < outlen; i++) {
		int n = snprintf(out + o, outlen - o,
		                 "%spid %s (user %s, application \"%s\", %s, transaction open %s s, holding %s, last query: %s)",
		                 i ? "; " : "", PQgetvalue(res, i, 0), PQgetvalue(res, i, 1), PQgetvalue(res, i, 2),
		                 PQgetvalue(res, i, 3), PQgetvalue(res, i, 4), PQgetvalue(res, i, 6), PQgetvalue(res, i, 5));
		o += n > 0 ? (size_t)n : 0;
	}
	if (!out[0])
		snprintf(out, outlen, "no session holds a lock on the outbox tables any more");
	PQclear(res);
}

static void pause_ms(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) != 0)
		;
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

static int set_lock_timeout(PGconn *conn, const char *value)
{
	const char *params[] = { value };
	PGresult *res = PQexecParams(conn, "SELECT set_config('lock_timeout', $1, true)", 1, NULL, params, NULL, NULL, 0);
	int rc = PQresultStatus(res) == PGRES_TUPLES_OK ? 0 : -1;
	if (rc)
		obr_log_error("migrate: setting lock_timeout failed: %s", PQresultErrorMessage(res));
	PQclear(res);
	return rc;
}

/* One run in one transaction: returns 0, or -1 (lock_timed_out says whether to retry). */
static int run_once(PGconn *conn, const char *lock_timeout, int *applied)
{
	*applied = 0;
	/* the advisory lock waits as long as another migrate runs; the DDL does not: an
	 * ALTER TABLE queued behind a long transaction would hold up every writer of outbox */
	if (exec_ok(conn, "BEGIN", "BEGIN") || exec_ok(conn, "SET LOCAL lock_timeout = 0", "setting lock_timeout") ||
	    exec_ok(conn, "SELECT pg_advisory_xact_lock(" MIGRATE_LOCK_KEY ")", "taking the migration lock") ||
	    set_lock_timeout(conn, lock_timeout) ||
	    exec_ok(conn,
	            "CREATE TABLE IF NOT EXISTS outbox_relay_schema_version ("
	            " version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
	            "creating outbox_relay_schema_version") ||
	    check_compatible(conn))
		return -1;

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
			return -1;
		}
		bool done = PQntuples(res) > 0;
		PQclear(res);
		if (done)
			continue;
		char what[256];
		snprintf(what, sizeof(what), "migration %s", m->name);
		if (exec_ok(conn, m->sql, what))
			return -1;
		res = PQexecParams(conn, "INSERT INTO outbox_relay_schema_version (version, name) VALUES ($1::int, $2)", 2,
		                   NULL, params, NULL, NULL, 0);
		if (PQresultStatus(res) != PGRES_COMMAND_OK) {
			obr_log_error("migrate: could not record migration %s: %s", m->name, PQresultErrorMessage(res));
			PQclear(res);
			return -1;
		}
		PQclear(res);
		obr_log_info("migrate: applied %s", m->name);
		(*applied)++;
	}
	return exec_ok(conn, "COMMIT", "COMMIT");
}

int obr_migrate(const char *conninfo)
{
	char bad[512];
	if (obr_conninfo_check(conninfo, bad, sizeof(bad))) {
		obr_log_error("migrate: %s", bad);
		return 2;
	}
	const char *keys[] = { "dbname", "fallback_application_name", NULL };
	const char *vals[] = { conninfo, "outbox-relay migrate", NULL };
	PGconn *conn = PQconnectdbParams(keys, vals, 1);
	if (PQstatus(conn) != CONNECTION_OK) {
		char msg[1024];
		snprintf(msg, sizeof(msg), "%s", PQerrorMessage(conn));
		obr_trim_end(msg, " \n");
		obr_log_error("migrate: could not connect to the database: %s", msg);
		PQfinish(conn);
		return 1;
	}
	int rc = 1, applied = 0;
	/* quiet "already exists, skipping" notices of the IF NOT EXISTS statements */
	if (exec_ok(conn, "SET client_min_messages = warning", "setting client_min_messages"))
		goto out;
	/* a lock_timeout of the connection string or the role is kept, else LOCK_TIMEOUT_DEFAULT */
	PGresult *res = PQexec(conn, "SELECT t, extract(epoch FROM t::interval) * 1000 FROM (SELECT CASE "
	                             "current_setting('lock_timeout') WHEN '0' THEN '" LOCK_TIMEOUT_DEFAULT "'"
	                             " ELSE current_setting('lock_timeout') END AS t) s");
	char timeout[64] = LOCK_TIMEOUT_DEFAULT;
	int pause = 2000;
	if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1) {
		snprintf(timeout, sizeof(timeout), "%s", PQgetvalue(res, 0, 0));
		pause = atoi(PQgetvalue(res, 0, 1));
	}
	PQclear(res);
	/* writers held up meanwhile get at least as long to go ahead as they waited */
	pause = pause < 100 ? 100 : pause > RETRY_PAUSE_MAX_MS ? RETRY_PAUSE_MAX_MS : pause;

	for (int attempt = 1; attempt <= LOCK_ATTEMPTS; attempt++) {
		lock_timed_out = false;
		if (run_once(conn, timeout, &applied) == 0) {
			rc = 0;
			break;
		}
		if (!lock_timed_out)
			break;
		PQclear(PQexec(conn, "ROLLBACK"));
		char blockers[1024];
		describe_blockers(conn, blockers, sizeof(blockers));
		if (attempt == LOCK_ATTEMPTS) {
			obr_log_error("migrate: gave up after %d attempts: a lock on the outbox tables was not granted within "
			              "lock_timeout (%s); held by: %s",
			              LOCK_ATTEMPTS, timeout, blockers);
			break;
		}
		obr_log_warn("migrate: a lock was not granted within lock_timeout (%s), attempt %d of %d, retrying in %d ms "
		             "(writers of outbox were not held up longer); held by: %s",
		             timeout, attempt, LOCK_ATTEMPTS, pause, blockers);
		pause_ms(pause);
	}
	if (rc == 0)
		obr_log_info("migrate: schema is at version %d (%d migrations applied now)",
		             obr_migration_count ? obr_migrations[obr_migration_count - 1].version : 0, applied);
out:
	PQfinish(conn);
	return rc;
}
