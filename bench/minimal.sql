-- pgbench script: the least any correct, replay-safe TOTP check must do in
-- PostgreSQL, the ceiling the service is measured against (issue 13):
--   pgbench -n -M prepared -c 16 -j 2 -T 20 -D users=250 -f bench/minimal.sql DB
-- on the database seeded by bench/seed.sql (table bench_totp_users) for at
-- least as many clients. Each client works on its own users (:client_id), so
-- nothing conflicts, as in the HTTP scenarios. Prepared statements, as pgx uses.
--
-- A check must read the user's state (the sealed secret, the last accepted
-- step, the failure count) and persist the accepted step so that the same code
-- is never accepted twice; the write is a compare-and-set on the step that was
-- read, so two racing checks of one code cannot both succeed. One read, one
-- row written (a HOT update: no indexed column changes), one commit: what
-- stays of a login once everything an implementation may choose (an event log,
-- a hash chain, an outbox, read models) is left out.
\set u random(1, :users)
BEGIN;
SELECT sealed_secret, last_step, failures FROM bench_totp_users
  WHERE tenant_id = '00000000-0000-4000-8000-00000000b0b0' AND user_id = 'c' || :client_id || '-u' || :u \gset
UPDATE bench_totp_users SET last_step = :last_step + 1, failures = 0
  WHERE tenant_id = '00000000-0000-4000-8000-00000000b0b0' AND user_id = 'c' || :client_id || '-u' || :u
    AND last_step = :last_step;
COMMIT;
