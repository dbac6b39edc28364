-- The schema outbox-pattern-processor 0.3.6 creates (its single migration, unchanged since
-- 0.3.1/0.3.2), written for the tests from /work/shared/reference/original-crate.md §2:
-- three tables, the crate's index names, no trigger, no version table. test_migrate.py loads
-- it into an empty database to play "a database the crate already uses".

CREATE TABLE outbox (
    idempotent_key uuid        NOT NULL PRIMARY KEY,
    partition_key  uuid        NOT NULL,
    destinations   jsonb       NOT NULL,
    headers        jsonb,
    payload        text        NOT NULL,
    attempts       int         NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    process_after  timestamptz NOT NULL DEFAULT now(),
    processed_at   timestamptz
);

CREATE INDEX idx_outbox_by_partition_key ON outbox (partition_key);
CREATE INDEX idx_outbox_by_process_after ON outbox (process_after);
CREATE INDEX idx_outbox_by_processed_at ON outbox (processed_at);
CREATE INDEX idx_outbox_by_partition_key_and_process_after ON outbox (partition_key, process_after);
CREATE INDEX idx_outbox_by_part_key_and_proc_after_and_attempt_and_proc_at
    ON outbox (partition_key, process_after, attempts) WHERE processed_at IS NULL;

-- Partition leases; no primary key.
CREATE TABLE outbox_lock (
    partition_key    uuid        NOT NULL,
    lock_id          uuid        NOT NULL,
    processed_at     timestamptz,
    processing_until timestamptz NOT NULL DEFAULT now() + interval '30 seconds'
);

CREATE UNIQUE INDEX unq_outbox_lock_by_partition_key ON outbox_lock (partition_key) WHERE processed_at IS NULL;
CREATE INDEX idx_outbox_lock_by_lock_id ON outbox_lock (lock_id);
CREATE INDEX idx_outbox_lock_by_processing_until ON outbox_lock (processing_until) WHERE processed_at IS NULL;
CREATE INDEX idx_outbox_lock_by_processed_at ON outbox_lock (processed_at);
-- On outbox_lock despite its name.
CREATE INDEX idx_outbox_by_partition_key_and_processing_until ON outbox_lock (partition_key, processing_until);

-- The cleaner's schedule: one row, inserted by the operator; no primary key, no index.
CREATE TABLE outbox_cleaner_schedule (
    cron_expression varchar(50) NOT NULL,
    last_execution  timestamptz NOT NULL DEFAULT now()
);
