-- hub_prune_logs_v1: the one way to delete log lines (logs is append-only,
-- 07_logs_append_only.sql).
--
--   SELECT hub_prune_logs_v1(interval '30 days');   -- returns the lines deleted
--
-- Deletes the lines older than the interval (by ts). Their log_stream events
-- stay in `events` until the event log is pruned (`zepix-hub prune`), which
-- moves the retention floor; dashboards drop old lines on their own, and a
-- snapshot simply shows fewer old ones. EXECUTE goes to zepix_hub_pruner
-- (sql/roles/zepix_hub_pruner.sql), nobody else.
--
-- It runs as the owner and marks the transaction (a custom setting, SET
-- LOCAL); the guard lets a DELETE through only when both hold: any role can
-- set the mark, only the owner (or a superuser) is the owner.
CREATE FUNCTION public.hub_prune_logs_v1(p_older_than interval)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_deleted bigint;
BEGIN
    IF p_older_than IS NULL OR p_older_than OPERATOR(pg_catalog.<) interval '0' THEN
        RAISE EXCEPTION 'hub_prune_logs_v1: older_than must be a non-negative interval, not %',
            coalesce(p_older_than::pg_catalog.text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pg_catalog.set_config('zepix_hub.pruning_logs', 'on', true);
    -- OPERATOR(...) has one precedence for all: the parentheses are needed.
    DELETE FROM public.logs WHERE ts OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) p_older_than);
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    PERFORM pg_catalog.set_config('zepix_hub.pruning_logs', '', true);
    RETURN v_deleted;
END;
$$;

REVOKE EXECUTE ON FUNCTION public.hub_prune_logs_v1(interval) FROM PUBLIC;
COMMENT ON FUNCTION public.hub_prune_logs_v1(interval) IS
    'Deletes log lines older than the interval (the only way to delete from logs); returns how many. For zepix_hub_pruner.';
