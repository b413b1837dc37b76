-- Swap the capture triggers to the v2 functions, in the migration's
-- transaction: every commit before it uses v1, every commit after it v2.
-- Still DEFERRABLE INITIALLY DEFERRED constraint triggers (see
-- sql/v1/07_triggers.sql for why).
DROP TRIGGER trades_event_v1 ON trades;
CREATE CONSTRAINT TRIGGER trades_event_v2
    AFTER INSERT OR UPDATE OR DELETE ON trades
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION hub_trades_event_v2();

COMMENT ON TRIGGER trades_event_v2 ON trades IS
    'Deferred: appends a trade_update event at commit for every changed trade row.';

DROP TRIGGER logs_event_v1 ON logs;
CREATE CONSTRAINT TRIGGER logs_event_v2
    AFTER INSERT ON logs
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION hub_logs_event_v2();

COMMENT ON TRIGGER logs_event_v2 ON logs IS
    'Deferred: appends a log_stream event (and a notification for ERROR/CRITICAL) at commit.';

-- As in sql/v2: only the triggers and the owner may run the writers.
REVOKE EXECUTE ON FUNCTION hub_append_event_v2(text, text, text, text, json) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION hub_trades_event_v2() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION hub_logs_event_v2() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION hub_notify_v2(text, text, text) FROM PUBLIC;
