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

/* Result columns of OBR_SQL_CLAIM, OBR_SQL_ADVANCE and OBR_SQL_COMPLETE[_DELETE] (whose result is
 * the advance of the partitions it was given), one row per (partition, fetched row);
 * a partition with no pending row has one row with NULL row columns. */
enum obr_heads_col {
	HC_PARTITION = 0,
	HC_LEASE,          /* 'held', 'released' or 'lost' */
	HC_KEY,
	HC_DESTINATIONS,
	HC_HEADERS,
	HC_PAYLOAD,
	HC_ATTEMPTS,
	HC_SENT,
	HC_DUE,            /* 't' / 'f' */
	HC_DUE_IN_MS,
	HC_CREATED_MS,
};

extern const char OBR_SQL_CLAIM[];
extern const char OBR_SQL_ADVANCE[];
extern const char OBR_SQL_COMPLETE[];
extern const char OBR_SQL_COMPLETE_DELETE[];
extern const char OBR_SQL_SCAN[];
extern const char OBR_SQL_RENEW[];
extern const char OBR_SQL_RELEASE_ALL[];
extern const char OBR_SQL_SAMPLE[];
extern const char OBR_SQL_RETENTION[];

#endif
