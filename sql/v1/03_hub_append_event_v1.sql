-- hub_append_event_v1: append one event and wake the listeners.
--
-- Invariant: seq order is commit order. The function takes a transaction-level
-- advisory lock before drawing seq. PostgreSQL makes a committing transaction
-- visible *before* it releases its locks, so by the time the next transaction
-- can draw seq N+1, the event with seq N is visible (or, if its transaction
-- rolled back, the hole at N is permanent). A reader that has seen N never
-- finds a new event below N later. See docs/adr/0001-commit-ordered-seq.md.
--
-- It is called from DEFERRABLE INITIALLY DEFERRED constraint triggers, so the
-- lock is taken at COMMIT and held only for the commit window, not for the
-- bot's whole business transaction. Caveat: SET CONSTRAINTS ALL IMMEDIATE (or
-- calling hub_notify early in a long transaction) takes it earlier and holds
-- it until the transaction ends; correctness is unchanged, throughput is not.
--
-- Advisory-lock key 2053468265 (0x7A657069, "zepi") is reserved for this lock.
CREATE FUNCTION hub_append_event_v1(
    p_topic        text,
    p_op           text,
    p_source_table text,
    p_source_id    text,
    p_payload      jsonb
) RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
DECLARE
    v_seq   bigint;
    v_ts    timestamptz;
    v_frame text;
BEGIN
    PERFORM pg_advisory_xact_lock(2053468265);
    v_seq := nextval('events_seq');
    v_ts := clock_timestamp();

    INSERT INTO events (seq, topic, op, source_table, source_id, payload, created_at)
    VALUES (v_seq, p_topic, p_op, p_source_table, p_source_id, p_payload, v_ts);

    -- NOTIFY payloads must stay under 8000 bytes. A frame that fits comfortably
    -- travels whole, for people and tools that LISTEN and for older hubs; a
    -- bigger one travels as a stub. The hub itself takes any notification as a
    -- wake-up and reads the frames from events, the truth (ADR 0005).
    v_frame := hub_event_frame_v1(v_seq, p_topic, v_ts, p_payload);
    IF octet_length(v_frame) > 7000 THEN
        v_frame := jsonb_build_object('type', 'stub', 'seq', v_seq, 'topic', p_topic)::text;
    END IF;
    PERFORM pg_notify('zepix_hub_events', v_frame);
    RETURN v_seq;
END;
$$;

COMMENT ON FUNCTION hub_append_event_v1(text, text, text, text, jsonb) IS
    'Appends an event under advisory lock 2053468265 (seq order = commit order) and NOTIFYs channel zepix_hub_events with the frame, or a stub when the frame is over 7000 bytes.';
