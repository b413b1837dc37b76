-- hub_event_frame_v1: the one place that shapes an event as clients see it.
--
-- Both the NOTIFY payload and the replay reads render frames here, so a live
-- frame and a replayed frame of the same event are byte-for-byte the same and
-- the hub serialises an event once, in the database, not once per client.
CREATE FUNCTION hub_event_frame_v1(p_seq bigint, p_topic text, p_created_at timestamptz, p_payload jsonb)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog
AS $$
    SELECT jsonb_build_object(
        'type', 'event',
        'topic', p_topic,
        'seq', p_seq,
        -- ISO-8601 UTC with a Z, microseconds: what the live and replay APIs promise.
        'ts', to_char(p_created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'data', p_payload
    )::text
$$;

COMMENT ON FUNCTION hub_event_frame_v1(bigint, text, timestamptz, jsonb) IS
    'Renders an event as the JSON text frame sent to clients: {"type":"event","topic","seq","ts","data"}.';
