-- hub_append_event_v2: append one event and wake the listeners.
--
-- The invariant and the lock are those of hub_append_event_v1 (seq order is
-- commit order; see docs/adr/0001-commit-ordered-seq.md): the caller builds
-- the payload first, and only the seq draw, the INSERT and the NOTIFY happen
-- under advisory lock 2053468265, so the serialised commit window stays short.
--
-- Not SECURITY DEFINER and no SET clause, on purpose: it runs inside the
-- SECURITY DEFINER trigger functions and hub_notify_v2, as their owner and with
-- their search_path, and skips the per-call privilege and search_path switch
-- (see docs/adr/0004-capture-path.md). Anyone else calling it runs it as
-- themselves, and needs INSERT on events, which no role but the owner has.
CREATE FUNCTION hub_append_event_v2(
    p_topic        text,
    p_op           text,
    p_source_table text,
    p_source_id    text,
    p_payload      json
) RETURNS bigint
LANGUAGE plpgsql
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
        v_frame := json_build_object('type', 'stub', 'seq', v_seq, 'topic', p_topic)::text;
    END IF;
    PERFORM pg_notify('zepix_hub_events', v_frame);
    RETURN v_seq;
END;
$$;

COMMENT ON FUNCTION hub_append_event_v2(text, text, text, text, json) IS
    'Appends an event under advisory lock 2053468265 (seq order = commit order) and NOTIFYs channel zepix_hub_events with the frame, or a stub when the frame is over 7000 bytes. Called by the capture triggers and hub_notify_v2.';
