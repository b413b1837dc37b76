-- hub_notify_v2: hub_notify_v1 on the v2 append path (json payload).
-- The stable name hub_notify is repointed here; hub_notify_v1 stays for
-- callers that name it.
CREATE FUNCTION hub_notify_v2(p_type text, p_title text, p_body text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
BEGIN
    IF p_type IS NULL OR p_type NOT IN ('info', 'success', 'warning', 'error', 'critical') THEN
        RAISE EXCEPTION 'hub_notify: type must be info, success, warning, error or critical, not %',
            coalesce(quote_literal(p_type), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_title IS NULL OR p_title = '' THEN
        RAISE EXCEPTION 'hub_notify: title must not be empty' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN hub_append_event_v2('notification', 'NOTIFY', NULL, NULL,
        json_build_object('type', p_type, 'title', p_title, 'body', p_body));
END;
$$;

COMMENT ON FUNCTION hub_notify_v2(text, text, text) IS
    'Appends a notification event {type, title, body}; type is info, success, warning, error or critical.';

CREATE OR REPLACE FUNCTION hub_notify(p_type text, p_title text, p_body text DEFAULT NULL)
RETURNS bigint
LANGUAGE sql
SECURITY DEFINER
SET search_path = public, pg_temp
AS $$ SELECT hub_notify_v2(p_type, p_title, p_body) $$;
