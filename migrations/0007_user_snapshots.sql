-- Snapshots of user aggregates: a cache so a command on a long stream (years of
-- daily logins) reads one row and the few events after it. Always derivable from
-- the events; each row carries a MAC under the server key, so a row altered in
-- the database is ignored rather than believed.
CREATE TABLE user_snapshots (
    stream_id  TEXT        PRIMARY KEY,
    tenant_id  TEXT        NOT NULL,
    version    BIGINT      NOT NULL,
    schema     INT         NOT NULL,
    state      JSON        NOT NULL,
    mac        BYTEA       NOT NULL,
    taken_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
