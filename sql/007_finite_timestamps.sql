-- 007: a pending row's process_after and created_at must be finite. A row with 'infinity' or
-- '-infinity' there cannot be scheduled (PostgreSQL cannot subtract infinite timestamps), and
-- before this migration one such row made every claim that included its partition fail, for
-- the other partitions of the same statement too.
--
-- New rows are refused at INSERT (the constraints are added NOT VALID: old rows are not read
-- and the table is not scanned to validate them). The constraints let processed and parked
-- rows keep whatever they hold, so that parking or completing an old bad row, which updates
-- it, never fails. Then the old pending rows that break the rule are parked (dead_at, and
-- last_error saying which column, its value and what to do); nothing else is changed. Extreme
-- finite values (4713 BC to 294276 AD) are allowed and work.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                    WHERE conrelid = 'outbox'::regclass AND conname = 'outbox_process_after_finite') THEN
        ALTER TABLE outbox ADD CONSTRAINT outbox_process_after_finite
            CHECK (processed_at IS NOT NULL OR dead_at IS NOT NULL OR isfinite(process_after)) NOT VALID;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                    WHERE conrelid = 'outbox'::regclass AND conname = 'outbox_created_at_finite') THEN
        ALTER TABLE outbox ADD CONSTRAINT outbox_created_at_finite
            CHECK (processed_at IS NOT NULL OR dead_at IS NOT NULL OR isfinite(created_at)) NOT VALID;
    END IF;
END
$$;

-- The constraints above hold the table's lock until the migration commits, so no bad row can
-- be inserted between this search and the commit. It reads only pending rows.
DO $$
DECLARE
    n bigint;
BEGIN
    UPDATE outbox
       SET dead_at = now(),
           last_error = format('malformed: %s is %s, which cannot be scheduled (parked by migration 007);'
                               ' set a finite value and requeue the row',
                               CASE WHEN isfinite(process_after) THEN 'created_at' ELSE 'process_after' END,
                               CASE WHEN isfinite(process_after) THEN created_at ELSE process_after END)
     WHERE processed_at IS NULL AND dead_at IS NULL
       AND NOT (isfinite(process_after) AND isfinite(created_at));
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        RAISE WARNING 'migration 007 parked % pending row(s) whose process_after or created_at is infinite (see their last_error)', n;
    END IF;
END
$$;
