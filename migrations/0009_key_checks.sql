-- What the database remembers of the keys it was used with, so that a process
-- configured with another key refuses to start instead of answering 500 to
-- existing users and wrapping new data under a key that is then lost
-- (secrets.VerifyKeys). Neither table holds a key or anything that helps guess one.

-- One AES-256-GCM tag per master key id, sealed under that key with the id as
-- associated data: it opens only under the same key and id.
CREATE TABLE master_key_checks (
    key_id      TEXT        PRIMARY KEY,
    check_value BYTEA       NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- HMAC-SHA256 under TWOFACTOR_CODE_KEY of a fixed label; one row at most.
CREATE TABLE code_key_checks (
    only_row    BOOLEAN     PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    fingerprint BYTEA       NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
