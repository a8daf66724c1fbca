-- How many security keys (WebAuthn) each user has registered, beside the
-- methods (where "webauthn" now appears). Every existing row is right at 0: no
-- key could be registered before this release.
ALTER TABLE user_status ADD COLUMN security_keys INT NOT NULL DEFAULT 0;
