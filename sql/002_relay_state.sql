-- 002: what outbox-relay adds to the crate's table. Columns are nullable with no default,
-- so adding them is a catalog change only: existing rows are not rewritten.

ALTER TABLE outbox ADD COLUMN IF NOT EXISTS last_error        text;        -- why the last attempt failed, or why the row was parked
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS retry_after       timestamptz; -- next attempt of a failed row; the row keeps its place in its partition
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS dead_at           timestamptz; -- parked: failure limit reached, or malformed
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS sent_destinations int[];       -- indexes into destinations that already succeeded

-- The hot path: a partition's pending rows in delivery order (process_after, then creation).
CREATE INDEX IF NOT EXISTS outbox_pending_by_partition
    ON outbox (partition_key, process_after, created_at, idempotent_key)
    WHERE processed_at IS NULL AND dead_at IS NULL;

-- The poll and the due timer: pending rows by due time, cheap however many rows are processed.
CREATE INDEX IF NOT EXISTS outbox_pending_by_process_after
    ON outbox (process_after) WHERE processed_at IS NULL AND dead_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_retrying_by_retry_after
    ON outbox (retry_after) WHERE processed_at IS NULL AND dead_at IS NULL AND retry_after IS NOT NULL;

-- Retention deletes processed rows by age; status and requeue look at parked rows.
CREATE INDEX IF NOT EXISTS outbox_processed_by_processed_at
    ON outbox (processed_at) WHERE processed_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS outbox_parked_by_dead_at
    ON outbox (dead_at) WHERE dead_at IS NOT NULL AND processed_at IS NULL;

-- One NOTIFY per partition per transaction, payload = partition key. PostgreSQL folds
-- identical notifications of one transaction, so a partition written ten times in a
-- transaction wakes the relay once. A statement-level trigger with a transition table
-- sends one pg_notify per distinct partition of a multi-row INSERT.
CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox', k::text) FROM (SELECT DISTINCT partition_key AS k FROM outbox_new_rows) s;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER outbox_notify AFTER INSERT ON outbox
    REFERENCING NEW TABLE AS outbox_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
