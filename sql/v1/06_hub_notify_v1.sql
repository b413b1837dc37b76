-- hub_notify: raise a dashboard notification by hand (from the bot or psql).
--
--   SELECT hub_notify('warning', 'Broker slow', 'Order acks take 3 s');
--
-- Unlike the table triggers this appends immediately, so it takes the
-- commit-order lock at the call and holds it until the transaction ends: call
-- it on its own or at the end of a transaction, not early in a long one.
CREATE FUNCTION hub_notify_v1(p_type text, p_title text, p_body text DEFAULT NULL)
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
    RETURN hub_append_event_v1('notification', 'NOTIFY', NULL, NULL,
        jsonb_build_object('type', p_type, 'title', p_title, 'body', p_body));
END;
$$;

COMMENT ON FUNCTION hub_notify_v1(text, text, text) IS
    'Appends a notification event {type, title, body}; type is info, success, warning, error or critical.';

-- The stable name the bot calls; a later migration repoints it at hub_notify_v2.
CREATE FUNCTION hub_notify(p_type text, p_title text, p_body text DEFAULT NULL)
RETURNS bigint
LANGUAGE sql
SECURITY DEFINER
SET search_path = public, pg_temp
AS $$ SELECT hub_notify_v1(p_type, p_title, p_body) $$;

COMMENT ON FUNCTION hub_notify(text, text, text) IS
    'Raise a dashboard notification by hand: hub_notify(type, title, body). Returns the event seq.';
