-- Undo sql/v4: back to the v1 capture functions and a jsonb payload. The
-- migration then runs sql/v1/07_triggers.sql again to put the v1 triggers back.
DROP TRIGGER trades_event_v2 ON trades;
DROP TRIGGER logs_event_v2 ON logs;

CREATE OR REPLACE FUNCTION hub_notify(p_type text, p_title text, p_body text DEFAULT NULL)
RETURNS bigint
LANGUAGE sql
SECURITY DEFINER
SET search_path = public, pg_temp
AS $$ SELECT hub_notify_v1(p_type, p_title, p_body) $$;

DROP FUNCTION hub_notify_v2(text, text, text);
DROP FUNCTION hub_logs_event_v2();
DROP FUNCTION hub_trades_event_v2();
DROP FUNCTION hub_append_event_v2(text, text, text, text, json);
DROP FUNCTION hub_event_frame_v1(bigint, text, timestamptz, json);

ALTER TABLE events
    DROP CONSTRAINT events_topic_check,
    DROP CONSTRAINT events_op_check,
    ALTER COLUMN payload TYPE jsonb USING payload::jsonb,
    ADD CONSTRAINT events_topic_check CHECK (topic IN ('trade_update', 'log_stream', 'notification')),
    ADD CONSTRAINT events_op_check CHECK (op IN ('INSERT', 'UPDATE', 'DELETE', 'NOTIFY'));
COMMENT ON COLUMN events.payload IS 'The event body sent to clients as "data".';

DROP DOMAIN event_op;
DROP DOMAIN event_topic;
