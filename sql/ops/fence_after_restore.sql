-- Fence the event log after the database came back EARLIER than what clients
-- may have seen (point-in-time recovery to an earlier target, failover to an
-- asynchronous replica that lagged, an older pg_dump). docs/dba.md, "After a
-- restore", explains when and why. Run it once, with the bot stopped, before
-- the hubs and the bot start again:
--
--     psql "$DATABASE_URL" -f sql/ops/fence_after_restore.sql
--
-- It moves the sequence far past any seq a client can hold (10^9: more than
-- the events that can have been lost, far below 2^53), raises the retention
-- floor to match, so every older `since` reloads instead of resuming into
-- seqs that now name other events, and appends one notification so the head
-- is above the floor. The commit-order lock keeps it from interleaving with
-- an append.
--
-- It also gives the log a new epoch (migration 0005): the restored copy
-- carries the epoch the lost log had, so clients that resume with it would
-- otherwise be taken at their word. After the fence, every resume that names
-- the old epoch reloads, whatever its since, and the running hubs close their
-- clients with 4410 so they reload too (docs/protocol.md).
--
-- The commit-order lock is zepix_hub.commit_order since migration 0006 (it
-- was advisory lock 2053468265 before); the owner or a superuser runs this.
BEGIN;
LOCK TABLE zepix_hub.commit_order IN SHARE UPDATE EXCLUSIVE MODE;
SELECT setval('events_seq', greatest(coalesce((SELECT max(seq) FROM events), 0),
                                     (SELECT pruned_through FROM event_retention),
                                     (SELECT last_value FROM events_seq)) + 1000000000);
UPDATE event_retention SET pruned_through = (SELECT last_value FROM events_seq), pruned_at = now();
-- An upsert, so the fence also repairs a log whose epoch row was deleted.
INSERT INTO event_log_epoch DEFAULT VALUES
    ON CONFLICT (id) DO UPDATE SET epoch = gen_random_uuid(), started_at = now();
SELECT hub_notify('warning', 'Database restored', 'Live data was reloaded after a database restore');
COMMIT;
