/*
 * insert.c: outbox_insert, one statement for a whole batch of rows.
 *
 * The rows travel as seven text-format array parameters, one per column, unnested on the
 * server. Compared with a VALUES list of 7n parameters this keeps the SQL text constant (the
 * server's plan cache sees one statement whatever n is) and is not limited to 65535
 * parameters; compared with COPY it runs inside any transaction state and needs no second
 * protocol exchange.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "outbox.h"
#include "pgarray.h"
#include "row.h"

#define N_COLUMNS 7

static const char insert_sql[] =
	"INSERT INTO outbox (idempotent_key, partition_key, destinations, headers, payload,"
	" created_at, process_after)"
	" SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::jsonb[], $4::jsonb[], $5::text[],"
	" $6::timestamptz[], $7::timestamptz[])";

/*
 * Client-only encodings whose multibyte characters may contain the bytes of '"' or '\': the
 * array literal escaping, done byte by byte, would corrupt their text.
 */
static int
encoding_is_ascii_safe(const char *name)
{
	static const char *const unsafe[] = { "SJIS", "SHIFT_JIS_2004", "BIG5", "GBK",
					      "UHC",  "GB18030",        "JOHAB" };

	for (size_t i = 0; i < sizeof(unsafe) / sizeof(unsafe[0]); i++)
		if (strcmp(name, unsafe[i]) == 0)
			return 0;
	return 1;
}

static enum outbox_rc
check_connection(PGconn *conn, struct outbox_error *err)
{
	const char *enc;

	if (PQstatus(conn) != CONNECTION_OK)
		return outbox__fail_db(err, "08003", "the connection is not open");
#ifdef LIBPQ_HAS_PIPELINING
	if (PQpipelineStatus(conn) != PQ_PIPELINE_OFF)
		return outbox__fail(err, OUTBOX_E_INVALID,
				    "the connection is in pipeline mode; outbox_insert needs it off");
#endif
	switch (PQtransactionStatus(conn)) {
	case PQTRANS_IDLE:
	case PQTRANS_INTRANS:
		break;
	case PQTRANS_INERROR:
		return outbox__fail_db(err, "25P02",
				       "the transaction is aborted; roll it back before inserting");
	case PQTRANS_ACTIVE:
		return outbox__fail(err, OUTBOX_E_INVALID,
				    "the connection is busy with another command");
	case PQTRANS_UNKNOWN:
	default:
		return outbox__fail_db(err, "08003", "the connection is in an unknown state");
	}
	enc = pg_encoding_to_char(PQclientEncoding(conn));
	if (!encoding_is_ascii_safe(enc))
		return outbox__fail(err, OUTBOX_E_INVALID,
				    "client_encoding %s is not supported; use UTF8", enc);
	return OUTBOX_OK;
}

/* The text of column col of row r, or NULL for SQL NULL; *len its length. */
static enum outbox_rc
column_text(const struct outbox_row *r, int col, char ts[OUTBOX__TIMESTAMP_BUFSZ],
	    const char **text, size_t *len)
{
	size_t n = 0;
	const char *s = NULL;

	switch (col) {
	case 0:
		s = r->idempotent_key;
		break;
	case 1:
		s = r->partition_key;
		break;
	case 2:
		s = json_object_to_json_string_length(r->destinations, OUTBOX__JSON_FLAGS, &n);
		if (s == NULL)
			return OUTBOX_E_NOMEM;
		break;
	case 3:
		if (r->headers != NULL) {
			s = json_object_to_json_string_length(r->headers, OUTBOX__JSON_FLAGS, &n);
			if (s == NULL)
				return OUTBOX_E_NOMEM;
		}
		break;
	case 4:
		s = r->payload;
		n = r->payload_len;
		break;
	case 5:
	case 6:
		if (outbox__format_timestamp(col == 5 ? r->created_at_us : r->process_after_us,
					     ts) != 0)
			return OUTBOX_E_INVALID;
		s = ts;
		break;
	default:
		return OUTBOX_E_INVALID;
	}
	if (s != NULL && n == 0)
		n = strlen(s);
	*text = s;
	*len = n;
	return OUTBOX_OK;
}

/* The length of a libpq message without its trailing newline, for "%.*s". */
static int
trimmed_len(const char *s)
{
	size_t n = strlen(s);

	while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r'))
		n--;
	return n > INT_MAX ? INT_MAX : (int)n;
}

