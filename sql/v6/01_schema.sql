-- Schema zepix_hub: the capture path's own namespace (docs/adr/0007-capture-path-hardening.md).
--
-- Before this migration the SECURITY DEFINER capture functions ran with
-- search_path = public, pg_temp and called pg_advisory_xact_lock(2053468265)
-- and nextval('events_seq') unqualified. Wherever a role other than the owner
-- may CREATE in public (PostgreSQL 13/14's default, clusters upgraded from
-- them, or a grant), it could plant public.pg_advisory_xact_lock(integer),
-- which matches an int4 literal better than pg_catalog's bigint version, and
-- have it run as the functions' owner. From here on:
--   * the capture functions live in zepix_hub, where only the owner creates;
--   * they run with search_path = pg_catalog, pg_temp. PostgreSQL never looks
--     up functions or operators in pg_temp, so every function and operator
--     they use, qualified or not, comes from pg_catalog, where only a
--     superuser creates; and every call is written pg_catalog.f() anyway;
--   * relations are named with their schema (public.events), which a look-alike
--     cannot shadow: a qualified name resolves in that schema only;
--   * `zepix-hub migrate` and `zepix-hub doctor` refuse a database where a role
--     other than the owner may CREATE in pg_catalog, zepix_hub or public.
--
-- The tables, the views, events_seq and the stable entry points (hub_notify,
-- hub_prune_logs_v1, hub_event_frame_v1) stay in public: the bot writes trades
-- and logs unqualified, every hub (old and new, during a rolling upgrade) and
-- every DBA query names events and the views unqualified, and the role scripts
-- grant on them by those names.
--
-- Lock order, as in sql/v4: a bot transaction holds trades (or logs) and takes
-- the commit-order lock at COMMIT; a hub_notify() caller takes the advisory
-- lock of the old path at the call. This migration swaps the triggers on both
-- tables and the lock the capture path uses, so it takes them in the bot's
-- order first, then the old advisory lock: no transaction that appended under
-- the old lock can still be committing once the new path starts drawing seqs.
LOCK TABLE public.trades, public.logs IN ACCESS EXCLUSIVE MODE;
SELECT pg_catalog.pg_advisory_xact_lock(2053468265);

CREATE SCHEMA zepix_hub;
-- A new schema grants nothing to PUBLIC, but ALTER DEFAULT PRIVILEGES ... ON
-- SCHEMAS could have: nobody but the owner needs anything here. The triggers
-- fire their functions without a USAGE or EXECUTE check, and hub_notify and
-- hub_prune_logs_v1 (public) call into it as the owner.
REVOKE ALL ON SCHEMA zepix_hub FROM PUBLIC;
COMMENT ON SCHEMA zepix_hub IS
    'zepix-hub''s capture path: functions and the commit-order lock. Only the owner may create here; no other role needs any privilege.';

-- The commit-order lock. Every append takes it in SHARE UPDATE EXCLUSIVE mode
-- at COMMIT (hub_append_event_v3): the weakest mode that conflicts with
-- itself. A stronger one (EXCLUSIVE) works the same but makes every
-- acquisition scan all backends' fast-path lock slots (PostgreSQL does that
-- for "strong" relation locks): 18,000 instructions more per append, and more
-- with more connections (docs/benchmarks.md). It replaces advisory lock 2053468265, which any
-- login could take and hold, stalling every commit of the bot (a COMMIT does
-- not time out). Taking a lock on this table needs a privilege on it (LOCK
-- TABLE: UPDATE, DELETE, TRUNCATE or ownership; SELECT ... FOR SHARE: UPDATE)
-- and, to name it, USAGE on zepix_hub: no role but the owner has either.
-- A role may still open it by oid (pg_relation_size(oid) takes ACCESS SHARE
-- without a privilege check): ACCESS SHARE does not conflict with it. VACUUM
-- and ANALYZE take the same mode; only the owner, a superuser and roles with
-- MAINTAIN (PostgreSQL 17+: pg_maintain) may run them on this table, and an
-- autovacuum of a table that is never written is a rare, instant
-- anti-wraparound pass.
-- The table holds no rows and no columns; nothing ever writes it, so nothing
-- vacuums it beyond the rare anti-wraparound pass, which takes milliseconds.
CREATE TABLE zepix_hub.commit_order ();
REVOKE ALL ON TABLE zepix_hub.commit_order FROM PUBLIC;
COMMENT ON TABLE zepix_hub.commit_order IS
    'The commit-order lock: hub_append_event_v3 takes LOCK TABLE zepix_hub.commit_order IN SHARE UPDATE EXCLUSIVE MODE before drawing a seq. Never lock it yourself outside sql/ops/.';
