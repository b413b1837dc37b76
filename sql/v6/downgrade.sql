-- Undo sql/v6: back to the v2 capture path (advisory lock 2053468265, frames
-- in the NOTIFY payload, no guard on logs). Events are untouched: the v2 path
-- draws from the same events_seq, so the log continues gap-free.
-- Same lock order as the upgrade (01_schema.sql).
LOCK TABLE public.trades, public.logs IN ACCESS EXCLUSIVE MODE;
LOCK TABLE zepix_hub.commit_order IN SHARE UPDATE EXCLUSIVE MODE;

DROP TRIGGER trades_event_v3 ON public.trades;
DROP TRIGGER logs_event_v3 ON public.logs;
DROP TRIGGER logs_append_only_v1 ON public.logs;
DROP TRIGGER trades_no_truncate_v1 ON public.trades;

CREATE CONSTRAINT TRIGGER trades_event_v2
    AFTER INSERT OR UPDATE OR DELETE ON public.trades
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION public.hub_trades_event_v2();
COMMENT ON TRIGGER trades_event_v2 ON public.trades IS
    'Deferred: appends a trade_update event at commit for every changed trade row.';

CREATE CONSTRAINT TRIGGER logs_event_v2
    AFTER INSERT ON public.logs
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION public.hub_logs_event_v2();
COMMENT ON TRIGGER logs_event_v2 ON public.logs IS
    'Deferred: appends a log_stream event (and a notification for ERROR/CRITICAL) at commit.';

CREATE OR REPLACE FUNCTION public.hub_notify(p_type text, p_title text, p_body text DEFAULT NULL)
RETURNS bigint
LANGUAGE sql
SECURITY DEFINER
SET search_path = public, pg_temp
AS $$ SELECT hub_notify_v2(p_type, p_title, p_body) $$;

DROP FUNCTION public.hub_prune_logs_v1(interval);
DROP FUNCTION zepix_hub.hub_refuse_change_v1();
DROP FUNCTION zepix_hub.hub_notify_v3(text, text, text);
DROP FUNCTION zepix_hub.hub_logs_event_v3();
DROP FUNCTION zepix_hub.hub_trades_event_v3();
DROP FUNCTION zepix_hub.hub_append_event_v3(text, text, text, text, json);
DROP TABLE zepix_hub.commit_order;
DROP SCHEMA zepix_hub;
