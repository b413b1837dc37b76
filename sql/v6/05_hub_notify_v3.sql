-- hub_notify_v3: raise a dashboard notification by hand; hub_notify, the
-- stable name in public the bot calls, now points here.
--
-- Like the triggers it appends through hub_append_event_v3, so it takes the
-- commit-order lock at the call and holds it until the transaction ends (call
-- it on its own or last in a transaction), and makes that commit synchronous.
CREATE FUNCTION zepix_hub.hub_notify_v3(p_type text, p_title text, p_body text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_type IS NULL OR p_type NOT IN ('info', 'success', 'warning', 'error', 'critical') THEN
        RAISE EXCEPTION 'hub_notify: type must be info, success, warning, error or critical, not %',
            coalesce(pg_catalog.quote_literal(p_type), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_title IS NULL OR p_title = '' THEN
        RAISE EXCEPTION 'hub_notify: title must not be empty' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN zepix_hub.hub_append_event_v3('notification', 'NOTIFY', NULL, NULL,
        pg_catalog.json_build_object('type', p_type, 'title', p_title, 'body', p_body));
END;
$$;

COMMENT ON FUNCTION zepix_hub.hub_notify_v3(text, text, text) IS
    'Appends a notification event {type, title, body}; type is info, success, warning, error or critical.';

-- Its own search_path is pg_catalog only: the caller's (the bot's) path,
-- whatever it is, no longer decides what runs inside.
CREATE OR REPLACE FUNCTION public.hub_notify(p_type text, p_title text, p_body text DEFAULT NULL)
RETURNS bigint
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT zepix_hub.hub_notify_v3(p_type, p_title, p_body) $$;
