-- Undo schema v1 entirely (alembic downgrade base). Drops the bot's tables too:
-- this is for empty or test databases, not for production.
DROP VIEW IF EXISTS event_log_status;
DROP VIEW IF EXISTS event_stats;
DROP TABLE IF EXISTS trades CASCADE;
DROP TABLE IF EXISTS logs CASCADE;
DROP FUNCTION IF EXISTS hub_notify(text, text, text);
DROP FUNCTION IF EXISTS hub_notify_v1(text, text, text);
DROP FUNCTION IF EXISTS hub_logs_event_v1();
DROP FUNCTION IF EXISTS hub_trades_event_v1();
DROP FUNCTION IF EXISTS hub_append_event_v1(text, text, text, text, jsonb);
DROP FUNCTION IF EXISTS hub_event_frame_v1(bigint, text, timestamptz, jsonb);
DROP TABLE IF EXISTS event_retention;
DROP TABLE IF EXISTS events;
