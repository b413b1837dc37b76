-- Named queries the hub runs at run time. service/store/events.py loads this file and
-- runs each block by its name; a DBA can paste any of them into psql (replace
-- $1, $2, ... by values). None of them writes, except prune_batch.

-- name: log_position
-- head, oldest retained seq, retention floor and the log's epoch; read in the
-- same snapshot as the events a caller is about to read, so neither a prune
-- nor a restore fence (which replaces the epoch) can slip in between.
SELECT s.head, s.oldest, s.pruned_through, e.epoch::text AS epoch
  FROM event_log_status AS s CROSS JOIN event_log_epoch AS e;

-- name: events_live
-- The listener's read: events_after plus the log's epoch, in one statement,
-- so the events are known to belong to that epoch. The epoch is an
-- uncorrelated subquery, evaluated once (an InitPlan); no rows, no epoch,
-- and nothing to dispatch either. `appended` (seconds since 1970) is the
-- frame's "ts" as a number, for the hub's delivery-latency histogram.
SELECT (SELECT epoch::text FROM event_log_epoch) AS epoch,
       seq, topic, hub_event_frame_v1(seq, topic, created_at, payload) AS frame,
       extract(epoch FROM created_at)::float8 AS appended
  FROM events
 WHERE seq > $1
 ORDER BY seq
 LIMIT $2;

-- name: events_after
-- Events after seq $1, in seq order, at most $2, rendered as client frames.
SELECT seq, topic, hub_event_frame_v1(seq, topic, created_at, payload) AS frame
  FROM events
 WHERE seq > $1
 ORDER BY seq
 LIMIT $2;

-- name: events_after_on_topics
-- The same, restricted to the topics in $2. One ordered walk of
-- events_topic_seq_idx per topic, each stopping after $3 rows, then a merge:
-- a page costs O(topics x $3). The hub runs it after
-- SET LOCAL enable_bitmapscan = off (ordered_walk, below); paste
-- that too. Without it, when events has no statistics yet (right after a
-- burst), the planner guesses few rows match and prefers collecting and
-- sorting every match for each page: a full replay then goes quadratic.
SELECT e.seq, e.topic, hub_event_frame_v1(e.seq, e.topic, e.created_at, e.payload) AS frame
  FROM (SELECT DISTINCT unnest($2::text[])) AS t (topic)
 CROSS JOIN LATERAL (
        SELECT seq, topic, created_at, payload
          FROM events
         WHERE events.topic = t.topic AND events.seq > $1
         ORDER BY events.seq
         LIMIT $3
       ) AS e
 ORDER BY e.seq
 LIMIT $3;

