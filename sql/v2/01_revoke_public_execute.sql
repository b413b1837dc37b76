-- PostgreSQL grants EXECUTE on every new function to PUBLIC. The hub's writer
-- functions are SECURITY DEFINER (so the bot needs no rights on `events`), which
-- would let any role that can connect append forged events. Only the triggers
-- (which run the functions as their owner regardless of EXECUTE) and the owner
-- may call them. hub_notify stays callable: it is the bot's documented API, and
-- sql/roles/ narrows it further where roles are set up.
REVOKE EXECUTE ON FUNCTION hub_append_event_v1(text, text, text, text, jsonb) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION hub_trades_event_v1() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION hub_logs_event_v1() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION hub_notify_v1(text, text, text) FROM PUBLIC;
