-- Undo 01_revoke_public_execute.sql: back to PostgreSQL's default EXECUTE for PUBLIC.
GRANT EXECUTE ON FUNCTION hub_append_event_v1(text, text, text, text, jsonb) TO PUBLIC;
GRANT EXECUTE ON FUNCTION hub_trades_event_v1() TO PUBLIC;
GRANT EXECUTE ON FUNCTION hub_logs_event_v1() TO PUBLIC;
GRANT EXECUTE ON FUNCTION hub_notify_v1(text, text, text) TO PUBLIC;
