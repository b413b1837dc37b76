-- event_log_epoch: the event log's identity.
--
-- A seq names an event only within one log. After a restore to an earlier
-- point, a failover to a replica that lagged, or a database rebuilt from
-- scratch, the same seq can name another event (or none), and a client that
-- was away cannot tell from the number alone. The epoch is a random id born
-- with the log: the hub sends it with every position it hands out (welcome,
-- /api/events, /api/snapshot), clients send it back when they resume, and a
-- resume with another log's epoch reloads instead of replaying
-- (docs/protocol.md).
--
-- Random rather than derived (from the system identifier, the timeline, a
-- timestamp): a pg_dump, a base backup or a PITR carries this row with it, so a
-- restored log keeps the epoch it had, and sql/ops/fence_after_restore.sql
-- replaces it, in the same transaction that raises the retention floor. A log
-- created by `zepix-hub migrate` on an empty database gets a fresh one.
--
-- For an existing database this migration creates the epoch and touches no
-- event: clients that already hold seqs keep resuming (without an epoch, as
-- before) and learn the epoch from their next welcome or response.
--
-- gen_random_uuid() is core since PostgreSQL 13 (no pgcrypto needed).
-- Only the owner writes it; zepix_hub_reader is granted SELECT
-- (sql/roles/zepix_hub_reader.sql).
CREATE TABLE event_log_epoch (
    id          boolean     PRIMARY KEY DEFAULT true CHECK (id),
    epoch       uuid        NOT NULL DEFAULT gen_random_uuid(),
    started_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO event_log_epoch DEFAULT VALUES;

COMMENT ON TABLE event_log_epoch IS 'One row: the event log''s identity. A seq is meaningful only together with this epoch; sql/ops/fence_after_restore.sql replaces it after a restore.';
COMMENT ON COLUMN event_log_epoch.id IS 'Always true: the table holds exactly one row.';
COMMENT ON COLUMN event_log_epoch.epoch IS 'Random id of this log; clients resume with since=<seq>&epoch=<epoch>, and a resume with another epoch must reload state.';
COMMENT ON COLUMN event_log_epoch.started_at IS 'When this epoch began: the migration that created the log, or the last restore fence.';
