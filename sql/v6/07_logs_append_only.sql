-- Every change to a captured table reaches clients as an event, or is refused.
--
-- logs is an append-only journal: its capture trigger fires on INSERT only,
-- so an UPDATE or DELETE would change a line that dashboards already show,
-- silently. TRUNCATE fires no row trigger on either table, so a truncated
-- trades would leave every dashboard showing trades that no longer exist.
-- These statement triggers refuse all of them, for every role, owner
-- included; the exception is hub_prune_logs_v1 (06_hub_prune_logs_v1.sql).
-- A superuser or the owner can still ALTER TABLE ... DISABLE TRIGGER:
-- `zepix-hub doctor` reports a disabled trigger.
--
-- Not SECURITY DEFINER: current_user must be the role doing the change.
CREATE FUNCTION zepix_hub.hub_refuse_change_v1()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'DELETE' AND TG_TABLE_NAME = 'logs'
       AND pg_catalog.current_setting('zepix_hub.pruning_logs', true) = 'on'
       AND pg_catalog.pg_has_role(current_user,
                                  (SELECT c.relowner FROM pg_catalog.pg_class AS c WHERE c.oid = TG_RELID),
                                  'USAGE') THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION '% on %.% refused: no client would see it (the table is captured by zepix-hub)',
        TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
        USING ERRCODE = 'feature_not_supported',
              HINT = CASE WHEN TG_TABLE_NAME = 'logs'
                          THEN 'logs is append-only; delete old lines with hub_prune_logs_v1(interval)'
                          ELSE 'change trades row by row: DELETE FROM trades WHERE ... produces one event per row' END;
END;
$$;

REVOKE EXECUTE ON FUNCTION zepix_hub.hub_refuse_change_v1() FROM PUBLIC;
COMMENT ON FUNCTION zepix_hub.hub_refuse_change_v1() IS
    'Trigger function: refuses changes to captured tables that would reach no client (UPDATE/DELETE on logs except by hub_prune_logs_v1, TRUNCATE).';

CREATE TRIGGER logs_append_only_v1
    BEFORE UPDATE OR DELETE OR TRUNCATE ON public.logs
    FOR EACH STATEMENT EXECUTE FUNCTION zepix_hub.hub_refuse_change_v1();
COMMENT ON TRIGGER logs_append_only_v1 ON public.logs IS
    'Refuses UPDATE, DELETE (except through hub_prune_logs_v1) and TRUNCATE: logs is an append-only journal.';

CREATE TRIGGER trades_no_truncate_v1
    BEFORE TRUNCATE ON public.trades
    FOR EACH STATEMENT EXECUTE FUNCTION zepix_hub.hub_refuse_change_v1();
COMMENT ON TRIGGER trades_no_truncate_v1 ON public.trades IS
    'Refuses TRUNCATE, which fires no row trigger and so would reach no client.';
