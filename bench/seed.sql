-- Seed data for the two pgbench ceilings, bench/command.sql (the service's own
-- transaction shape) and bench/minimal.sql (the least a replay-safe TOTP check
-- must do). Run on a scratch database migrated by `twofactord migrate`, with
-- psql variables:
--   psql -v clients=16 -v users=250 -f bench/seed.sql
-- One tenant stream, and for every pgbench client (:client_id 0 … clients-1)
-- its own users, each with the five events an enrolled user has after
-- `POST …/enrollments/totp`, `PUT …/contact-address` and the confirmation.
-- Payloads and metadata are copies of real rows (the same sizes), written
-- with a space after each colon and with '/' and '.' for ':' in stream ids and
-- times: pgbench would read ":name" in its script as a variable, and the
-- script appends rows like these. The hashes are random: the ceiling measures
-- PostgreSQL, not the hash chain.
\set ON_ERROR_STOP on
BEGIN;
INSERT INTO events (event_id, tenant_id, stream_id, stream_version, event_type, schema_version, payload, metadata, recorded_at, prev_hash, hash)
VALUES (gen_random_uuid(), '00000000-0000-4000-8000-00000000b0b0', 'tenant/00000000-0000-4000-8000-00000000b0b0', 1,
  'TenantCreated', 1,
  '{"name": "Bench", "policy": {"issuer_name": "twofactor", "totp_digits": 6, "totp_period": 30000000000, "totp_algorithm": "SHA1", "totp_skew": 1, "enrollment_ttl": 900000000000, "backup_code_count": 10, "low_backup_codes_warning": 2, "recovery_code_disables": false, "email_otp_allowed": true, "sms_otp_allowed": true, "otp_length": 6, "otp_lifetime": 600000000000, "otp_resend_cooldown": 60000000000, "lockout_threshold": 5, "lockout_duration": 900000000000, "lockout_max_duration": 86400000000000, "disable_by": "admins_and_toggle_users", "default_can_toggle": true, "fresh_verification_window": 1200000000000}}',
  '{"actor": {"kind": "system", "id": "cli"}, "tenant_id": "00000000-0000-4000-8000-00000000b0b0", "reason": "twofactord tenant create", "occurred_at": "2026-11-23T12.57.38.000000Z"}',
  now(), '\x'::bytea, sha256(gen_random_uuid()::text::bytea));

INSERT INTO events (event_id, tenant_id, stream_id, stream_version, event_type, schema_version, payload, metadata, recorded_at, prev_hash, hash)
SELECT gen_random_uuid(), '00000000-0000-4000-8000-00000000b0b0',
  'user/00000000-0000-4000-8000-00000000b0b0/c' || c || '-u' || u, v.version, v.type, 1, v.payload::json,
  ('{"actor": {"kind": "user", "id": "c' || c || '-u' || u || '"}, "tenant_id": "00000000-0000-4000-8000-00000000b0b0", "request_id": "01a2087b-e2ce-7dec-916e-cde58ab63efb", "correlation_id": "01a2087b-e2ce-7dec-916e-cde58ab63efb", "key_id": "pbfxsl7qvljehqnk", "occurred_at": "2026-11-23T12.57.46.449468Z"}')::json,
  now(), sha256(gen_random_uuid()::text::bytea), sha256(gen_random_uuid()::text::bytea)
FROM generate_series(0, :clients - 1) AS c, generate_series(1, :users) AS u, (VALUES
  (1, 'TOTPEnrollmentStarted', '{"sealed_secret": "v1.JeEtAo5cDx9AS8ZKJ1vnE36o-GIOfwCEAHMaU1DjzH98eeUj2dZcZFGq4R84kDx8yMo9io0YoZf9R3N8", "algorithm": "SHA1", "digits": 6, "period_seconds": 30, "expires_at": "2026-11-23T13.12.46.309244382Z", "replacement": false}'),
  (2, 'ContactAddressSet', '{"method": "email", "sealed_address": "v1.I2mo6s8dAqDEUE_MxzSLYkIQN2ILqgwrcFYk2QKHM4RN6GZBryE9X5F8zVkA"}'),
  (3, 'TOTPEnrollmentConfirmed', '{"step": 59847955, "replacement": false}'),
  (4, 'BackupCodesGenerated', '{"hashes": ["49meGerDasBoHyZxt1uoQDkxf3nJTp7ZnEpdUrPdWx0=", "EnD2yj6miBces/GV2bDj0oXDgBaiQsTt2d24AfKpBy4=", "26n5EVyq4AfnLwrLBvCyS7RcJwjxgXXMihgDbJkFO0M=", "k2hskcMv6faK3Js6+FshevgmNon0e+2/zYGmWiZG0VI=", "igCx+daxFne+vuAtaDwga9PPGWQq24thtUQAzT1x1DE=", "VqxbEr5PLFMAUYbRiuH2nW17yjgSg9Ojw7xHcMrcH1s=", "ztWyXDglXGsE8zWSqbZcMWmuTla9Tg7CalXXckztoFw=", "iLWQvUVDvSy/5jj+0pIpcpp9La8S2Ur8vBwhB0jVUDI=", "xCknYcJh1zLdDaTrnEOkwPD2YNlbhzacNkYMUQLWd0o=", "cCCeBFx+x2jmkf68MA7aFdLPhIb6aF36x6LtMc40fBM="], "reason": "enabled"}'),
  (5, 'TwoFactorEnabled', '{"method": "totp"}')
) AS v(version, type, payload);

-- bench/minimal.sql: one state row per user, the same users. The sealed secret
-- has the size of a real one (the event's sealed_secret); last_step is what a
-- check compares with and sets.
CREATE TABLE bench_totp_users (
    tenant_id     uuid   NOT NULL,
    user_id       text   NOT NULL,
    sealed_secret text   NOT NULL,
    last_step     bigint NOT NULL,
    failures      int    NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, user_id)
);
INSERT INTO bench_totp_users (tenant_id, user_id, sealed_secret, last_step)
SELECT '00000000-0000-4000-8000-00000000b0b0', 'c' || c || '-u' || u,
  'v1.JeEtAo5cDx9AS8ZKJ1vnE36o-GIOfwCEAHMaU1DjzH98eeUj2dZcZFGq4R84kDx8yMo9io0YoZf9R3N8', 59847955
FROM generate_series(0, :clients - 1) AS c, generate_series(1, :users) AS u;
COMMIT;
ANALYZE;
