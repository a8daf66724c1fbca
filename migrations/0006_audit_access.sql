-- Who read what: every auditor read of the history is logged here (an access log,
-- not an event: reading changes no 2FA state).
CREATE TABLE audit_access_log (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  TEXT        NOT NULL,
    actor_kind TEXT        NOT NULL,
    actor_id   TEXT        NOT NULL,
    key_id     TEXT        NOT NULL DEFAULT '',
    request_id TEXT        NOT NULL DEFAULT '',
    action     TEXT        NOT NULL,
    target     TEXT        NOT NULL DEFAULT '',
    at         TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX audit_access_log_tenant_at_idx ON audit_access_log (tenant_id, at);
