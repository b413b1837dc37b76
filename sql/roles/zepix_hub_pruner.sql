-- zepix_hub_pruner: the right to cut the event log (HUB_RETENTION, `zepix-hub prune`).
--
-- Optional. Only a hub started with HUB_RETENTION, or whoever runs
-- `zepix-hub prune --older-than 7d` (cron, a DBA), needs it. Pruning deletes
-- the oldest events in batches and raises event_retention.pruned_through in
-- the same transaction as each batch, so a client resuming from below the
-- floor is told to reload (410 / recovered=false) instead of silently missing
-- events. Nothing else may delete events: a hole that does not come from a
-- rollback or from a prune that moved the floor breaks the hub's promise.
--
-- Run it like zepix_hub_reader.sql (superuser or owner, in the hub's database,
-- again after migrations):
--
--   psql -v ON_ERROR_STOP=1 -d zepix -f sql/roles/zepix_hub_pruner.sql
--
-- The role carries what a standalone `zepix-hub prune` needs (it reads the
-- cutoff and the floor, deletes, moves the floor). A hub that prunes is a
-- reader too:
--
--   CREATE ROLE hub_app LOGIN PASSWORD '...' IN ROLE zepix_hub_reader, zepix_hub_pruner;
--   CREATE ROLE hub_prune LOGIN PASSWORD '...' IN ROLE zepix_hub_pruner;   -- cron job only
--   -- or, for an existing login:  GRANT zepix_hub_pruner TO hub_app;

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'zepix_hub_pruner') THEN
        CREATE ROLE zepix_hub_pruner NOLOGIN;
        COMMENT ON ROLE zepix_hub_pruner IS
            'zepix-hub retention: deletes old events and moves event_retention.pruned_through.';
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- created by a concurrent session
END
$$;

DO $$
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO zepix_hub_pruner', current_database());
END
$$;

GRANT USAGE ON SCHEMA public TO zepix_hub_pruner;

-- DELETE ... USING and the cutoff query read events; the floor update reads
-- the current floor (greatest(pruned_through, ...)).
GRANT SELECT, DELETE ON TABLE events TO zepix_hub_pruner;
GRANT SELECT, UPDATE ON TABLE event_retention TO zepix_hub_pruner;

-- logs is append-only; hub_prune_logs_v1(interval) is the one way to delete
-- old lines (it runs as the owner, past the guard that refuses every other
-- DELETE). Their events stay until the event log is pruned as above.
GRANT EXECUTE ON FUNCTION hub_prune_logs_v1(interval) TO zepix_hub_pruner;
