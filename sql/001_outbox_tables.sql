-- 001: the outbox and outbox_lock tables, exactly as outbox-pattern-processor 0.3.6 creates
-- them, so that a database the crate already uses is left as it is (every statement is
-- IF NOT EXISTS: nothing here rewrites or drops what the crate made).

CREATE TABLE IF NOT EXISTS outbox (
    idempotent_key uuid        NOT NULL,
    partition_key  uuid        NOT NULL,
    destinations   jsonb       NOT NULL,
    headers        jsonb,
    payload        text        NOT NULL,
    attempts       int         NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    process_after  timestamptz NOT NULL DEFAULT now(),
    processed_at   timestamptz,
    PRIMARY KEY (idempotent_key)
);

CREATE TABLE IF NOT EXISTS outbox_lock (
    partition_key    uuid        NOT NULL,
    lock_id          uuid        NOT NULL,
    processed_at     timestamptz,
    processing_until timestamptz NOT NULL DEFAULT now() + interval '30 seconds'
);

-- The crate's one mutual-exclusion mechanism: at most one active lease per partition.
CREATE UNIQUE INDEX IF NOT EXISTS unq_outbox_lock_by_partition_key
    ON outbox_lock (partition_key) WHERE processed_at IS NULL;
CREATE INDEX IF NOT EXISTS idx_outbox_lock_by_lock_id ON outbox_lock (lock_id);
CREATE INDEX IF NOT EXISTS idx_outbox_lock_by_processing_until
    ON outbox_lock (processing_until) WHERE processed_at IS NULL;
CREATE INDEX IF NOT EXISTS idx_outbox_lock_by_processed_at ON outbox_lock (processed_at);

-- The crate's partial index; kept because crate instances may still run against this table.
CREATE INDEX IF NOT EXISTS idx_outbox_by_part_key_and_proc_after_and_attempt_and_proc_at
    ON outbox (partition_key, process_after, attempts) WHERE processed_at IS NULL;
