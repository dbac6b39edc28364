-- 005: the due-time index of 004 had the same predicate as outbox_pending_by_partition, so the
-- planner could read a partition's head rows by scanning it whole and filtering on
-- partition_key. With statistics from before a backlog (a table of processed rows, then an
-- outage) it did, in the relay's generic plans: 2 ms per partition to return 32 rows of a
-- 20,000-row backlog, and a drain at 11.8k instead of 18k rows/s (contrib/bench). The index
-- now has a predicate that the heads' WHERE does not imply (process_after is NOT NULL in every
-- row, so it covers the same rows); the due-time queries state it.
CREATE INDEX IF NOT EXISTS outbox_pending_due
    ON outbox ((greatest(process_after, coalesce(retry_after, process_after))))
    WHERE processed_at IS NULL AND dead_at IS NULL AND process_after IS NOT NULL;
DROP INDEX IF EXISTS outbox_pending_by_due;
