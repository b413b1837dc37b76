-- Undo sql/v4: back to the v1 capture functions and a jsonb payload.
DROP TRIGGER trades_event_v2 ON trades;
CREATE CONSTRAINT TRIGGER trades_event_v1
    AFTER INSERT OR UPDATE OR DELETE ON trades
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION hub_trades_event_v1();
COMMENT ON TRIGGER trades_event_v1 ON trades IS
    'Deferred: appends a trade_update event at commit for every changed trade row.';

DROP TRIGGER logs_event_v2 ON logs;
CREATE CONSTRAINT TRIGGER logs_event_v1
    AFTER INSERT ON logs
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION hub_logs_event_v1();
COMMENT ON TRIGGER logs_event_v1 ON logs IS
    'Deferred: appends a log_stream event (and a notification for ERROR/CRITICAL) at commit.';

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
