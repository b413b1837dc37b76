-- zepix_hub_reader: everything a zepix-hub process needs at run time, and nothing more.
--
-- The hub only reads: it LISTENs on channel zepix_hub_events (LISTEN needs no
-- privilege), reads the event log and the bot's tables for replays and
-- snapshots, and checks alembic_version for /readyz. It never writes, so a hub
-- login that is a member of this role cannot change a trade, forge an event or
-- raise a notification.
--
-- Run it as a superuser (or the owner of the hub's objects), connected to the
-- hub's database, after `zepix-hub migrate`, and again after every migration
-- (a migration may add objects; re-running is harmless):
--
--   psql -v ON_ERROR_STOP=1 -d zepix -f sql/roles/zepix_hub_reader.sql
--
-- Then create the login the hub connects as, and run the hub without
-- auto-migration (migrations need the owner, not this role):
--
--   CREATE ROLE hub_app LOGIN PASSWORD '...' IN ROLE zepix_hub_reader;
--   HUB_DATABASE_URL=postgresql://hub_app:...@db:5432/zepix HUB_AUTO_MIGRATE=false zepix-hub serve
--
-- A hub that also prunes (HUB_RETENTION, or `zepix-hub prune` with the same
-- login) needs zepix_hub_pruner as well; see zepix_hub_pruner.sql.
--
-- Roles are cluster-wide, grants are per database: with several zepix
-- databases on one server, run this file in each of them.

-- NOLOGIN: people and processes log in as their own role and inherit this one.
-- The EXCEPTION clause covers two sessions creating the role at the same time;
-- the comment is set only by the session that created it (a shared catalog row
-- updated by two sessions at once fails with "tuple concurrently updated").
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'zepix_hub_reader') THEN
        CREATE ROLE zepix_hub_reader NOLOGIN;
        COMMENT ON ROLE zepix_hub_reader IS
            'zepix-hub run time: reads the event log, trades, logs and alembic_version; no writes.';
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;

-- CONNECT matters only once PUBLIC's default CONNECT is revoked (see docs/dba.md);
-- granting it here keeps the hub working when a DBA does that.
DO $$
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO zepix_hub_reader', current_database());
END
$$;

GRANT USAGE ON SCHEMA public TO zepix_hub_reader;

-- events/event_retention/event_log_status: replays, position and retention floor.
-- trades/logs: /api/snapshot. event_stats: for people looking at the hub's data.
-- alembic_version: /readyz compares it with the hub's own migration head.
GRANT SELECT ON TABLE
    events, event_retention, trades, logs, event_stats, event_log_status, alembic_version
    TO zepix_hub_reader;

-- event_log_epoch (migration 0005): the log's identity, read with every
-- position the hub hands out and every resume it checks.
GRANT SELECT ON TABLE event_log_epoch TO zepix_hub_reader;

-- Every replay and catch-up read renders frames with this function. PUBLIC has
-- EXECUTE by default; the explicit grant survives a DBA revoking that.
GRANT EXECUTE ON FUNCTION
    hub_event_frame_v1(bigint, text, timestamptz, json),
    hub_event_frame_v1(bigint, text, timestamptz, jsonb)
    TO zepix_hub_reader;

-- Close the write paths that PostgreSQL opens to every role by default:
-- functions are executable by PUBLIC unless revoked, and most of these are
-- SECURITY DEFINER, so without this any role that can connect could append arbitrary
-- events (hub_append_event_v1) or raise notifications (hub_notify). The
-- triggers keep firing: a trigger function's EXECUTE privilege is not checked
-- when the trigger fires, and the functions run as their owner.
-- zepix_bot_writer.sql grants hub_notify back to the bot; a bot that logs in
-- as some other role needs GRANT EXECUTE ON FUNCTION hub_notify(text, text, text) TO it.
REVOKE EXECUTE ON FUNCTION
    hub_append_event_v1(text, text, text, text, jsonb),
    hub_trades_event_v1(),
    hub_logs_event_v1(),
    hub_notify_v1(text, text, text),
    hub_append_event_v2(text, text, text, text, json),
    hub_trades_event_v2(),
    hub_logs_event_v2(),
    hub_notify_v2(text, text, text),
    zepix_hub.hub_append_event_v3(text, text, text, text, json),
    zepix_hub.hub_trades_event_v3(),
    zepix_hub.hub_logs_event_v3(),
    zepix_hub.hub_notify_v3(text, text, text),
    zepix_hub.hub_refuse_change_v1(),
    hub_prune_logs_v1(interval),
    hub_notify(text, text, text)
    FROM PUBLIC;

-- Check (as the login): SELECT rolname FROM pg_roles WHERE pg_has_role(current_user, oid, 'member');
