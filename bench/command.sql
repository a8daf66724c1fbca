-- pgbench script: the transaction of one command (a TOTP login), done by
-- PostgreSQL alone, as the ceiling the service is compared with:
--   pgbench -n -M prepared -c 16 -j 2 -T 20 -D users=250 -f bench/command.sql DB
-- on a scratch database migrated by `twofactord migrate` and seeded by
-- bench/seed.sql for at least as many clients. Each client works on its own
-- users (:client_id), so no two clients append to one stream: like the HTTP
-- scenarios, it never conflicts. Prepared statements, as pgx uses.
--
-- Read the tenant stream and the user's stream (every column, as the event
-- store does), append one event at the next version, its hash chained on the
-- previous row's (the log is also the consumers' topic: no outbox row since
-- migration 0013), and commit. The JSON literals have the sizes of real
-- rows; they are written with a space after each colon and without ':' in ids
-- and times, since pgbench reads ":name" as one of its variables.
\set u random(1, :users)
BEGIN;
SELECT position, event_id::text, tenant_id, stream_id, stream_version, event_type, schema_version,
  payload::text, metadata::text, recorded_at, transaction_id::text, prev_hash, hash
  FROM events WHERE stream_id = 'tenant/00000000-0000-4000-8000-00000000b0b0' ORDER BY stream_version;
SELECT position, event_id::text, tenant_id, stream_id, stream_version, event_type, schema_version,
  payload::text, metadata::text, recorded_at, transaction_id::text, prev_hash, hash
  FROM events WHERE stream_id = 'user/00000000-0000-4000-8000-00000000b0b0/c' || :client_id || '-u' || :u
  ORDER BY stream_version;
INSERT INTO events (event_id, tenant_id, stream_id, stream_version, event_type, schema_version,
    payload, metadata, recorded_at, prev_hash, hash)
  SELECT gen_random_uuid(), tenant_id, stream_id, stream_version + 1, 'TOTPVerified', 1,
    '{"step": 59847956}',
    '{"actor": {"kind": "user", "id": "c1-u17"}, "tenant_id": "00000000-0000-4000-8000-00000000b0b0", "request_id": "01a2087b-e2ce-7dec-916e-cde58ab63efb", "correlation_id": "01a2087b-e2ce-7dec-916e-cde58ab63efb", "key_id": "pbfxsl7qvljehqnk", "occurred_at": "2026-11-23T12.57.46.449468Z"}',
    now(), hash, sha256(hash)
  FROM events WHERE stream_id = 'user/00000000-0000-4000-8000-00000000b0b0/c' || :client_id || '-u' || :u
  ORDER BY stream_version DESC LIMIT 1
  RETURNING position;
COMMIT;