-- name: ordered_walk
-- Run before the per-topic reads, in their transaction. Until events has
-- column statistics (a young log, or right after a burst, before
-- autovacuum's ANALYZE) the planner guesses ~0.2% of the rows match and
-- prefers a bitmap scan that collects every matching row and sorts them, for
-- every page: a resume of 100,000 events then reads 5 million rows. The
-- ordered index walk costs O(page) whatever the guess.
SET LOCAL enable_bitmapscan = off;

-- name: count_after
-- How many events a client resuming from $1 missed, counting at most $2 of
-- them: enough to decide whether to replay or reset. In seq order, so the
-- primary key bounds the work to $2 rows.
SELECT count(*) FROM (
    SELECT 1 FROM events WHERE seq > $1 ORDER BY seq LIMIT $2
) AS missed;

-- name: count_after_on_topics
-- The same on the topics in $2, at most $3: per topic, as events_after_on_topics.
SELECT count(*) FROM (
    SELECT 1 FROM (SELECT DISTINCT unnest($2::text[])) AS t (topic)
     CROSS JOIN LATERAL (
            SELECT 1 FROM events
             WHERE events.topic = t.topic AND events.seq > $1
             ORDER BY events.seq
             LIMIT $3
           ) AS per_topic
    LIMIT $3
) AS missed;

-- name: open_trades
-- Trades that are not final, oldest first: what the dashboard's table shows.
SELECT to_jsonb(t)::text
  FROM trades AS t
 WHERE status IN ('PENDING', 'OPEN', 'PARTIALLY_FILLED', 'FILLED')
 ORDER BY opened_at, id;

-- name: recent_closed_trades
-- The last $1 trades that reached a final status, newest first.
SELECT to_jsonb(t)::text
  FROM trades AS t
 WHERE status IN ('CLOSED', 'CANCELLED', 'REJECTED')
 ORDER BY coalesce(closed_at, updated_at) DESC, id DESC
 LIMIT $1;

-- name: recent_logs
-- The last $1 log lines, newest first.
SELECT to_jsonb(l)::text FROM logs AS l ORDER BY id DESC LIMIT $1;

-- name: prune_cutoff
-- Highest seq appended before $1: everything up to it may go.
SELECT max(seq) FROM events WHERE created_at < $1;

-- name: prune_batch
-- Delete the oldest events up to seq $1, at most $2 of them, and raise the
-- retention floor in the same transaction so readers never see a silent gap.
WITH doomed AS (
    SELECT seq FROM events WHERE seq <= $1 ORDER BY seq LIMIT $2
), gone AS (
    DELETE FROM events AS e USING doomed AS d WHERE e.seq = d.seq RETURNING e.seq
), floor AS (
    UPDATE event_retention
       SET pruned_through = greatest(pruned_through, (SELECT max(seq) FROM gone)),
           pruned_at = now()
     WHERE EXISTS (SELECT 1 FROM gone)
    RETURNING pruned_through
)
SELECT (SELECT count(*) FROM gone) AS deleted, (SELECT pruned_through FROM floor) AS floor;

-- name: retention_floor
-- The highest seq pruned so far (0 if none): a resume from below it is gone.
SELECT pruned_through FROM event_retention;

-- name: log_head
-- The newest seq (for /readyz: how far the listener lags).
SELECT head FROM event_log_status;

-- name: hub_status
-- What the heartbeat reports and the metrics export: head, oldest retained
-- seq and how full PostgreSQL's NOTIFY queue is (0..1).
SELECT head, oldest, notify_queue_usage FROM event_log_status;
-- name: open_trades_where
-- open_trades for a row filter or scope (docs/protocol.md, "Row filters"):
-- $1..$4 are the allowed symbols, strategies, sides and statuses, NULL for
-- no condition. A NULL column matches no list, as in the hub's own matching.
SELECT to_jsonb(t)::text
  FROM trades AS t
 WHERE status IN ('PENDING', 'OPEN', 'PARTIALLY_FILLED', 'FILLED')
   AND ($1::text[] IS NULL OR t.symbol = ANY ($1))
   AND ($2::text[] IS NULL OR t.strategy = ANY ($2))
   AND ($3::text[] IS NULL OR t.side = ANY ($3))
   AND ($4::text[] IS NULL OR t.status = ANY ($4))
 ORDER BY opened_at, id;

-- name: recent_closed_trades_where
-- recent_closed_trades for a row filter: the last $5 final trades among those
-- that match $1..$4 (as in open_trades_where).
SELECT to_jsonb(t)::text
  FROM trades AS t
 WHERE status IN ('CLOSED', 'CANCELLED', 'REJECTED')
   AND ($1::text[] IS NULL OR t.symbol = ANY ($1))
   AND ($2::text[] IS NULL OR t.strategy = ANY ($2))
   AND ($3::text[] IS NULL OR t.side = ANY ($3))
   AND ($4::text[] IS NULL OR t.status = ANY ($4))
 ORDER BY coalesce(closed_at, updated_at) DESC, id DESC
 LIMIT $5;

-- name: recent_logs_where
-- recent_logs for a row filter: the last $3 lines whose level is in $1 (a
-- minimum level, spelt out) and source in $2, NULL for no condition. Walks
-- the lines newest first until $3 match: a filter matching few lines reads
-- far back (retention bounds it).
SELECT to_jsonb(l)::text
  FROM logs AS l
 WHERE ($1::text[] IS NULL OR l.level = ANY ($1))
   AND ($2::text[] IS NULL OR l.source = ANY ($2))
 ORDER BY id DESC
 LIMIT $3;
