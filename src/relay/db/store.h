/*
 * store.h - the relay's SQL: every statement it sends, in one place, with the column layout
 * of their results. All statements are single, unnamed and parameterised, so they work the
 * same over a direct connection and through a transaction pooler.
 *
 * Delivery order within a partition: process_after, then created_at, then idempotent_key
 * (UUIDv7, time-ordered) as the final tie-break. A row is due when process_after <= now()
 * and, if it failed before, retry_after <= now(). A partition's head blocks the rows behind it.
 */
#ifndef OBR_STORE_H
#define OBR_STORE_H

/*
 * Every result column the engine reads has a name here, next to the statement that returns it:
 * column order lives in store.c and in these enums only. A statement's result is read by these
 * positions (PQgetvalue(res, row, OBR_HEAD_KEY)).
 */

/* The lease column (OBR_HEAD_LEASE) of the heads statements. */
#define OBR_LEASE_HELD "held"         /* leased to us; the row columns are the partition's first rows */
#define OBR_LEASE_RELEASED "released" /* head not due: lease given back; a non-NULL key is the head */
#define OBR_LEASE_LOST "lost"         /* not ours any more (taken over, or lost in a crash) */
#define OBR_LEASE_REREAD "reread"     /* complete only: a row now sorts before the fetched ones */

/* Result columns of OBR_SQL_CLAIM, OBR_SQL_ADVANCE and OBR_SQL_COMPLETE[_DELETE] (whose result is
 * the advance of the partitions it was given, then OBR_LEASE_REREAD rows), one row per
 * (partition, fetched row), in order; a partition with no pending row has one row with NULL
 * row columns. */
enum obr_head_col {
	OBR_HEAD_PARTITION = 0,
	OBR_HEAD_LEASE,          /* OBR_LEASE_* */
	OBR_HEAD_KEY,            /* idempotent_key; NULL: no row */
	OBR_HEAD_DESTINATIONS,   /* NULL (with headers and payload): not due, or past the byte budget */
	OBR_HEAD_HEADERS,        /* NULL: none (or not fetched: see payload) */
	OBR_HEAD_PAYLOAD,        /* NULL: not fetched (not due, or past the byte budget) */
	OBR_HEAD_ATTEMPTS,
	OBR_HEAD_SENT,           /* sent_destinations, an int[] literal; NULL: none yet */
	OBR_HEAD_DUE,            /* 't' / 'f' */
	OBR_HEAD_DUE_IN_MS,      /* 0 .. 86400000 (clamped: a timer at most a day away) */
	OBR_HEAD_CREATED_MS,     /* created_at, ms since the epoch */
	OBR_HEAD_COLUMNS
};
/* $1 lock_id, $2 uuid[] partitions, $3 rows per partition, $4 lease ms, $5 byte budget (the
 * data of due rows past it is not fetched; at least one row's when it is not 0) */
extern const char OBR_SQL_CLAIM[];
extern const char OBR_SQL_ADVANCE[];          /* the same parameters */
extern const char OBR_SQL_COMPLETE[];         /* $1..$12, see store.c */
extern const char OBR_SQL_COMPLETE_DELETE[];
/* Heads columns too; only partitions with pending rows. $1 lock_id, $2 uuid[] partitions,
 * $3 rows per partition, $4 byte budget */
extern const char OBR_SQL_PROBE[];

/* The engine's old names for the heads columns, until it uses the ones above. */
#define HC_PARTITION OBR_HEAD_PARTITION
#define HC_LEASE OBR_HEAD_LEASE
#define HC_KEY OBR_HEAD_KEY
#define HC_DESTINATIONS OBR_HEAD_DESTINATIONS
#define HC_HEADERS OBR_HEAD_HEADERS
#define HC_PAYLOAD OBR_HEAD_PAYLOAD
#define HC_ATTEMPTS OBR_HEAD_ATTEMPTS
#define HC_SENT OBR_HEAD_SENT
#define HC_DUE OBR_HEAD_DUE
#define HC_DUE_IN_MS OBR_HEAD_DUE_IN_MS
#define HC_CREATED_MS OBR_HEAD_CREATED_MS

/* Result of OBR_SQL_SCAN: up to $1 rows (partition, NULL), then one row (NULL, due in ms) with
 * the time until the next row is due (NULL: none; clamped to a day). $1 limit, $2 lock_id */
enum obr_scan_col {
	OBR_SCAN_PARTITION = 0,
	OBR_SCAN_DUE_IN_MS,
	OBR_SCAN_COLUMNS
};
extern const char OBR_SQL_SCAN[];

/* Result of OBR_SQL_RENEW: one row per lease still held. $1 lock_id, $2 lease ms */
enum obr_renew_col {
	OBR_RENEW_PARTITION = 0,
	OBR_RENEW_COLUMNS
};
extern const char OBR_SQL_RENEW[];

/* Result of OBR_SQL_LASTLOOK: first row NULL partition, then partitions with pending rows. */
enum obr_lastlook_col {
	OBR_LASTLOOK_PARTITION = 0, /* text; NULL in the first row */
	OBR_LASTLOOK_OLD_DONE,      /* bool, first row: the waiting partitions were looked at */
	OBR_LASTLOOK_NEW_DONE,      /* bool, first row: the fresh ones too */
	OBR_LASTLOOK_SNAPSHOT,      /* text, first row: what the fresh ones wait on otherwise */
	OBR_LASTLOOK_DUE_IN_MS,     /* bigint: until the partition's head is due (0: due) */
};
extern const char OBR_SQL_LASTLOOK[];

/* OBR_SQL_RELEASE_ALL returns one row: the number of leases released. $1 lock_id, $2 channel */
extern const char OBR_SQL_RELEASE_ALL[];

/* Result of OBR_SQL_SAMPLE: one row. No parameters. */
enum obr_sample_col {
	OBR_SAMPLE_DUE_ROWS = 0,        /* bigint */
	OBR_SAMPLE_OLDEST_DUE_AGE_S,    /* float8, 0 when nothing is due */
	OBR_SAMPLE_QUEUE_USAGE,         /* float8, pg_notification_queue_usage() */
	OBR_SAMPLE_NOTIFY_LOCK_WAITERS, /* bigint, sessions waiting for the notify commit lock */
	OBR_SAMPLE_COLUMNS
};
extern const char OBR_SQL_SAMPLE[];

/* Result of OBR_SQL_RETENTION: one row. $1 retention ms, $2 batch size */
enum obr_retention_col {
	OBR_RETENTION_GOT_LOCK = 0,     /* 't': this instance did the work */
	OBR_RETENTION_ROWS,             /* processed rows deleted */
	OBR_RETENTION_LEASES,           /* released lease rows deleted */
	OBR_RETENTION_COLUMNS
};
extern const char OBR_SQL_RETENTION[];

#endif
