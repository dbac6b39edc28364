/*
 * ops.c - `outbox-relay status` and `outbox-relay requeue`. Blocking libpq is fine here:
 * these are commands, not the loop.
 */
#include "cli/ops.h"

#include "config.h"
#include "db/migrate.h"
#include "util/numfmt.h"
#include "util/strbuf.h"

#include <ctype.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <libpq-fe.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <uuid/uuid.h>

#define EXIT_DB 1
#define EXIT_USAGE 2

/* status: above this many rows (planner estimate) processed rows are estimated, not counted */
#define EXACT_COUNT_LIMIT 1000000.0
/* requeue --dry-run lists at most this many rows (the counts are always exact) */
#define DRY_RUN_LIST_MAX 1000
/* requeue notifies at most this many partitions; the relay's poll finds the rest */
#define NOTIFY_MAX 10000
#define MAX_SELECTORS 100000

#define STR_(x) #x
#define STR(x) STR_(x)

/* ---- shared ---- */

/* The first line of libpq's message, without the trailing newline. */
static void pq_message(char *out, size_t cap, const char *msg)
{
	snprintf(out, cap, "%s", msg ? msg : "");
	char *nl = strchr(out, '\n');
	if (nl)
		*nl = '\0';
	obr_trim_end(out, " \n.");
	if (!strncmp(out, "ERROR:  ", 8))
		memmove(out, out + 8, strlen(out + 8) + 1);
	if (!out[0])
		snprintf(out, cap, "unknown error");
}

/* Takes --database URL / --database=URL at argv[*i]; returns true when it was one. */
static bool take_database(const char *cmd, int argc, char **argv, int *i, const char **url, int *rc)
{
	if (!strcmp(argv[*i], "--database")) {
		if (*i + 1 >= argc) {
			fprintf(stderr, "outbox-relay %s: option --database needs a value\n", cmd);
			*rc = EXIT_USAGE;
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

/* A flag's value: "--flag VALUE" or "--flag=VALUE". Returns NULL when argv[*i] is not the
 * flag; sets *rc on a missing value. */
static const char *take_value(const char *cmd, const char *flag, int argc, char **argv, int *i, int *rc)
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
		*rc = EXIT_USAGE;
		return NULL;
	}
	return argv[++*i];
}

static PGconn *connect_db(const char *cmd, const char *url)
{
	char app[64];
	snprintf(app, sizeof(app), "outbox-relay %s", cmd);
	/* ours first: what the URL says overrides them (expand_dbname) */
	const char *const kw[] = { "connect_timeout", "fallback_application_name", "dbname", NULL };
	const char *const val[] = { "10", app, url, NULL };
	char bad[512];
	if (obr_conninfo_check(url, bad, sizeof(bad))) {
		fprintf(stderr, "outbox-relay %s: %s\n", cmd, bad);
		return NULL;
	}
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
	return conn;
}

/* Runs sql with text parameters; returns the result when its status is ok, else prints
 * "outbox-relay CMD: WHAT: message" and returns NULL. */
static PGresult *query(PGconn *conn, const char *cmd, const char *what, const char *sql, int nparams,
                       const char *const *params)
{
	PGresult *res = PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);
	ExecStatusType st = PQresultStatus(res);
	if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK)
		return res;
	char msg[1024];
	pq_message(msg, sizeof(msg), res ? PQresultErrorMessage(res) : PQerrorMessage(conn));
	fprintf(stderr, "outbox-relay %s: %s: %s\n", cmd, what, msg);
	PQclear(res);
	return NULL;
}

static bool exec(PGconn *conn, const char *cmd, const char *sql)
{
	PGresult *res = query(conn, cmd, sql, sql, 0, NULL);
	PQclear(res);
	return res != NULL;
}

static int64_t get_i64(const PGresult *res, int row, int col)
{
	return PQgetisnull(res, row, col) ? 0 : strtoll(PQgetvalue(res, row, col), NULL, 10);
}

static json_object *json_double(double v)
{
	char buf[40];
	obr_fmt_double(buf, sizeof(buf), v);
	return json_object_new_double_s(v, buf);
}

