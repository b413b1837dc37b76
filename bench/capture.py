"""The write-path variants S6 times and `python -m bench.instructions` counts, as SQL run on a
freshly migrated database. Shared by both so they measure the same thing."""

from __future__ import annotations

#: The hub's capture path before migration 0006 (v2 functions in public, advisory lock, frame in the NOTIFY
#: payload; 0005 only added the epoch table), measured side by side.
PREVIOUS_CAPTURE = "0005"
#: The bare trigger's channel: not the hub's, so no hub or reference server forwards it.
BARE_CHANNEL = "zepix_bench_bare"

#: S6 "no triggers": whatever capture trigger the migrations put on trades goes.
DROP_CAPTURE_SQL = """
DO $$
DECLARE
    t name;
BEGIN
    FOR t IN SELECT tgname FROM pg_trigger WHERE tgrelid = 'trades'::regclass AND NOT tgisinternal LOOP
        EXECUTE format('DROP TRIGGER %I ON trades', t);
    END LOOP;
END
$$;
"""

BARE_NOTIFY_SQL = DROP_CAPTURE_SQL + """
CREATE FUNCTION bench_bare_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('""" + BARE_CHANNEL + """', row_to_json(NEW)::text);
    RETURN NULL;
END
$$;
CREATE TRIGGER trades_bare_notify AFTER INSERT ON trades FOR EACH ROW EXECUTE FUNCTION bench_bare_notify();
"""
