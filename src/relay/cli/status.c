/*
 * status.c - `outbox-relay status`: the outbox's rows by state, leases, the notification
 * queue and the schema version, read in one snapshot.
 */
#include "cli/ops.h"

#include "cli/ops_common.h"
#include "db/migrate.h"
#include "util/numfmt.h"

#include <inttypes.h>
#include <json-c/json.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* above this many rows (planner estimate) processed rows are estimated, not counted */
#define EXACT_COUNT_LIMIT 1000000.0

/* A JSON number written as the shortest text that reads back as v. */
static json_object *json_double(double v)
{
	char buf[40];
	obr_fmt_double(buf, sizeof(buf), v);
	return json_object_new_double_s(v, buf);
}

struct lease_row {
	char lock_id[40];
	int64_t active, expired;
};

struct status {
	int64_t due, delayed, retrying, parked, processed;
	bool processed_estimated;
	bool has_oldest;
	double oldest_due_age_s;
	double queue_usage;
	struct lease_row *leases;
	int nleases;
	int64_t leases_active, leases_expired;
	int schema_version;          /* highest recorded; 0 = none */
	bool schema_table;
	int binary_version;
	const char *missing[64];     /* names of built-in migrations the database has not recorded */
	int nmissing;
};

void obr_ops_status_usage(FILE *out)
{
	fprintf(out,
	        "Usage: outbox-relay status [--json] [--exact] [--database URL]\n"
	        "\n"
	        "Shows the state of the outbox (read-only, one consistent snapshot):\n"
	        "  due rows           pending rows that may go out now\n"
	        "  delayed rows       pending rows whose process_after is in the future\n"
	        "  retrying rows      pending rows waiting for their retry_after after a failure\n"
	        "  parked rows        rows with dead_at set (see outbox-relay requeue)\n"
	        "  processed rows     delivered rows still in the table; estimated from the planner's\n"
	        "                     statistics above %.0f rows unless --exact is given\n"
	        "  oldest due age     seconds since the oldest due row's process_after\n"
	        "  leases             active and expired partition leases by relay instance (lock_id)\n"
	        "  notification queue pg_notification_queue_usage(), 0..1\n"
	        "  schema version     the highest applied migration, and whether this binary has newer ones\n"
	        "\n"
	        "  --json             one JSON object with stable field names instead of the table\n"
	        "  --exact            always count processed rows exactly\n"
	        "  --database URL     the database (default: DATABASE_URL)\n"
	        "\n"
	        "Exit status: 0, or 1 when the database cannot be reached or has no outbox schema.\n",
	        EXACT_COUNT_LIMIT);
}