/* The outbox table with outbox-relay's columns must be there; prints why not. */
static bool schema_present(PGconn *conn, const char *cmd)
{
	PGresult *res = query(conn, cmd, "could not inspect the schema",
	                      "SELECT to_regclass('outbox') IS NOT NULL, to_regclass('outbox_lock') IS NOT NULL, "
	                      "       (SELECT count(*) FROM pg_attribute WHERE attrelid = to_regclass('outbox') "
	                      "           AND attname IN ('dead_at', 'retry_after', 'last_error') AND NOT attisdropped)",
	                      0, NULL);
	if (!res)
		return false;
	bool outbox = PQgetvalue(res, 0, 0)[0] == 't';
	bool lock = PQgetvalue(res, 0, 1)[0] == 't';
	int64_t cols = get_i64(res, 0, 2);
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

/* ---- status ---- */

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

	if (!exec(conn, cmd, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"))
		return false;
	if (!schema_present(conn, cmd))
		return false;

	/* pending = due + delayed + retrying, each row in exactly one of them */
	res = query(conn, cmd, "could not count the outbox rows",
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
	s->due = get_i64(res, 0, 0);
	s->delayed = get_i64(res, 0, 1);
	s->retrying = get_i64(res, 0, 2);
	s->parked = get_i64(res, 0, 3);
	s->has_oldest = !PQgetisnull(res, 0, 4);
	s->oldest_due_age_s = s->has_oldest ? strtod(PQgetvalue(res, 0, 4), NULL) : 0;
	if (s->oldest_due_age_s < 0)
		s->oldest_due_age_s = 0;
	PQclear(res);

	res = query(conn, cmd, "could not read the table's statistics",
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
		res = query(conn, cmd, "could not count the processed rows",
		            "SELECT count(*) FROM outbox WHERE processed_at IS NOT NULL", 0, NULL);
		if (!res)
			return false;
		s->processed = get_i64(res, 0, 0);
		PQclear(res);
	}

	res = query(conn, cmd, "could not read the leases",
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
		s->leases[i].active = get_i64(res, i, 1);
		s->leases[i].expired = get_i64(res, i, 2);
		s->leases_active += s->leases[i].active;
		s->leases_expired += s->leases[i].expired;
	}
	s->nleases = n;
	PQclear(res);

	res = query(conn, cmd, "could not read pg_notification_queue_usage()",
	            "SELECT pg_notification_queue_usage()", 0, NULL);
	if (!res)
		return false;
	s->queue_usage = strtod(PQgetvalue(res, 0, 0), NULL);
	PQclear(res);

	s->binary_version = obr_migration_count ? obr_migrations[obr_migration_count - 1].version : 0;
	res = query(conn, cmd, "could not inspect the schema",
	            "SELECT to_regclass('outbox_relay_schema_version') IS NOT NULL", 0, NULL);
	if (!res)
		return false;
	s->schema_table = PQgetvalue(res, 0, 0)[0] == 't';
	PQclear(res);
	int *recorded = NULL;
	int nrecorded = 0;
	if (s->schema_table) {
		res = query(conn, cmd, "could not read outbox_relay_schema_version",
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
			recorded[i] = (int)get_i64(res, i, 0);
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
	exec(conn, cmd, "COMMIT");
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
		if (take_database("status", argc, argv, &i, &url, &rc)) {
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
			return EXIT_USAGE;
		}
	}
	if (!url || !*url) {
		fprintf(stderr, "outbox-relay status: DATABASE_URL is not set: give the database as DATABASE_URL or --database\n");
		return EXIT_USAGE;
	}
	char bad[512];
	if (obr_conninfo_check(url, bad, sizeof(bad))) {
		fprintf(stderr, "outbox-relay status: %s\n", bad);
		return EXIT_USAGE;
	}
	PGconn *conn = connect_db("status", url);
	if (!conn)
		return EXIT_DB;
	struct status s = { 0 };
	if (status_collect(conn, &s, exact)) {
		if (json)
			status_print_json(&s);
		else
			status_print_text(&s);
		rc = 0;
	} else {
		rc = EXIT_DB;
	}
	free(s.leases);
	PQfinish(conn);
	return rc;
}

/* ---- requeue ---- */

void obr_ops_requeue_usage(FILE *out)
{
	fprintf(out,
	        "Usage: outbox-relay requeue SELECTOR [--dry-run] [--channel NAME] [--database URL]\n"
	        "\n"
	        "Makes parked rows (dead_at set, processed_at not set) due again: dead_at, retry_after and\n"
	        "last_error are cleared and attempts is reset to 0, so the row gets the full failure limit\n"
	        "again. Destinations of a row that already succeeded (sent_destinations) are not sent again.\n"
	        "A requeued row keeps its place in its partition's order. Every affected partition is\n"
	        "notified in the same transaction, so a running relay delivers the rows at once.\n"
	        "Pending and processed rows are never touched.\n"
	        "\n"
	        "Exactly one selector:\n"
	        "  --key UUID         the row with this idempotent_key (repeatable)\n"
	        "  --partition UUID   the parked rows of this partition_key (repeatable)\n"
	        "  --since TIMESTAMP  rows parked at or after TIMESTAMP (dead_at >= TIMESTAMP)\n"
	        "  --until TIMESTAMP  rows parked before TIMESTAMP (dead_at < TIMESTAMP); with --since or alone\n"
	        "  --all              every parked row\n"
	        "TIMESTAMP is ISO 8601: 2024-05-01, 2024-05-01T12:00:00, 2024-05-01 12:00:00.5+02:00;\n"
	        "without a zone it is UTC.\n"
	        "\n"
	        "  --dry-run          print how many rows and which (the first %d) would be requeued;\n"
	        "                     change nothing\n"
	        "  --channel NAME     channel to notify (default: OUTBOX_CHANNEL, else outbox)\n"
	        "  --database URL     the database (default: DATABASE_URL)\n"
	        "\n"
	        "Exit status: 0 (also when nothing matched), 1 on a database error, 2 on bad arguments.\n",
	        DRY_RUN_LIST_MAX);
}

/* ISO 8601 date, optionally with a time (T or space), fraction and zone (Z, +HH, +HH:MM,
 * +HHMM). PostgreSQL checks the calendar afterwards. */
static bool timestamp_syntax_ok(const char *s)
{
#define DIGITS(n)                                   \
	do {                                        \
		for (int d_ = 0; d_ < (n); d_++)    \
			if (!isdigit((unsigned char)*s++)) \
				return false;       \
	} while (0)
	DIGITS(4);
	if (*s++ != '-')
		return false;
	DIGITS(2);
	if (*s++ != '-')
		return false;
	DIGITS(2);
	if (*s == '\0')
		return true;
	if (*s != 'T' && *s != 't' && *s != ' ')
		return false;
	s++;
	DIGITS(2);
	if (*s++ != ':')
		return false;
	DIGITS(2);
	if (*s == ':') {
		s++;
		DIGITS(2);
		if (*s == '.') {
			s++;
			int n = 0;
			while (isdigit((unsigned char)*s)) {
				s++;
				n++;
			}
			if (n == 0 || n > 6)
				return false;
		}
	}
	if (*s == '\0')
		return true;
	if ((*s == 'Z' || *s == 'z') && s[1] == '\0')
		return true;
	if (*s != '+' && *s != '-')
		return false;
	s++;
	DIGITS(2);
	if (*s == '\0')
		return true;
	if (*s == ':')
		s++;
	DIGITS(2);
	return *s == '\0';
#undef DIGITS
}

/* Appends the normalised UUID to an array literal; false when text is not a UUID. */
static bool add_uuid(char **lit, size_t *len, size_t *cap, const char *text)
{
	uuid_t u;
	char norm[37];
	if (strlen(text) != 36 || uuid_parse(text, u) != 0)
		return false;
	uuid_unparse_lower(u, norm);
	if (*len + 40 > *cap) {
		size_t ncap = *cap ? *cap * 2 : 256;
		char *p = realloc(*lit, ncap);
		if (!p) {
			fprintf(stderr, "outbox-relay requeue: out of memory\n");
			exit(EXIT_DB);
		}
		*lit = p;
		*cap = ncap;
	}
	*len += (size_t)snprintf(*lit + *len, *cap - *len, "%s%s", *len ? "," : "{", norm);
	return true;
}

static bool close_array(char **lit, size_t *len, size_t *cap)
{
	if (!*lit)
		return true;
	if (*len + 2 > *cap) {
		char *p = realloc(*lit, *cap + 2);
		if (!p)
			return false;
		*lit = p;
		*cap += 2;
	}
	(*lit)[(*len)++] = '}';
	(*lit)[*len] = '\0';
	return true;
}

/* $1 keys, $2 partitions, $3 since, $4 until: NULL means "any". Parameters given as NULL are
 * known when the unnamed statement is planned, so the parked-rows index is used. */
#define PARKED_WHERE \
	" dead_at IS NOT NULL AND processed_at IS NULL" \
	" AND ($1::uuid[] IS NULL OR idempotent_key = ANY ($1::uuid[]))" \
	" AND ($2::uuid[] IS NULL OR partition_key = ANY ($2::uuid[]))" \
	" AND ($3::timestamptz IS NULL OR dead_at >= $3::timestamptz)" \
	" AND ($4::timestamptz IS NULL OR dead_at < $4::timestamptz)"

static const char SQL_DRY_COUNT[] =
	"SELECT count(*), count(DISTINCT partition_key) FROM outbox WHERE" PARKED_WHERE;

static const char SQL_DRY_LIST[] =
	"SELECT idempotent_key::text, partition_key::text, "
	"       to_char(dead_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), attempts, "
	"       coalesce(last_error, '') "
	"  FROM outbox WHERE" PARKED_WHERE
	" ORDER BY dead_at, idempotent_key LIMIT " STR(DRY_RUN_LIST_MAX);

static const char SQL_REQUEUE[] =
	"WITH upd AS ("
	"  UPDATE outbox SET dead_at = NULL, retry_after = NULL, attempts = 0, last_error = NULL"
	"   WHERE" PARKED_WHERE
	"  RETURNING partition_key"
	"), parts AS ("
	"  SELECT partition_key, count(*) AS n FROM upd GROUP BY partition_key"
	"), notified AS ("
	"  SELECT pg_notify($5, partition_key::text) FROM "
	"    (SELECT partition_key FROM parts ORDER BY partition_key LIMIT $6::int) p"
	") "
	"SELECT (SELECT coalesce(sum(n), 0) FROM parts), (SELECT count(*) FROM parts),"
	"       (SELECT count(*) FROM notified)";

/* For --key: the keys that are not parked, and why. */
static const char SQL_KEYS_NOT_PARKED[] =
	"SELECT k::text, CASE WHEN o.idempotent_key IS NULL THEN 'does not exist'"
	"                     WHEN o.processed_at IS NOT NULL THEN 'is already processed'"
	"                     ELSE 'is not parked (it is pending)' END"
	"  FROM unnest($1::uuid[]) AS k LEFT JOIN outbox o ON o.idempotent_key = k"
	" WHERE o.idempotent_key IS NULL OR o.processed_at IS NOT NULL OR o.dead_at IS NULL"
	" ORDER BY k";

static void print_last_error(const char *e)
{
	char buf[121];
	size_t n = 0;
	for (const char *p = e; *p && n < sizeof(buf) - 1; p++)
		buf[n++] = (*p == '\n' || *p == '\r' || *p == '\t') ? ' ' : *p;
	buf[n] = '\0';
	printf("%s%s", buf, strlen(e) > n ? "..." : "");
}

static bool channel_ok(const char *c)
{
	if (!*c || strlen(c) > 63)
		return false;
	for (; *c; c++)
		if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_'))
			return false;
	return true;
}

int obr_ops_requeue(int argc, char **argv)
{
	const char *cmd = "requeue";
	const char *url = getenv("DATABASE_URL");
	const char *channel = getenv("OUTBOX_CHANNEL");
	const char *since = NULL, *until = NULL;
	char *keys = NULL, *parts = NULL;
	size_t keys_len = 0, keys_cap = 0, parts_len = 0, parts_cap = 0;
	int nkeys = 0, nparts = 0;
	bool all = false, dry_run = false;
	int rc = 0;
	PGconn *conn = NULL;
	PGresult *res = NULL;
	const char *v;

	if (!channel || !*channel)
		channel = "outbox";
	for (int i = 0; i < argc; i++) {
		if (take_database(cmd, argc, argv, &i, &url, &rc)) {
			if (rc)
				goto out;
		} else if ((v = take_value(cmd, "--key", argc, argv, &i, &rc)) || rc) {
			if (rc)
				goto out;
			if (++nkeys > MAX_SELECTORS || !add_uuid(&keys, &keys_len, &keys_cap, v)) {
				fprintf(stderr, "outbox-relay requeue: invalid value for --key: \"%.80s\" is not a UUID%s\n", v,
				        nkeys > MAX_SELECTORS ? " (or too many --key options)" : "");
				rc = EXIT_USAGE;
				goto out;
			}
		} else if ((v = take_value(cmd, "--partition", argc, argv, &i, &rc)) || rc) {
			if (rc)
				goto out;
			if (++nparts > MAX_SELECTORS || !add_uuid(&parts, &parts_len, &parts_cap, v)) {
				fprintf(stderr, "outbox-relay requeue: invalid value for --partition: \"%.80s\" is not a UUID%s\n", v,
				        nparts > MAX_SELECTORS ? " (or too many --partition options)" : "");
				rc = EXIT_USAGE;
				goto out;
			}
		} else if ((v = take_value(cmd, "--since", argc, argv, &i, &rc)) || rc) {
			if (rc)
				goto out;
			if (since) {
				fprintf(stderr, "outbox-relay requeue: --since is given twice\n");
				rc = EXIT_USAGE;
				goto out;
			}
			since = v;
		} else if ((v = take_value(cmd, "--until", argc, argv, &i, &rc)) || rc) {
			if (rc)
				goto out;
			if (until) {
				fprintf(stderr, "outbox-relay requeue: --until is given twice\n");
				rc = EXIT_USAGE;
				goto out;
			}
			until = v;
		} else if ((v = take_value(cmd, "--channel", argc, argv, &i, &rc)) || rc) {
			if (rc)
				goto out;
			channel = v;
		} else if (!strcmp(argv[i], "--all")) {
			all = true;
		} else if (!strcmp(argv[i], "--dry-run")) {
			dry_run = true;
		} else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			obr_ops_requeue_usage(stdout);
			goto out;
		} else {
			fprintf(stderr, "outbox-relay requeue: unknown argument \"%s\" (see outbox-relay requeue --help)\n", argv[i]);
			rc = EXIT_USAGE;
			goto out;
		}
	}
	int kinds = (nkeys > 0) + (nparts > 0) + (since || until) + all;
	if (kinds != 1) {
		fprintf(stderr, "outbox-relay requeue: %s: give exactly one of --key, --partition, --since/--until or --all\n",
		        kinds ? "selectors cannot be combined" : "no rows selected");
		rc = EXIT_USAGE;
		goto out;
	}
	if (since && !timestamp_syntax_ok(since)) {
		fprintf(stderr, "outbox-relay requeue: invalid value for --since: \"%.80s\" is not an ISO 8601 timestamp (e.g. 2024-05-01T12:00:00Z)\n", since);
		rc = EXIT_USAGE;
		goto out;
	}
	if (until && !timestamp_syntax_ok(until)) {
		fprintf(stderr, "outbox-relay requeue: invalid value for --until: \"%.80s\" is not an ISO 8601 timestamp (e.g. 2024-05-01T12:00:00Z)\n", until);
		rc = EXIT_USAGE;
		goto out;
	}
	if (!channel_ok(channel)) {
		fprintf(stderr, "outbox-relay requeue: invalid value for --channel: \"%.80s\" (use lower-case letters, digits and _)\n", channel);
		rc = EXIT_USAGE;
		goto out;
	}
	if (!close_array(&keys, &keys_len, &keys_cap) || !close_array(&parts, &parts_len, &parts_cap)) {
		fprintf(stderr, "outbox-relay requeue: out of memory\n");
		rc = EXIT_DB;
		goto out;
	}

	if (!url || !*url) {
		fprintf(stderr, "outbox-relay requeue: DATABASE_URL is not set: give the database as DATABASE_URL or --database\n");
		rc = EXIT_USAGE;
		goto out;
	}
	char bad[512];
	if (obr_conninfo_check(url, bad, sizeof(bad))) {
		fprintf(stderr, "outbox-relay %s: %s\n", cmd, bad);
		rc = EXIT_USAGE;
		goto out;
	}
	conn = connect_db(cmd, url);
	if (!conn) {
		rc = EXIT_DB;
		goto out;
	}
	rc = EXIT_DB;
	/* one transaction for everything, SET LOCAL: the same through a transaction pooler */
	if (!exec(conn, cmd, dry_run ? "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY" : "BEGIN") ||
	    !exec(conn, cmd, "SET LOCAL TimeZone = 'UTC'"))
		goto out;

	/* the calendar check (2024-02-30) is PostgreSQL's: its data errors are usage errors */
	const char *bounds[] = { since, until };
	res = PQexecParams(conn, "SELECT $1::timestamptz < $2::timestamptz", 2, NULL, bounds, NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
		char msg[512];
		pq_message(msg, sizeof(msg), PQresultErrorMessage(res));
		fprintf(stderr, "outbox-relay requeue: invalid value for --since/--until: %s\n", msg);
		rc = state && !strncmp(state, "22", 2) ? EXIT_USAGE : EXIT_DB;
		goto out;
	}
	if (since && until && PQgetvalue(res, 0, 0)[0] != 't') {
		fprintf(stderr, "outbox-relay requeue: --since (%s) must be before --until (%s)\n", since, until);
		rc = EXIT_USAGE;
		goto out;
	}
	PQclear(res);
	res = NULL;

	if (!schema_present(conn, cmd))
		goto out;

	const char *params[6] = { keys, parts, since, until, channel, NULL };
	char notify_max[16];
	snprintf(notify_max, sizeof(notify_max), "%d", NOTIFY_MAX);
	params[5] = notify_max;

	if (nkeys) {
		res = query(conn, cmd, "could not look up the rows", SQL_KEYS_NOT_PARKED, 1, params);
		if (!res)
			goto out;
		for (int i = 0; i < PQntuples(res); i++)
			fprintf(stderr, "outbox-relay requeue: row %s %s: left as it is\n", PQgetvalue(res, i, 0),
			        PQgetvalue(res, i, 1));
		PQclear(res);
		res = NULL;
	}

	if (dry_run) {
		res = query(conn, cmd, "could not count the parked rows", SQL_DRY_COUNT, 4, params);
		if (!res)
			goto out;
		int64_t rows = get_i64(res, 0, 0), nparts_hit = get_i64(res, 0, 1);
		PQclear(res);
		res = query(conn, cmd, "could not list the parked rows", SQL_DRY_LIST, 4, params);
		if (!res)
			goto out;
		printf("would requeue %" PRId64 " row%s in %" PRId64 " partition%s (dry run: nothing changed)\n", rows,
		       rows == 1 ? "" : "s", nparts_hit, nparts_hit == 1 ? "" : "s");
		int n = PQntuples(res);
		if (n) {
			printf("%-36s  %-36s  %-24s  %8s  %s\n", "idempotent_key", "partition_key", "dead_at", "attempts",
			       "last_error");
			for (int i = 0; i < n; i++) {
				printf("%-36s  %-36s  %-24s  %8s  ", PQgetvalue(res, i, 0), PQgetvalue(res, i, 1),
				       PQgetvalue(res, i, 2), PQgetvalue(res, i, 3));
				print_last_error(PQgetvalue(res, i, 4));
				printf("\n");
			}
			if (rows > n)
				printf("... and %" PRId64 " more\n", rows - n);
		}
		PQclear(res);
		res = NULL;
		exec(conn, cmd, "ROLLBACK");
		rc = 0;
		goto out;
	}

	res = query(conn, cmd, "could not requeue", SQL_REQUEUE, 6, params);
	if (!res)
		goto out;
	int64_t rows = get_i64(res, 0, 0), nparts_hit = get_i64(res, 0, 1), notified = get_i64(res, 0, 2);
	PQclear(res);
	res = NULL;
	if (!exec(conn, cmd, "COMMIT"))
		goto out;
	printf("requeued %" PRId64 " row%s in %" PRId64 " partition%s", rows, rows == 1 ? "" : "s", nparts_hit,
	       nparts_hit == 1 ? "" : "s");
	if (nparts_hit == 0)
		printf("\n");
	else if (notified == nparts_hit)
		printf("; notified them on channel %s\n", channel);
	else
		printf("; notified %" PRId64 " of them on channel %s (a relay's poll finds the others)\n", notified, channel);
	rc = 0;
out:
	PQclear(res);
	PQfinish(conn);
	free(keys);
	free(parts);
	return rc;
}
