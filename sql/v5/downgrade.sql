-- Undo sql/v5: the log loses its identity. Hubs of revision 0004 and older
-- never read it; clients resuming against them fall back to since alone.
DROP TABLE event_log_epoch;
