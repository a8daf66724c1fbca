-- Tenant API keys. The token (tfk_<key id>_<secret>) is shown once; only its
-- SHA-256 is stored, so a copy of this table opens nothing. A key belongs to one
-- tenant and has one role; revoking sets revoked_at, the row stays for the audit.
CREATE TABLE api_keys (
    key_id      TEXT        PRIMARY KEY,
    tenant_id   TEXT        NOT NULL,
    role        TEXT        NOT NULL CHECK (role IN ('app', 'admin', 'superadmin', 'auditor')),
    name        TEXT        NOT NULL DEFAULT '',
    token_hash  BYTEA       NOT NULL,
    created_by  TEXT        NOT NULL DEFAULT '',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at  TIMESTAMPTZ
);
CREATE INDEX api_keys_tenant_idx ON api_keys (tenant_id, created_at);

-- Idempotency-Key records: the first response to a mutating request, replayed to
-- every retry with the same key. key_hash covers the tenant, the API key and the
-- client's Idempotency-Key; the response is sealed under a key derived from the
-- client's key and a server secret that never enters the database, because it
-- can hold a TOTP secret or backup codes.
CREATE TABLE idempotency_records (
    key_hash     BYTEA       PRIMARY KEY,
    tenant_id    TEXT        NOT NULL,
    fingerprint  BYTEA       NOT NULL,
    state        TEXT        NOT NULL CHECK (state IN ('pending', 'done')),
    status       INT,
    response     BYTEA,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idempotency_records_created_idx ON idempotency_records (created_at);
