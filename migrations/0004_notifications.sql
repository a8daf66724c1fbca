-- The notifier's delivery ledger: one row per (event, notification kind). The
-- watermill handler only inserts rows (ON CONFLICT DO NOTHING, so a redelivered
-- event adds nothing); the delivery loop claims due rows with FOR UPDATE SKIP
-- LOCKED, sends, and marks them sent. No recipient address and no message content
-- is stored here: both are read from the event log (sealed) just before sending.
--
-- status:
--   pending  waiting for next_attempt_at
--   sending  claimed by a worker until next_attempt_at (its lease); a worker that
--            dies leaves the row to be claimed again when the lease ends
--   sent     handed to the SMTP server or SMS provider
--   dead     failed max_attempts times; listed by `twofactord notifications failed`
--   skipped  nothing to send (no registered address, code expired, user erased);
--            the reason is in last_error
-- WARNING: the kind values are durable (they key the ledger); never rename one.
CREATE TABLE notifications (
    event_id         UUID        NOT NULL,
    kind             TEXT        NOT NULL,
    tenant_id        TEXT        NOT NULL,
    user_id          TEXT        NOT NULL,
    stream_id        TEXT        NOT NULL,
    stream_version   BIGINT      NOT NULL,
    event_type       TEXT        NOT NULL,
    -- 0: one-time codes (someone is waiting at a login page), 1: notices.
    priority         SMALLINT    NOT NULL DEFAULT 1,
    status           TEXT        NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'sending', 'sent', 'dead', 'skipped')),
    channel          TEXT        CHECK (channel IN ('email', 'sms')),
    attempts         INT         NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ NOT NULL,
    -- Set by each claim: only the worker holding the current claim may finish the row.
    claim_token      UUID,
    last_error       TEXT,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL,
    sent_at          TIMESTAMPTZ,
    PRIMARY KEY (event_id, kind)
);

-- The delivery loop's claim: due rows, codes first.
CREATE INDEX notifications_due_idx ON notifications (priority, next_attempt_at)
    WHERE status IN ('pending', 'sending');

-- `twofactord notifications failed` and the dead-letter metric.
CREATE INDEX notifications_dead_idx ON notifications (tenant_id, updated_at)
    WHERE status = 'dead';
