/*
 * ops.h - the operator commands `outbox-relay status` and `outbox-relay requeue`.
 *
 * They are one-shot commands, not the delivery loop: they use blocking libpq on their own
 * connection (DATABASE_URL or --database) and never print the connection string.
 *
 *   status [--json] [--exact]
 *       Row counts by state (due, delayed, retrying, parked, processed), the age of the oldest
 *       due row, leases by relay instance, pg_notification_queue_usage() and the schema
 *       version against the migrations built into this binary. Read-only, one snapshot.
 *   requeue (--key UUID... | --partition UUID... | --since TS --until TS | --all) [--dry-run]
 *       Parked rows (dead_at set, not processed) become due again: dead_at, retry_after and
 *       last_error are cleared and attempts reset to 0, then each affected partition is
 *       notified in the same transaction so a listening relay delivers them at once.
 *
 * Exit codes: 0 done, 1 database error (connection, missing schema), 2 bad arguments.
 */
#ifndef OBR_OPS_H
#define OBR_OPS_H

#include <stdio.h>

/* argv holds the arguments after the command name. Both return the process exit code. */
int obr_ops_status(int argc, char **argv);
int obr_ops_requeue(int argc, char **argv);

void obr_ops_status_usage(FILE *out);
void obr_ops_requeue_usage(FILE *out);

#endif
