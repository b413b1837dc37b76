-- hub_logs_event_v2: logs INSERT -> a log_stream event, plus a notification
-- for ERROR and CRITICAL lines. Same events as hub_logs_event_v1, built as json.
--
--   log_stream:   the row: {"id", "ts", "level", "msg", "source", "context"}
--   notification: {"type": "error"|"critical", "title", "body", "log_id", "source"}
-- The notification comes right after its log line (seq + 1, same transaction).
CREATE FUNCTION hub_logs_event_v2()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
BEGIN
    PERFORM hub_append_event_v2('log_stream', 'INSERT', 'logs', NEW.id::text, row_to_json(NEW));

    IF NEW.level IN ('ERROR', 'CRITICAL') THEN
        PERFORM hub_append_event_v2('notification', 'INSERT', 'logs', NEW.id::text,
            json_build_object(
                'type', lower(NEW.level),
                'title', initcap(lower(NEW.level)) || coalesce(' in ' || NEW.source, ''),
                -- A toast is no place for a stack trace; the full line is in log_stream.
                'body', left(NEW.msg, 500),
                'log_id', NEW.id,
                'source', NEW.source
            ));
    END IF;
    RETURN NULL;
END;
$$;

COMMENT ON FUNCTION hub_logs_event_v2() IS
    'Trigger function: a committed log line becomes a log_stream event; ERROR/CRITICAL also a notification.';