static enum outbox_rc
result_error(PGconn *conn, PGresult *res, size_t n, struct outbox_error *err)
{
	const char *primary;
	const char *detail;
	const char *sqlstate;

	if (res == NULL) {
		const char *msg = PQerrorMessage(conn);

		return outbox__fail_db(err, NULL, "insert into outbox failed: %.*s", trimmed_len(msg),
				       msg);
	}
	primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
	detail = PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL);
	sqlstate = PQresultErrorField(res, PG_DIAG_SQLSTATE);
	if (primary == NULL) {
		/* A client-side failure (lost connection): the message is on the result. */
		const char *msg = PQresultErrorMessage(res);

		if (msg[0] == '\0')
			msg = PQerrorMessage(conn);
		return outbox__fail_db(err, sqlstate, "insert of %zu rows into outbox failed: %.*s", n,
				       trimmed_len(msg), msg);
	}
	if (detail != NULL)
		return outbox__fail_db(err, sqlstate, "insert of %zu rows into outbox failed: %s (%s)",
				       n, primary, detail);
	return outbox__fail_db(err, sqlstate, "insert of %zu rows into outbox failed: %s", n,
			       primary);
}

enum outbox_rc
outbox_insert(PGconn *conn, struct outbox_row *const *rows, size_t n, struct outbox_error *err)
{
	struct outbox__pgarray cols[N_COLUMNS];
	const char *values[N_COLUMNS];
	size_t budget = OUTBOX_MAX_BATCH_BYTES;
	PGresult *res = NULL;
	enum outbox_rc rc;
	const char *tuples;

	if (n == 0)
		return OUTBOX_OK;
	if (rows == NULL)
		return outbox__fail(err, OUTBOX_E_INVALID, "rows is NULL but n is %zu", n);
	for (size_t i = 0; i < n; i++) {
		if (rows[i] == NULL)
			return outbox__fail(err, OUTBOX_E_INVALID, "rows[%zu] is NULL", i);
		if ((rc = outbox__row_check(rows[i], i, err)) != OUTBOX_OK)
			return rc;
	}
	if (conn == NULL)
		return outbox__fail(err, OUTBOX_E_INVALID, "conn is NULL");
	if ((rc = check_connection(conn, err)) != OUTBOX_OK)
		return rc;

	for (int c = 0; c < N_COLUMNS; c++)
		outbox__pgarray_init(&cols[c], 0);
	/* Column by column, so that each row's JSON text is used before it is serialised again. */
	for (int c = 0; c < N_COLUMNS; c++) {
		char ts[OUTBOX__TIMESTAMP_BUFSZ];

		outbox__pgarray_init(&cols[c], budget);
		rc = OUTBOX_OK;
		/* Keys and timestamps have a fixed width: size them exactly up front. */
		if (c != 2 && c != 3 && c != 4 && n < budget / 40)
			rc = outbox__pgarray_reserve(&cols[c], n * 40);
		for (size_t i = 0; i < n && rc == OUTBOX_OK; i++) {
			const char *text;
			size_t len;

			rc = column_text(rows[i], c, ts, &text, &len);
			if (rc == OUTBOX_E_INVALID) {
				rc = outbox__fail(err, rc, "rows[%zu] has a timestamp out of range", i);
				goto out;
			}
			if (rc == OUTBOX_OK)
				rc = outbox__pgarray_add(&cols[c], text, len);
		}
		if (rc == OUTBOX_OK)
			rc = outbox__pgarray_finish(&cols[c]);
		if (rc == OUTBOX_E_TOO_BIG) {
			rc = outbox__fail(err, rc,
					  "%zu rows need more than %zu bytes of parameters, the most one "
					  "statement can carry; insert fewer rows per call",
					  n, (size_t)OUTBOX_MAX_BATCH_BYTES);
			goto out;
		}
		if (rc != OUTBOX_OK) {
			rc = outbox__fail(err, OUTBOX_E_NOMEM, "out of memory building the parameters");
			goto out;
		}
		budget -= cols[c].len;
		values[c] = cols[c].data;
	}

	res = PQexecParams(conn, insert_sql, N_COLUMNS, NULL, values, NULL, NULL, 0);
	if (res == NULL || PQresultStatus(res) != PGRES_COMMAND_OK) {
		rc = result_error(conn, res, n, err);
		goto out;
	}
	/* Anything else means a trigger or rule swallowed rows: the caller must know. */
	tuples = PQcmdTuples(res);
	if (strtoull(tuples, NULL, 10) != (unsigned long long)n) {
		rc = outbox__fail_db(err, NULL, "insert into outbox wrote %s of %zu rows", tuples, n);
		goto out;
	}
	rc = OUTBOX_OK;
out:
	PQclear(res);
	for (int c = 0; c < N_COLUMNS; c++)
		outbox__pgarray_free(&cols[c]);
	return rc;
}
