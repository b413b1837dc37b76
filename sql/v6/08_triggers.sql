-- Swap the capture triggers to the v3 functions, in the migration's
-- transaction: every commit before it uses v2 (and the advisory lock), every
-- commit after it v3 (and zepix_hub.commit_order). Still DEFERRABLE INITIALLY
-- DEFERRED constraint triggers (see sql/v1/07_triggers.sql for why).
DROP TRIGGER trades_event_v2 ON public.trades;
CREATE CONSTRAINT TRIGGER trades_event_v3
    AFTER INSERT OR UPDATE OR DELETE ON public.trades
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION zepix_hub.hub_trades_event_v3();

COMMENT ON TRIGGER trades_event_v3 ON public.trades IS
    'Deferred: appends a trade_update event at commit for every changed trade row.';

DROP TRIGGER logs_event_v2 ON public.logs;
CREATE CONSTRAINT TRIGGER logs_event_v3
    AFTER INSERT ON public.logs
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION zepix_hub.hub_logs_event_v3();

COMMENT ON TRIGGER logs_event_v3 ON public.logs IS
    'Deferred: appends a log_stream event (and a notification for ERROR/CRITICAL) at commit.';

-- Only the triggers and the owner may run the writers (nobody else has USAGE
-- on zepix_hub either; this keeps them closed if someone grants it).
REVOKE EXECUTE ON FUNCTION zepix_hub.hub_append_event_v3(text, text, text, text, json) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION zepix_hub.hub_trades_event_v3() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION zepix_hub.hub_logs_event_v3() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION zepix_hub.hub_notify_v3(text, text, text) FROM PUBLIC;
