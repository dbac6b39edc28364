-- 010: writers do not NOTIFY for a partition that a relay holds (issue 14). Every notifying
-- commit queues on PostgreSQL's cluster-wide notify lock, held through the WAL flush; a held
-- partition is looked at again by its holder anyway, so its NOTIFY is pure cost.
--
-- The race with a release is closed on the relay's side, without locks in writers: after a
-- release commits, the relay notes the transactions in progress (pg_current_snapshot()) and,
-- once they have all ended, looks at the released partitions once more. A writer that skipped
-- assigned its transaction id (its INSERT) before it saw the lease, so before the release
-- committed: it is among those transactions. That needs the check to see the database as of
-- the check, i.e. READ COMMITTED; a writer with an older snapshot (REPEATABLE READ,
-- SERIALIZABLE) always notifies. A relay older than this migration does not look again: run
-- it with a relay that does (its fallback poll would otherwise be what delivers such rows).
CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('transaction_isolation') = 'read committed' THEN
        PERFORM pg_notify('outbox', s.k::text)
           FROM (SELECT DISTINCT partition_key AS k FROM outbox_new_rows) s
          WHERE NOT EXISTS (SELECT 1 FROM outbox_lock l
                             WHERE l.partition_key = s.k AND l.processed_at IS NULL
                               AND l.processing_until > clock_timestamp());
    ELSE
        PERFORM pg_notify('outbox', k::text) FROM (SELECT DISTINCT partition_key AS k FROM outbox_new_rows) s;
    END IF;
    RETURN NULL;
END
$$;
