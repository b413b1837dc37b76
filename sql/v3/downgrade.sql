-- Undo 01_frame_by_concatenation.sql: back to the jsonb_build_object rendering of v1.
CREATE OR REPLACE FUNCTION hub_event_frame_v1(p_seq bigint, p_topic text, p_created_at timestamptz, p_payload jsonb)
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
