-- The append-only event log: the single source of truth.
CREATE TABLE events (
    position        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        UUID        NOT NULL UNIQUE,
    tenant_id       TEXT        NOT NULL,
    stream_id       TEXT        NOT NULL,
    stream_version  BIGINT      NOT NULL CHECK (stream_version > 0),
    event_type      TEXT        NOT NULL,
    schema_version  INT         NOT NULL,
    -- JSON (not JSONB) keeps the exact bytes that the hash covers.
    payload         JSON        NOT NULL,
    metadata        JSON        NOT NULL,
    recorded_at     TIMESTAMPTZ NOT NULL,
    -- The committing transaction orders readers the way watermill-sql does, so a
    -- transaction that commits late is never skipped by a reader.
    transaction_id  xid8        NOT NULL DEFAULT pg_current_xact_id(),
    prev_hash       BYTEA       NOT NULL,
    hash            BYTEA       NOT NULL,
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, stream_version)
);

CREATE INDEX events_tenant_position_idx ON events (tenant_id, position);
CREATE INDEX events_transaction_position_idx ON events (transaction_id, position);

CREATE FUNCTION events_are_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the events table is append-only (% rejected)', TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$;

CREATE TRIGGER events_no_update_or_delete
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_are_append_only();

CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_are_append_only();

-- watermill-sql v4 outbox for the topic "twofactor_events" (DefaultPostgreSQLSchema and
-- DefaultPostgreSQLOffsetsAdapter layouts). WARNING: the topic name is durable.
CREATE TABLE "watermill_twofactor_events" (
    "offset"         BIGSERIAL,
    "uuid"           VARCHAR(36) NOT NULL,
    "created_at"     TIMESTAMP   NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "payload"        JSON DEFAULT NULL,
    "metadata"       JSON DEFAULT NULL,
    "transaction_id" xid8        NOT NULL,
    PRIMARY KEY ("transaction_id", "offset")
);

CREATE TABLE "watermill_offsets_twofactor_events" (
    consumer_group                VARCHAR(255) NOT NULL,
    offset_acked                  BIGINT,
    last_processed_transaction_id xid8 NOT NULL,
    PRIMARY KEY (consumer_group)
);

-- Per-user data keys, wrapped by a master key. Deleting a row erases the user's
-- secrets and personal data in the log without rewriting history.
CREATE TABLE user_data_keys (
    tenant_id     TEXT        NOT NULL,
    user_id       TEXT        NOT NULL,
    master_key_id TEXT        NOT NULL,
    wrapped_key   BYTEA       NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    rewrapped_at  TIMESTAMPTZ,
    PRIMARY KEY (tenant_id, user_id)
);
CREATE INDEX user_data_keys_master_key_idx ON user_data_keys (master_key_id);
