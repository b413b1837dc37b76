-- Views for DBAs and for the hub's own status.

CREATE VIEW event_stats AS
SELECT topic,
       count(*)        AS events,
       min(seq)        AS first_seq,
       max(seq)        AS last_seq,
       max(created_at) AS last_event_at
  FROM events
 GROUP BY topic;

COMMENT ON VIEW event_stats IS 'Per topic: number of retained events, first and last seq, time of the last event.';
COMMENT ON COLUMN event_stats.topic IS 'Event topic.';
COMMENT ON COLUMN event_stats.events IS 'Retained events of this topic.';
COMMENT ON COLUMN event_stats.first_seq IS 'Lowest retained seq of this topic.';
COMMENT ON COLUMN event_stats.last_seq IS 'Highest seq of this topic.';
COMMENT ON COLUMN event_stats.last_event_at IS 'When the newest event of this topic was appended.';

CREATE VIEW event_log_status AS
SELECT coalesce((SELECT max(seq) FROM events), r.pruned_through) AS head,
       coalesce((SELECT min(seq) FROM events), r.pruned_through + 1) AS oldest,
       r.pruned_through,
       r.pruned_at,
       pg_notification_queue_usage() AS notify_queue_usage
  FROM event_retention AS r;

COMMENT ON VIEW event_log_status IS 'One row: head (newest seq), oldest retained seq, retention floor, and how full the NOTIFY queue is (alert above 0.01).';
COMMENT ON COLUMN event_log_status.head IS 'Newest committed seq (the retention floor when the log is empty).';
COMMENT ON COLUMN event_log_status.oldest IS 'Oldest retained seq.';
COMMENT ON COLUMN event_log_status.pruned_through IS 'Retention floor: events up to this seq were pruned.';
COMMENT ON COLUMN event_log_status.pruned_at IS 'When the last prune ran.';
COMMENT ON COLUMN event_log_status.notify_queue_usage IS 'pg_notification_queue_usage(): fraction of the NOTIFY queue in use; a stuck listener makes it grow.';
