-- hub_trades_event_v1: trades INSERT / UPDATE / DELETE -> a trade_update event.
--
-- The payload carries the whole row as to_jsonb, so a column the bot adds
-- later reaches the dashboard without a migration here:
--   {"op": "INSERT"|"UPDATE"|"DELETE", "changed": [columns], "trade": {row}}
-- "changed" lists the columns an UPDATE changed (empty for INSERT and DELETE);
-- an UPDATE that changed nothing produces no event. DELETE carries the old row
-- so a dashboard can drop it.
--
-- Fired by a deferred constraint trigger: NEW/OLD are the row versions of the
-- statement that queued the trigger, and the event is appended at COMMIT.
CREATE FUNCTION hub_trades_event_v1()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
DECLARE
    v_new     jsonb;
    v_old     jsonb;
    v_changed jsonb;
BEGIN
    IF TG_OP = 'DELETE' THEN
        v_old := to_jsonb(OLD);
        PERFORM hub_append_event_v1('trade_update', 'DELETE', 'trades', OLD.id::text,
            jsonb_build_object('op', 'DELETE', 'changed', '[]'::jsonb, 'trade', v_old));
        RETURN NULL;
    END IF;

    v_new := to_jsonb(NEW);
    IF TG_OP = 'UPDATE' THEN
        v_old := to_jsonb(OLD);
        SELECT coalesce(jsonb_agg(n.key ORDER BY n.key), '[]'::jsonb)
          INTO v_changed
          FROM jsonb_each(v_new) AS n
         WHERE n.value IS DISTINCT FROM v_old -> n.key;
        IF v_changed = '[]'::jsonb THEN
            RETURN NULL;
        END IF;
    ELSE
        v_changed := '[]'::jsonb;
    END IF;

    PERFORM hub_append_event_v1('trade_update', TG_OP, 'trades', NEW.id::text,
        jsonb_build_object('op', TG_OP, 'changed', v_changed, 'trade', v_new));
    RETURN NULL;
END;
$$;

COMMENT ON FUNCTION hub_trades_event_v1() IS
    'Trigger function: turns a committed trades change into a trade_update event {op, changed, trade}.';
