-- events v2 columns: payload becomes json, and the topic/op checks go through domains.
--
-- Why json, not jsonb: an event is written once and then only ever read as
-- text (the NOTIFY frame, every replay page). jsonb parses and re-serialises it
-- on both sides; json stores the text the trigger built and hands it back
-- untouched. DBAs keep ->, ->> and the json_* functions, and cast to jsonb for
-- containment or indexing (payload::jsonb @> '{"op": "UPDATE"}').
-- The key order inside payload is now the source table's column order (json
-- keeps what row_to_json wrote) instead of jsonb's length-then-bytes order.
--
-- Why domains: a table CHECK is re-read from its stored node text and
-- re-planned on every INSERT executed by a trigger function (about 40,000
-- instructions each for the two IN-lists, a tenth of the capture path), while a
-- domain's constraint is planned once per backend and cached. The columns stay
-- text so the views and every query over them are unchanged.
--
-- ALTER COLUMN ... TYPE json rewrites the table under an ACCESS EXCLUSIVE lock:
-- on a large log, prune first (docs/dba.md).
--
-- Lock order: a bot transaction holds trades (or logs) and takes events at
-- COMMIT, in its deferred trigger. This migration takes events here and the
-- bot's tables in 07_triggers.sql; taking them the other way round would
-- deadlock with a live bot. So all three, in the bot's order, first.
LOCK TABLE trades, logs, events IN ACCESS EXCLUSIVE MODE;

CREATE DOMAIN event_topic AS text
    CHECK (VALUE IN ('trade_update', 'log_stream', 'notification'));
COMMENT ON DOMAIN event_topic IS 'The topics of events.topic; checked through events_topic_check.';

CREATE DOMAIN event_op AS text
    CHECK (VALUE IN ('INSERT', 'UPDATE', 'DELETE', 'NOTIFY'));
COMMENT ON DOMAIN event_op IS 'The operations of events.op; checked through events_op_check.';

ALTER TABLE events
    DROP CONSTRAINT events_topic_check,
    DROP CONSTRAINT events_op_check,
    ALTER COLUMN payload TYPE json USING payload::text::json,
    ADD CONSTRAINT events_topic_check CHECK (topic::event_topic IS NOT NULL),
    ADD CONSTRAINT events_op_check CHECK (op::event_op IS NOT NULL);

COMMENT ON COLUMN events.payload IS 'The event body sent to clients as "data", stored as the exact JSON text they receive.';
