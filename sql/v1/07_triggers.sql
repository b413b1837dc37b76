-- The capture triggers. DEFERRABLE INITIALLY DEFERRED constraint triggers run
-- at COMMIT, which is what keeps the commit-order lock short (see
-- 03_hub_append_event_v1.sql). Statement-level or immediate triggers would
-- take the lock at the first write and hold it for the rest of the transaction.
CREATE CONSTRAINT TRIGGER trades_event_v1
    AFTER INSERT OR UPDATE OR DELETE ON trades
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION hub_trades_event_v1();

COMMENT ON TRIGGER trades_event_v1 ON trades IS
    'Deferred: appends a trade_update event at commit for every changed trade row.';

CREATE CONSTRAINT TRIGGER logs_event_v1
    AFTER INSERT ON logs
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION hub_logs_event_v1();

COMMENT ON TRIGGER logs_event_v1 ON logs IS
    'Deferred: appends a log_stream event (and a notification for ERROR/CRITICAL) at commit.';
