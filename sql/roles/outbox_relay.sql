-- A least-privilege role for the relay daemon: exactly what `outbox-relay run` needs on its
-- tables, nothing else (no DDL, no other tables). Not a migration: run it once per database,
-- as the owner of the outbox tables, after `outbox-relay migrate`:
--
--     psql "$OWNER_URL" -f sql/roles/outbox_relay.sql
--     ALTER ROLE outbox_relay PASSWORD '...';      -- or use your own authentication
--
-- and give the relay DATABASE_URL=postgresql://outbox_relay@host/db. Safe to run again.
-- `migrate` itself needs the owner; `status` needs only what the relay has; `requeue` updates
-- parked rows, which the relay's UPDATE privilege covers.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'outbox_relay') THEN
        CREATE ROLE outbox_relay LOGIN;
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO outbox_relay', current_schema());
END
$$;

-- outbox: read rows, record results (processed_at, attempts, last_error, retry_after, dead_at,
-- sent_destinations), delete them in delete mode and for retention. No INSERT: writing rows
-- is the application's business.
GRANT SELECT, UPDATE, DELETE ON outbox TO outbox_relay;
-- outbox_lock: the partition leases.
GRANT SELECT, INSERT, UPDATE, DELETE ON outbox_lock TO outbox_relay;
-- the schema version, for `outbox-relay status`.
GRANT SELECT ON outbox_relay_schema_version TO outbox_relay;
