-- hub_trades_event_v2: trades INSERT / UPDATE / DELETE -> a trade_update event.
--
-- Same event as hub_trades_event_v1, {"op", "changed", "trade"}, built as json:
-- row_to_json writes the row straight to text in column order, where to_jsonb
-- built a binary object, sorted its keys and was serialised again for the
-- NOTIFY. "changed" lists the columns an UPDATE changed, sorted (empty for
-- INSERT and DELETE); an UPDATE that changed nothing produces no event; DELETE
-- carries the old row.
--
-- Fired at COMMIT by a deferred constraint trigger (07_triggers.sql).
CREATE FUNCTION hub_trades_event_v2()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
DECLARE
    v_new     jsonb;
    v_old     jsonb;
    v_changed json := '[]';
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM hub_append_event_v2('trade_update', 'DELETE', 'trades', OLD.id::text,
            json_build_object('op', 'DELETE', 'changed', v_changed, 'trade', row_to_json(OLD)));
        RETURN NULL;
    END IF;

    IF TG_OP = 'UPDATE' THEN
        -- jsonb compares values by meaning (1.50 = 1.5), which is what "changed" means.
        v_new := to_jsonb(NEW);
        v_old := to_jsonb(OLD);
        SELECT coalesce(json_agg(n.key ORDER BY n.key), '[]'::json)
          INTO v_changed
          FROM jsonb_each(v_new) AS n
         WHERE n.value IS DISTINCT FROM v_old -> n.key;
        IF v_changed::text = '[]' THEN
            RETURN NULL;
        END IF;
    END IF;

    PERFORM hub_append_event_v2('trade_update', TG_OP, 'trades', NEW.id::text,
        json_build_object('op', TG_OP, 'changed', v_changed, 'trade', row_to_json(NEW)));
    RETURN NULL;
END;
$$;

COMMENT ON FUNCTION hub_trades_event_v2() IS
    'Trigger function: turns a committed trades change into a trade_update event {op, changed, trade}.';
