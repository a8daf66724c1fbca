-- Notices reach each user in the order of that user's events (README
-- "Notifications"): a notice is claimed only once every earlier notice of the
-- same stream is finished (sent, skipped or dead). The order is the event's
-- stream version, then the notice's place among those its event called for
-- (ordinal: "a backup code was used" before "only N backup codes left").
-- Rows recorded before this migration get ordinal 0: two notices of one such
-- event may go in either order, as they did before.
ALTER TABLE notifications ADD COLUMN ordinal SMALLINT NOT NULL DEFAULT 0;

-- The claim's check for an earlier open notice of the same user. One-time codes
-- (priority 0) take no part in the order.
CREATE INDEX notifications_open_notices_idx ON notifications (stream_id, stream_version, ordinal)
    WHERE status IN ('pending', 'sending') AND priority = 1;
