-- hub_event_frame_v1 for json payloads: the same frame, from the stored text.
--
-- An overload, not a new version: the frame's shape has not changed, only the
-- payload's type. The replay queries of hubs started before this migration
-- call hub_event_frame_v1(seq, topic, created_at, payload) and now resolve to
-- this one, so they keep working across the upgrade.
--
-- No SET search_path, and STABLE (what to_char is): a one-expression SQL
-- function like that is inlined into its caller (the replay query,
-- hub_append_event_v2), so it costs nothing beyond the concatenation. The
-- jsonb version's SET clause and IMMUTABLE label made it a separate call,
-- planned afresh in every transaction. It names only pg_catalog functions and
-- operators, which are searched first.
CREATE FUNCTION hub_event_frame_v1(p_seq bigint, p_topic text, p_created_at timestamptz, p_payload json)
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT '{"ts": "' || to_char(p_created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
        || '", "seq": ' || p_seq::text
        || ', "data": ' || coalesce(p_payload::text, 'null')
        || ', "type": "event", "topic": ' || to_json(p_topic)::text || '}'
$$;

COMMENT ON FUNCTION hub_event_frame_v1(bigint, text, timestamptz, json) IS
    'Renders an event as the JSON text frame sent to clients: {"ts","seq","data","type":"event","topic"}.';
