-- zepix_bot_writer: the trading bot's role. It writes trades and logs, and raises
-- notifications with hub_notify; it has no right at all on the event log.
--
-- The bot's writes still produce events: the capture triggers on trades and
-- logs call SECURITY DEFINER functions with a fixed search_path, which append
-- to events as the functions' owner. So the bot cannot forge, edit or delete
-- an event, cannot draw a seq, and cannot move the retention floor.
--
-- Run it as a superuser (or the owner of the hub's objects), connected to the
-- bot's database, after `zepix-hub migrate` (and again after migrations):
--
--   psql -v ON_ERROR_STOP=1 -d zepix -f sql/roles/zepix_bot_writer.sql
--
-- Then the bot's login:
--
--   CREATE ROLE trading_bot LOGIN PASSWORD '...' IN ROLE zepix_bot_writer;
--
-- Deliberately not granted:
--   TRUNCATE on trades/logs: TRUNCATE fires no row triggers, so a truncated
--     table would leave every dashboard showing trades that no longer exist.
--   Ownership of trades/logs: an owner can ALTER TABLE ... DISABLE TRIGGER and
--     make changes that reach no client. The tables belong to the migrating role.
--   Anything on events, event_retention, events_seq, hub_append_event_v1/_v2,
--     or in schema zepix_hub (the capture path and its commit-order lock).
--   UPDATE and DELETE on logs: it is an append-only journal; old lines go
--     through hub_prune_logs_v1 (zepix_hub_pruner).

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'zepix_bot_writer') THEN
        CREATE ROLE zepix_bot_writer NOLOGIN;
        COMMENT ON ROLE zepix_bot_writer IS
            'The trading bot: reads and writes trades and logs, calls hub_notify; no rights on events.';
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- created by a concurrent session
END
$$;

DO $$
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO zepix_bot_writer', current_database());
END
$$;

GRANT USAGE ON SCHEMA public TO zepix_bot_writer;

-- SELECT too: UPDATE ... WHERE and DELETE ... WHERE read the rows they match,
-- and the bot reloads its open trades after a restart. logs is append-only
-- (a trigger refuses UPDATE and DELETE for every role: no client would see
-- them), so the bot gets no UPDATE or DELETE there; the REVOKE takes back
-- what earlier versions of this script granted.
GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE trades TO zepix_bot_writer;
GRANT SELECT, INSERT ON TABLE logs TO zepix_bot_writer;
REVOKE UPDATE, DELETE, TRUNCATE ON TABLE logs FROM zepix_bot_writer;

-- The id columns are identity columns. A plain INSERT draws from their
-- sequences without a privilege check; USAGE lets the bot call
-- currval/nextval on them (e.g. to reserve an id before an insert).
DO $$
BEGIN
    EXECUTE format('GRANT USAGE ON SEQUENCE %s, %s TO zepix_bot_writer',
                   pg_get_serial_sequence('trades', 'id'), pg_get_serial_sequence('logs', 'id'));
END
$$;

-- hub_notify is the stable entry point; it calls hub_notify_v2 as its owner,
-- so the bot needs EXECUTE on hub_notify only.
GRANT EXECUTE ON FUNCTION hub_notify(text, text, text) TO zepix_bot_writer;

-- Functions are executable by PUBLIC by default, and most of these are SECURITY
-- DEFINER (hub_append_event_v2 runs as its SECURITY DEFINER callers): without
-- this the bot could call hub_notify_v2 (or hub_append_event_v1) and write any
-- event it likes. Triggers keep firing (a trigger function's EXECUTE privilege
-- is not checked when the trigger fires). Same statement as in
-- zepix_hub_reader.sql, so either file alone closes the hole.
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

-- Undo anything a hand-made grant may have given the role on the event log.
REVOKE ALL ON TABLE events, event_retention, event_stats, event_log_status FROM zepix_bot_writer;
REVOKE ALL ON SEQUENCE events_seq FROM zepix_bot_writer;