static bool status_collect(PGconn *conn, struct status *s, bool exact)
{
	const char *cmd = "status";
	PGresult *res;

	if (!obr_ops_exec(conn, cmd, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"))
		return false;
	if (!obr_ops_schema_present(conn, cmd))
		return false;

	/* pending = due + delayed + retrying, each row in exactly one of them */
	res = obr_ops_query(conn, cmd, "could not count the outbox rows",
	            "SELECT count(*) FILTER (WHERE dead_at IS NULL AND process_after <= now() "
	            "                          AND coalesce(retry_after, process_after) <= now()), "
	            "       count(*) FILTER (WHERE dead_at IS NULL AND process_after > now()), "
	            "       count(*) FILTER (WHERE dead_at IS NULL AND process_after <= now() AND retry_after > now()), "
	            "       count(*) FILTER (WHERE dead_at IS NOT NULL), "
	            "       extract(epoch FROM now() - min(process_after) FILTER ("
	            "           WHERE dead_at IS NULL AND process_after <= now() "
	            "             AND coalesce(retry_after, process_after) <= now()))::float8 "
	            "  FROM outbox WHERE processed_at IS NULL",
	            0, NULL);
	if (!res)
		return false;
	s->due = obr_ops_get_i64(res, 0, 0);
	s->delayed = obr_ops_get_i64(res, 0, 1);
	s->retrying = obr_ops_get_i64(res, 0, 2);
	s->parked = obr_ops_get_i64(res, 0, 3);
	s->has_oldest = !PQgetisnull(res, 0, 4);
	s->oldest_due_age_s = s->has_oldest ? strtod(PQgetvalue(res, 0, 4), NULL) : 0;
	if (s->oldest_due_age_s < 0)
		s->oldest_due_age_s = 0;
	PQclear(res);

	res = obr_ops_query(conn, cmd, "could not read the table's statistics",
	            "SELECT reltuples::float8 FROM pg_class WHERE oid = to_regclass('outbox')", 0, NULL);
	if (!res)
		return false;
	double reltuples = PQntuples(res) ? strtod(PQgetvalue(res, 0, 0), NULL) : -1;
	PQclear(res);
	if (!exact && reltuples > EXACT_COUNT_LIMIT) {
		double est = reltuples - (double)(s->due + s->delayed + s->retrying + s->parked);
		s->processed = est > 0 ? (int64_t)est : 0;
		s->processed_estimated = true;
	} else {
		res = obr_ops_query(conn, cmd, "could not count the processed rows",
		            "SELECT count(*) FROM outbox WHERE processed_at IS NOT NULL", 0, NULL);
		if (!res)
			return false;
		s->processed = obr_ops_get_i64(res, 0, 0);
		PQclear(res);
	}

	res = obr_ops_query(conn, cmd, "could not read the leases",
	            "SELECT lock_id::text, count(*) FILTER (WHERE processing_until >= now()), "
	            "       count(*) FILTER (WHERE processing_until < now()) "
	            "  FROM outbox_lock WHERE processed_at IS NULL GROUP BY lock_id ORDER BY lock_id",
	            0, NULL);
	if (!res)
		return false;
	int n = PQntuples(res);
	if (n > 0) {
		s->leases = calloc((size_t)n, sizeof(*s->leases));
		if (!s->leases) {
			PQclear(res);
			fprintf(stderr, "outbox-relay status: out of memory\n");
			return false;
		}
	}
	for (int i = 0; i < n; i++) {
		snprintf(s->leases[i].lock_id, sizeof(s->leases[i].lock_id), "%s", PQgetvalue(res, i, 0));
		s->leases[i].active = obr_ops_get_i64(res, i, 1);
		s->leases[i].expired = obr_ops_get_i64(res, i, 2);
		s->leases_active += s->leases[i].active;
		s->leases_expired += s->leases[i].expired;
	}
	s->nleases = n;
	PQclear(res);

	res = obr_ops_query(conn, cmd, "could not read pg_notification_queue_usage()",
	            "SELECT pg_notification_queue_usage()", 0, NULL);
	if (!res)
		return false;
	s->queue_usage = strtod(PQgetvalue(res, 0, 0), NULL);
	PQclear(res);

	s->binary_version = obr_migration_count ? obr_migrations[obr_migration_count - 1].version : 0;
	res = obr_ops_query(conn, cmd, "could not inspect the schema",
	            "SELECT to_regclass('outbox_relay_schema_version') IS NOT NULL", 0, NULL);
	if (!res)
		return false;
	s->schema_table = PQgetvalue(res, 0, 0)[0] == 't';
	PQclear(res);
	int *recorded = NULL;
	int nrecorded = 0;
	if (s->schema_table) {
		res = obr_ops_query(conn, cmd, "could not read outbox_relay_schema_version",
		            "SELECT version FROM outbox_relay_schema_version ORDER BY version", 0, NULL);
		if (!res)
			return false;
		nrecorded = PQntuples(res);
		recorded = nrecorded ? calloc((size_t)nrecorded, sizeof(*recorded)) : NULL;
		if (nrecorded && !recorded) {
			PQclear(res);
			fprintf(stderr, "outbox-relay status: out of memory\n");
			return false;
		}
		for (int i = 0; i < nrecorded; i++) {
			recorded[i] = (int)obr_ops_get_i64(res, i, 0);
			if (recorded[i] > s->schema_version)
				s->schema_version = recorded[i];
		}
		PQclear(res);
	}
	for (int m = 0; m < obr_migration_count; m++) {
		bool found = false;
		for (int i = 0; i < nrecorded && !found; i++)
			found = recorded[i] == obr_migrations[m].version;
		if (!found && s->nmissing < (int)(sizeof(s->missing) / sizeof(s->missing[0])))
			s->missing[s->nmissing++] = obr_migrations[m].name;
	}
	free(recorded);
	obr_ops_exec(conn, cmd, "COMMIT");
	return true;
}

static void status_print_json(const struct status *s)
{
	json_object *o = json_object_new_object();
	json_object_object_add(o, "due_rows", json_object_new_int64(s->due));
	json_object_object_add(o, "delayed_rows", json_object_new_int64(s->delayed));
	json_object_object_add(o, "retrying_rows", json_object_new_int64(s->retrying));
	json_object_object_add(o, "parked_rows", json_object_new_int64(s->parked));
	json_object_object_add(o, "processed_rows", json_object_new_int64(s->processed));
	json_object_object_add(o, "processed_rows_estimated", json_object_new_boolean(s->processed_estimated));
	json_object_object_add(o, "oldest_due_age_seconds", s->has_oldest ? json_double(s->oldest_due_age_s) : NULL);
	json_object *leases = json_object_new_array();
	for (int i = 0; i < s->nleases; i++) {
		json_object *l = json_object_new_object();
		json_object_object_add(l, "lock_id", json_object_new_string(s->leases[i].lock_id));
		json_object_object_add(l, "active", json_object_new_int64(s->leases[i].active));
		json_object_object_add(l, "expired", json_object_new_int64(s->leases[i].expired));
		json_object_array_add(leases, l);
	}
	json_object_object_add(o, "leases", leases);
	json_object_object_add(o, "leases_active", json_object_new_int64(s->leases_active));
	json_object_object_add(o, "leases_expired", json_object_new_int64(s->leases_expired));
	json_object_object_add(o, "notification_queue_usage", json_double(s->queue_usage));
	json_object_object_add(o, "schema_version", json_object_new_int(s->schema_version));
	json_object_object_add(o, "schema_binary_version", json_object_new_int(s->binary_version));
	json_object_object_add(o, "schema_behind", json_object_new_boolean(s->nmissing > 0));
	json_object *missing = json_object_new_array();
	for (int i = 0; i < s->nmissing; i++)
		json_object_array_add(missing, json_object_new_string(s->missing[i]));
	json_object_object_add(o, "schema_missing_migrations", missing);
	printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED |
	                                                     JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(o);
}

static void status_print_text(const struct status *s)
{
	const int w = 26;
	printf("%-*s%" PRId64 "\n", w, "due rows", s->due);
	if (s->has_oldest)
		printf("%-*s%.3f s\n", w, "oldest due row age", s->oldest_due_age_s);
	else
		printf("%-*s-\n", w, "oldest due row age");
	printf("%-*s%" PRId64 "\n", w, "delayed rows", s->delayed);
	printf("%-*s%" PRId64 "\n", w, "retrying rows", s->retrying);
	printf("%-*s%" PRId64 "%s\n", w, "parked rows", s->parked,
	       s->parked ? "   (outbox-relay requeue --help)" : "");
	printf("%-*s%" PRId64 "%s\n", w, "processed rows", s->processed,
	       s->processed_estimated ? "   (estimate; --exact counts)" : "");
	printf("%-*s%.2f %%\n", w, "notification queue usage", s->queue_usage * 100.0);
	if (s->nmissing == 0)
		printf("%-*s%d (up to date)\n", w, "schema version", s->schema_version);
	else if (!s->schema_table)
		printf("%-*snone recorded (this binary has %d: run outbox-relay migrate)\n", w, "schema version",
		       s->binary_version);
	else
		printf("%-*s%d (behind: %d migration%s of this binary missing: run outbox-relay migrate)\n", w,
		       "schema version", s->schema_version, s->nmissing, s->nmissing == 1 ? "" : "s");
	printf("%-*s%" PRId64 " active, %" PRId64 " expired, %d instance%s\n", w, "leases", s->leases_active,
	       s->leases_expired, s->nleases, s->nleases == 1 ? "" : "s");
	if (s->nleases) {
		printf("  %-36s  %8s  %8s\n", "lock_id", "active", "expired");
		for (int i = 0; i < s->nleases; i++)
			printf("  %-36s  %8" PRId64 "  %8" PRId64 "\n", s->leases[i].lock_id, s->leases[i].active,
			       s->leases[i].expired);
	}
}

int obr_ops_status(int argc, char **argv)
{
	const char *url = getenv("DATABASE_URL");
	bool json = false, exact = false;
	int rc = 0;

	for (int i = 0; i < argc; i++) {
		if (obr_ops_take_database("status", argc, argv, &i, &url, &rc)) {
			if (rc)
				return rc;
		} else if (!strcmp(argv[i], "--json")) {
			json = true;
		} else if (!strcmp(argv[i], "--exact")) {
			exact = true;
		} else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			obr_ops_status_usage(stdout);
			return 0;
		} else {
			fprintf(stderr, "outbox-relay status: unknown argument \"%s\" (see outbox-relay status --help)\n", argv[i]);
			return OBR_OPS_EXIT_USAGE;
		}
	}
	PGconn *conn = obr_ops_connect("status", url, &rc);
	if (!conn)
		return rc;
	struct status s = { 0 };
	if (status_collect(conn, &s, exact)) {
		if (json)
			status_print_json(&s);
		else
			status_print_text(&s);
		rc = 0;
	} else {
		rc = OBR_OPS_EXIT_DB;
	}
	free(s.leases);
	PQfinish(conn);
	return rc;
}
