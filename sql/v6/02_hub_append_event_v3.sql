-- hub_append_event_v3: append one event, make its commit durable, wake the listeners.
--
-- The invariant is that of _v1 and _v2 (seq order is commit order, see
-- docs/adr/0001-commit-ordered-seq.md); three things differ:
--
-- * The lock is LOCK TABLE zepix_hub.commit_order IN SHARE UPDATE EXCLUSIVE
--   MODE (self-conflicting), which only the owner can take (sql/v6/01_schema.sql), instead of advisory lock
--   2053468265, which every login can. Same semantics: held until the
--   transaction ends, released after the commit is visible.
--
-- * Durable before visible. With synchronous_commit off (or local, or
--   remote_write) a commit becomes visible before its WAL is flushed (or, with
--   a synchronous standby, before the standby has it); a crash or a failover
--   then loses the event after a listener sent it to clients, and the next
--   event gets the same seq. So for a transaction that appends, the setting is
--   raised to 'on' (SET LOCAL: that transaction only; remote_apply, which is
--   stronger, is kept). The deferred triggers run inside COMMIT, before the
--   commit record is written, and a SET LOCAL made in a function survives its
--   return, so it is this commit that waits for the flush.
--
-- * The NOTIFY payload is the seq alone. LISTEN needs no privilege, so any
--   login could read every trade and log line in the payload; the hub reads
--   frames from events anyway (ADR 0005). A seq tells a watcher what to ask
--   events for, through that table's grants.
--
-- No SET clause and not SECURITY DEFINER (as _v2, ADR 0004): it runs inside
-- the SECURITY DEFINER trigger functions and hub_notify_v3, with their owner
-- and their search_path (pg_catalog, pg_temp). Every name is qualified anyway,
-- so a direct caller (only the owner: EXECUTE is revoked, and nobody else has
-- USAGE on zepix_hub) gets the same calls whatever its search_path.
CREATE FUNCTION zepix_hub.hub_append_event_v3(
    p_topic        text,
    p_op           text,
    p_source_table text,
    p_source_id    text,
    p_payload      json
) RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    v_seq bigint;
BEGIN
    IF pg_catalog.current_setting('synchronous_commit') OPERATOR(pg_catalog.<>) 'on'
       AND pg_catalog.current_setting('synchronous_commit') OPERATOR(pg_catalog.<>) 'remote_apply' THEN
        PERFORM pg_catalog.set_config('synchronous_commit', 'on', true);
    END IF;
    LOCK TABLE zepix_hub.commit_order IN SHARE UPDATE EXCLUSIVE MODE;
    v_seq := pg_catalog.nextval('public.events_seq'::pg_catalog.regclass);

    INSERT INTO public.events (seq, topic, op, source_table, source_id, payload, created_at)
    VALUES (v_seq, p_topic, p_op, p_source_table, p_source_id, p_payload, pg_catalog.clock_timestamp());

    PERFORM pg_catalog.pg_notify('zepix_hub_events', v_seq::pg_catalog.text);
    RETURN v_seq;
END;
$$;

COMMENT ON FUNCTION zepix_hub.hub_append_event_v3(text, text, text, text, json) IS
    'Appends an event under the commit-order lock (zepix_hub.commit_order), raises synchronous_commit to on for the transaction, and NOTIFYs zepix_hub_events with the seq. Called by the capture triggers and hub_notify_v3.';
