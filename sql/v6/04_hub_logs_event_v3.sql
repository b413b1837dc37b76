-- hub_logs_event_v3: logs INSERT -> a log_stream event, plus a notification
-- for ERROR and CRITICAL lines. The events of _v2, through hub_append_event_v3
-- and with the search_path of sql/v6/01_schema.sql.
--
--   log_stream:   the row: {"id", "ts", "level", "msg", "source", "context"}
--   notification: {"type": "error"|"critical", "title", "body", "log_id", "source"}
-- The notification comes right after its log line (seq + 1, same transaction).
-- Lines are never updated or deleted but by pruning (07_logs_append_only.sql).
--
-- The log_stream event appends inline, as in hub_trades_event_v3 and for the
-- same reason; the notification of an ERROR line calls hub_append_event_v3.
CREATE FUNCTION zepix_hub.hub_logs_event_v3()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_payload pg_catalog.json := pg_catalog.row_to_json(NEW);
    v_sync    pg_catalog.text;
    v_seq     pg_catalog.int8;
BEGIN
    -- hub_append_event_v3, inline (see sql/v6/03_hub_trades_event_v3.sql).
    v_sync := pg_catalog.current_setting('synchronous_commit');
    IF v_sync <> 'on' AND v_sync <> 'remote_apply' THEN
        PERFORM pg_catalog.set_config('synchronous_commit', 'on', true);
    END IF;
    LOCK TABLE zepix_hub.commit_order IN SHARE UPDATE EXCLUSIVE MODE;
    v_seq := pg_catalog.nextval('public.events_seq'::pg_catalog.regclass);
    INSERT INTO public.events (seq, topic, op, source_table, source_id, payload, created_at)
    VALUES (v_seq, 'log_stream', 'INSERT', 'logs', NEW.id::pg_catalog.text, v_payload,
            pg_catalog.clock_timestamp());
    PERFORM pg_catalog.pg_notify('zepix_hub_events', v_seq::pg_catalog.text);

    IF NEW.level IN ('ERROR', 'CRITICAL') THEN
        PERFORM zepix_hub.hub_append_event_v3('notification', 'INSERT', 'logs', NEW.id::pg_catalog.text,
            pg_catalog.json_build_object(
                'type', pg_catalog.lower(NEW.level),
                'title', pg_catalog.initcap(pg_catalog.lower(NEW.level)) || coalesce(' in ' || NEW.source, ''),
                -- A toast is no place for a stack trace; the full line is in log_stream.
                'body', pg_catalog.left(NEW.msg, 500),
                'log_id', NEW.id,
                'source', NEW.source
            ));
    END IF;
    RETURN NULL;
END;
$$;

COMMENT ON FUNCTION zepix_hub.hub_logs_event_v3() IS
    'Trigger function: a committed log line becomes a log_stream event; ERROR/CRITICAL also a notification.';
