-- Read models of the query side (projections/). Everything here is derived from
-- the events table: `twofactord replay --read-model NAME` rebuilds it into shadow
-- copies (CREATE TABLE … (LIKE … INCLUDING ALL)) and swaps them in.

-- Wake-ups: a subscriber blocked on an empty outbox LISTENs on this channel, so an
-- event is picked up at commit instead of at the next poll. A statement trigger
-- fires once per publishing statement; NOTIFY is delivered at commit only and
-- folds identical notifications of one transaction into one.
-- WARNING: the channel name "twofactor_events" is durable (messaging.EventsChannel).
CREATE FUNCTION notify_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_ARGV[0], '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER watermill_twofactor_events_notify
    AFTER INSERT ON "watermill_twofactor_events"
    FOR EACH STATEMENT EXECUTE FUNCTION notify_outbox('twofactor_events');

-- How far each read model has applied the log. The log is delivered in
-- (transaction_id, position) order (the outbox's order), so the checkpoint is that
-- pair: every event ordered at or before it has been applied, and no event can
-- still appear before it (watermill-sql reads only transactions older than every
-- running one). A read waiting for position P waits until
-- (P's transaction_id, P) <= (transaction_id, position).
-- generation is bumped by each rebuild swap, so live workers drop their caches.
CREATE TABLE read_model_checkpoints (
    read_model     TEXT        PRIMARY KEY,
    generation     BIGINT      NOT NULL DEFAULT 1,
    transaction_id xid8        NOT NULL DEFAULT '0',
    position       BIGINT      NOT NULL DEFAULT 0,
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    rebuilt_at     TIMESTAMPTZ
);
-- WARNING: read model names are durable (projections.UserStatusModel).
INSERT INTO read_model_checkpoints (read_model) VALUES ('user_status');

-- Tenant streams, folded: the policy the user rows are derived under.
CREATE TABLE tenant_policies (
    tenant_id  TEXT COLLATE "C" PRIMARY KEY,
    name       TEXT        NOT NULL,
    policy     JSONB       NOT NULL,
    version    BIGINT      NOT NULL,
    position   BIGINT      NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

-- One row per user of a tenant (never for an erased user). Columns that depend on
-- the time are stored as instants and evaluated at query time:
--   status = 'locked'  if locked_until > now
--          = 'pending' if not enabled and pending_until > now
--          = status_base otherwise
-- status_base is the domain's status once every lock and pending enrolment has
-- run out. updated_at is when the user's state last changed (the recorded time of
-- their last event), so a rebuild reproduces it exactly.
CREATE TABLE user_status (
    tenant_id               TEXT COLLATE "C" NOT NULL,
    user_id                 TEXT COLLATE "C" NOT NULL,
    status_base             TEXT        NOT NULL,
    enabled                 BOOLEAN     NOT NULL,
    methods                 TEXT[]      NOT NULL,
    default_method          TEXT        NOT NULL,
    -- [{"method": "totp", "expires_at": "…"}] in the domain's order
    pending                 JSONB       NOT NULL,
    pending_until           TIMESTAMPTZ,
    backup_codes_remaining  INT         NOT NULL,
    low_backup_codes        BOOLEAN     NOT NULL,
    required                BOOLEAN     NOT NULL,
    can_toggle              BOOLEAN     NOT NULL,
    must_enroll             BOOLEAN     NOT NULL,
    setup_app_at_next_login BOOLEAN     NOT NULL,
    locked_until            TIMESTAMPTZ,
    -- attempts left when not locked
    attempts_remaining      INT         NOT NULL,
    last_verified_at        TIMESTAMPTZ,
    last_verified_method    TEXT        NOT NULL,
    version                 BIGINT      NOT NULL,
    position                BIGINT      NOT NULL,
    updated_at              TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, user_id)
);
CREATE INDEX user_status_status_idx ON user_status (tenant_id, status_base, user_id);
CREATE INDEX user_status_locked_idx ON user_status (tenant_id, locked_until) WHERE locked_until IS NOT NULL;
CREATE INDEX user_status_pending_idx ON user_status (tenant_id, pending_until)
    WHERE pending_until IS NOT NULL AND NOT enabled;

-- The projector's memory of each user stream: the aggregate's saved state
-- (domain.UserTwoFactor.SaveState) at the version it reflects, so an event is
-- applied to the state it follows without replaying the stream. An erased user
-- keeps a tombstone (state NULL) so a redelivered old event cannot bring the row
-- back. Sealed fields stay sealed; the erased user's are dropped.
CREATE TABLE user_status_state (
    stream_id TEXT COLLATE "C" PRIMARY KEY,
    tenant_id TEXT COLLATE "C" NOT NULL,
    user_id   TEXT COLLATE "C" NOT NULL,
    version   BIGINT      NOT NULL,
    position  BIGINT      NOT NULL,
    event_at  TIMESTAMPTZ NOT NULL,
    schema    INT         NOT NULL,
    state     JSON,
    -- expiry of the latest started enrolment per method: {"totp": "…"}
    expiries  JSON        NOT NULL
);
CREATE INDEX user_status_state_tenant_idx ON user_status_state (tenant_id);

-- Per tenant and time-independent status: users, with 2FA on, required but not
-- enrolled. Maintained in the same transaction as user_status, as deltas of the
-- rows that change; the time-dependent part (locked now, pending now) is counted
-- at query time from the partial indexes above.
CREATE TABLE tenant_coverage (
    tenant_id             TEXT COLLATE "C" NOT NULL,
    status_base           TEXT   NOT NULL,
    users                 BIGINT NOT NULL,
    enabled               BIGINT NOT NULL,
    required_not_enrolled BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, status_base)
);
