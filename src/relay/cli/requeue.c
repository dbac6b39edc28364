/*
 * requeue.c - `outbox-relay requeue`: parked rows become due again, and their partitions are
 * notified in the same transaction.
 */
#include "cli/ops.h"

#include "cli/ops_common.h"
#include "util/strbuf.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uuid/uuid.h>

/* requeue --dry-run lists at most this many rows (the counts are always exact) */
#define DRY_RUN_LIST_MAX 1000
/* requeue notifies at most this many partitions; the relay's poll finds the rest */
#define NOTIFY_MAX 10000
#define MAX_SELECTORS 100000
/* a uuid[] literal of MAX_SELECTORS quoted elements */
#define SELECTORS_MAX_BYTES ((size_t)MAX_SELECTORS * 40 + 8)

#define STR_(x) #x
#define STR(x) STR_(x)

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

/* Appends the normalised UUID to the array literal in lit (opening it first); false when text
 * is not a UUID. */
static bool add_uuid(struct obr_strbuf *lit, const char *text)
{
	uuid_t u;
	char norm[37];
	if (strlen(text) != 36 || uuid_parse(text, u) != 0)
		return false;
	uuid_unparse_lower(u, norm);
	obr_strbuf_puts(lit, lit->len ? "," : "{");
	obr_strbuf_array_elem(lit, norm);
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
	struct obr_strbuf keys, parts;     /* uuid[] literals; "" when not given */
	int nkeys = 0, nparts = 0;
	bool all = false, dry_run = false;
	int rc = 0;
	PGconn *conn = NULL;
	PGresult *res = NULL;
	const char *v;

	obr_strbuf_init(&keys, SELECTORS_MAX_BYTES);
	obr_strbuf_init(&parts, SELECTORS_MAX_BYTES);
	if (!channel || !*channel)
		channel = "outbox";
	for (int i = 0; i < argc; i++) {
		if (obr_ops_take_database(cmd, argc, argv, &i, &url, &rc)) {
			if (rc)
				goto out;
		} else if ((v = obr_ops_take_value(cmd, "--key", argc, argv, &i, &rc)) || rc) {
			if (rc)
				goto out;
			if (++nkeys > MAX_SELECTORS || !add_uuid(&keys, v)) {
				fprintf(stderr, "outbox-relay requeue: invalid value for --key: \"%.80s\" is not a UUID%s\n", v,
				        nkeys > MAX_SELECTORS ? " (or too many --key options)" : "");
				rc = OBR_OPS_EXIT_USAGE;
				goto out;
			}
		} else if ((v = obr_ops_take_value(cmd, "--partition", argc, argv, &i, &rc)) || rc) {
			if (rc)
				goto out;
			if (++nparts > MAX_SELECTORS || !add_uuid(&parts, v)) {
				fprintf(stderr, "outbox-relay requeue: invalid value for --partition: \"%.80s\" is not a UUID%s\n", v,
				        nparts > MAX_SELECTORS ? " (or too many --partition options)" : "");
				rc = OBR_OPS_EXIT_USAGE;
				goto out;
			}
		} else if ((v = obr_ops_take_value(cmd, "--since", argc, argv, &i, &rc)) || rc) {
			if (rc)
				goto out;
			if (since) {
				fprintf(stderr, "outbox-relay requeue: --since is given twice\n");
				rc = OBR_OPS_EXIT_USAGE;
				goto out;
			}
			since = v;
		} else if ((v = obr_ops_take_value(cmd, "--until", argc, argv, &i, &rc)) || rc) {
			if (rc)
				goto out;
			if (until) {
				fprintf(stderr, "outbox-relay requeue: --until is given twice\n");
				rc = OBR_OPS_EXIT_USAGE;
				goto out;
			}
			until = v;
		} else if ((v = obr_ops_take_value(cmd, "--channel", argc, argv, &i, &rc)) || rc) {
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
			rc = OBR_OPS_EXIT_USAGE;
			goto out;
		}
	}
	int kinds = (nkeys > 0) + (nparts > 0) + (since || until) + all;
	if (kinds != 1) {
		fprintf(stderr, "outbox-relay requeue: %s: give exactly one of --key, --partition, --since/--until or --all\n",
		        kinds ? "selectors cannot be combined" : "no rows selected");
		rc = OBR_OPS_EXIT_USAGE;
		goto out;
	}
	if (since && !timestamp_syntax_ok(since)) {
		fprintf(stderr, "outbox-relay requeue: invalid value for --since: \"%.80s\" is not an ISO 8601 timestamp (e.g. 2024-05-01T12:00:00Z)\n", since);
		rc = OBR_OPS_EXIT_USAGE;
		goto out;
	}
	if (until && !timestamp_syntax_ok(until)) {
		fprintf(stderr, "outbox-relay requeue: invalid value for --until: \"%.80s\" is not an ISO 8601 timestamp (e.g. 2024-05-01T12:00:00Z)\n", until);
		rc = OBR_OPS_EXIT_USAGE;
		goto out;
	}
	if (!channel_ok(channel)) {
		fprintf(stderr, "outbox-relay requeue: invalid value for --channel: \"%.80s\" (use lower-case letters, digits and _)\n", channel);
		rc = OBR_OPS_EXIT_USAGE;
		goto out;
	}
	if (nkeys)
		obr_strbuf_puts(&keys, "}");
	if (nparts)
		obr_strbuf_puts(&parts, "}");
	if (keys.failed || parts.failed) {
		fprintf(stderr, "outbox-relay requeue: out of memory\n");
		rc = OBR_OPS_EXIT_DB;
		goto out;
	}

	conn = obr_ops_connect(cmd, url, &rc);
	if (!conn)
		goto out;
	rc = OBR_OPS_EXIT_DB;
	/* one transaction for everything, SET LOCAL: the same through a transaction pooler */
	if (!obr_ops_exec(conn, cmd, dry_run ? "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY" : "BEGIN") ||
	    !obr_ops_exec(conn, cmd, "SET LOCAL TimeZone = 'UTC'"))
		goto out;

	/* the calendar check (2024-02-30) is PostgreSQL's: its data errors are usage errors */
	const char *bounds[] = { since, until };
	res = PQexecParams(conn, "SELECT $1::timestamptz < $2::timestamptz", 2, NULL, bounds, NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
		char msg[512];
		obr_ops_pq_message(msg, sizeof(msg), PQresultErrorMessage(res));
		fprintf(stderr, "outbox-relay requeue: invalid value for --since/--until: %s\n", msg);
		rc = state && !strncmp(state, "22", 2) ? OBR_OPS_EXIT_USAGE : OBR_OPS_EXIT_DB;
		goto out;
	}
	if (since && until && PQgetvalue(res, 0, 0)[0] != 't') {
		fprintf(stderr, "outbox-relay requeue: --since (%s) must be before --until (%s)\n", since, until);
		rc = OBR_OPS_EXIT_USAGE;
		goto out;
	}
	PQclear(res);
	res = NULL;

	if (!obr_ops_schema_present(conn, cmd))
		goto out;

	const char *params[6] = { nkeys ? keys.data : NULL, nparts ? parts.data : NULL, since, until, channel, NULL };
	char notify_max[16];
	snprintf(notify_max, sizeof(notify_max), "%d", NOTIFY_MAX);
	params[5] = notify_max;

	if (nkeys) {
		res = obr_ops_query(conn, cmd, "could not look up the rows", SQL_KEYS_NOT_PARKED, 1, params);
		if (!res)
			goto out;
		for (int i = 0; i < PQntuples(res); i++)
			fprintf(stderr, "outbox-relay requeue: row %s %s: left as it is\n", PQgetvalue(res, i, 0),
			        PQgetvalue(res, i, 1));
		PQclear(res);
		res = NULL;
	}

	if (dry_run) {
		res = obr_ops_query(conn, cmd, "could not count the parked rows", SQL_DRY_COUNT, 4, params);
		if (!res)
			goto out;
		int64_t rows = obr_ops_get_i64(res, 0, 0), nparts_hit = obr_ops_get_i64(res, 0, 1);
		PQclear(res);
		res = obr_ops_query(conn, cmd, "could not list the parked rows", SQL_DRY_LIST, 4, params);
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
		obr_ops_exec(conn, cmd, "ROLLBACK");
		rc = 0;
		goto out;
	}

	res = obr_ops_query(conn, cmd, "could not requeue", SQL_REQUEUE, 6, params);
	if (!res)
		goto out;
	int64_t rows = obr_ops_get_i64(res, 0, 0), nparts_hit = obr_ops_get_i64(res, 0, 1), notified = obr_ops_get_i64(res, 0, 2);
	PQclear(res);
	res = NULL;
	if (!obr_ops_exec(conn, cmd, "COMMIT"))
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
	obr_strbuf_free(&keys);
	obr_strbuf_free(&parts);
	return rc;
}
