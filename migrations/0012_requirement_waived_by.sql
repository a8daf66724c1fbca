-- Who switched "use 2FA" off ('user' with "can toggle 2FA", or 'admin'), shown
-- while it is off; '' when it never was switched off.
ALTER TABLE user_status ADD COLUMN requirement_waived_by TEXT NOT NULL DEFAULT '';

-- Rows of users not required after a requirement change: before this release
-- only admins changed it. (domain.StateSchema 2 makes the projector refold these
-- streams at their next event; a replay re-derives every row.)
UPDATE user_status s SET requirement_waived_by = 'admin'
FROM user_status_state st
WHERE st.tenant_id = s.tenant_id AND st.user_id = s.user_id AND NOT s.required
  AND EXISTS (SELECT 1 FROM events e WHERE e.stream_id = st.stream_id AND e.event_type = 'TwoFactorRequirementChanged');
