-- 004: index pending rows by their due time (process_after, or retry_after once a row failed)
-- instead of by process_after alone. The due timer and the metrics look rows up by due time.
-- The old index also misled the planner: with statistics from a table of mostly processed
-- rows it walked every pending row through it, filtering on partition_key, to fetch one
-- partition's head; without it a partition's rows come from outbox_pending_by_partition.
CREATE INDEX IF NOT EXISTS outbox_pending_by_due
    ON outbox ((greatest(process_after, coalesce(retry_after, process_after))))
    WHERE processed_at IS NULL AND dead_at IS NULL;
DROP INDEX IF EXISTS outbox_pending_by_process_after;
