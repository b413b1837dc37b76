-- hub_event_frame_v1, same output, cheaper: concatenate text instead of building a jsonb object and
-- serialising it again. The bytes are exactly what jsonb_build_object(...)::text gave, because jsonb
-- orders keys by length, then bytewise (ts, seq, data, type, topic), and separates them with ": " and ", ".
-- It runs for every replayed row, and for every appended event inside the commit-order lock.
CREATE OR REPLACE FUNCTION hub_event_frame_v1(p_seq bigint, p_topic text, p_created_at timestamptz, p_payload jsonb)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog
AS $$
    SELECT '{"ts": "' || to_char(p_created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
        || '", "seq": ' || p_seq::text
        || ', "data": ' || coalesce(p_payload::text, 'null')
        || ', "type": "event", "topic": ' || to_jsonb(p_topic)::text || '}'
$$;
