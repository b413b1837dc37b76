-- hub_trades_event_v3: trades INSERT / UPDATE / DELETE -> trade_update events.
--
-- The event of _v2, {"op", "changed", "trade"}, with one change: an UPDATE
-- that changes the id becomes two events, a DELETE of the old row (source_id
-- the old id) and an INSERT of the new one. _v2 sent one UPDATE under the new
-- id, so a dashboard kept the old id's row forever.
--
-- search_path = pg_catalog, pg_temp: see sql/v6/01_schema.sql. Functions and
-- operators are never looked up in pg_temp, so even the unqualified ones
-- (the = of TG_OP = 'DELETE', the -> below) can only be pg_catalog's.
--
-- The common case (one event per row) appends inline, the same five steps as
-- hub_append_event_v3 in the same order: a call to it costs about 26,000
-- instructions per event (docs/benchmarks.md), an eighth of what the capture
-- path adds to a bare INSERT. The rare
-- cases (an id change, a DELETE) call it. Keep the two in step; the tests in
-- tests/test_dbsec.py run every path.
CREATE FUNCTION zepix_hub.hub_trades_event_v3()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_new     pg_catalog.jsonb;
    v_old     pg_catalog.jsonb;
    v_changed pg_catalog.json := '[]';
    v_payload pg_catalog.json;
    v_sync    pg_catalog.text;
    v_seq     pg_catalog.int8;
BEGIN
    IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND NEW.id IS DISTINCT FROM OLD.id) THEN
        PERFORM zepix_hub.hub_append_event_v3('trade_update', 'DELETE', 'trades', OLD.id::pg_catalog.text,
            pg_catalog.json_build_object('op', 'DELETE', 'changed', v_changed,
                                         'trade', pg_catalog.row_to_json(OLD)));
        IF TG_OP = 'DELETE' THEN
            RETURN NULL;
        END IF;
        PERFORM zepix_hub.hub_append_event_v3('trade_update', 'INSERT', 'trades', NEW.id::pg_catalog.text,
            pg_catalog.json_build_object('op', 'INSERT', 'changed', v_changed,
                                         'trade', pg_catalog.row_to_json(NEW)));
        RETURN NULL;
    END IF;

    IF TG_OP = 'UPDATE' THEN
        -- jsonb compares values by meaning (1.50 = 1.5), which is what "changed" means.
        v_new := pg_catalog.to_jsonb(NEW);
        v_old := pg_catalog.to_jsonb(OLD);
        SELECT coalesce(pg_catalog.json_agg(n.key ORDER BY n.key), '[]'::pg_catalog.json)
          INTO v_changed
          FROM pg_catalog.jsonb_each(v_new) AS n
         WHERE n.value IS DISTINCT FROM v_old -> n.key;
        IF v_changed::pg_catalog.text = '[]' THEN
            RETURN NULL;
        END IF;
    END IF;

    v_payload := pg_catalog.json_build_object('op', TG_OP, 'changed', v_changed,
                                              'trade', pg_catalog.row_to_json(NEW));
    -- hub_append_event_v3, inline (see above).
    v_sync := pg_catalog.current_setting('synchronous_commit');
    IF v_sync <> 'on' AND v_sync <> 'remote_apply' THEN
        PERFORM pg_catalog.set_config('synchronous_commit', 'on', true);
    END IF;
    LOCK TABLE zepix_hub.commit_order IN SHARE UPDATE EXCLUSIVE MODE;
    v_seq := pg_catalog.nextval('public.events_seq'::pg_catalog.regclass);
    INSERT INTO public.events (seq, topic, op, source_table, source_id, payload, created_at)
    VALUES (v_seq, 'trade_update', TG_OP, 'trades', NEW.id::pg_catalog.text, v_payload,
            pg_catalog.clock_timestamp());
    PERFORM pg_catalog.pg_notify('zepix_hub_events', v_seq::pg_catalog.text);
    RETURN NULL;
END;
$$;

COMMENT ON FUNCTION zepix_hub.hub_trades_event_v3() IS
    'Trigger function: turns a committed trades change into a trade_update event {op, changed, trade}; an id change into a DELETE and an INSERT.';
