package domain

import (
	"crypto/hmac"
	"encoding/base64"
	"time"
)

// Env is what every decision receives: the moment, who acts, and the tenant's policy.
type Env struct {
	Now    time.Time
	Actor  Actor
	Policy Policy
}

// Locked is the error of a verification refused during a lockout.
func Locked(until, now time.Time) *Error {
	e := newError(KindLocked, CodeLocked, "too many failed attempts; try again later")
	e.AttemptsRemaining = 0
	e.RetryAfterSeconds = int(until.Sub(now).Round(time.Second) / time.Second)
	if e.RetryAfterSeconds < 1 {
		e.RetryAfterSeconds = 1
	}
	return e
}

// invalidCode never says why a code failed (wrong, replayed, used): only how many tries remain.
func invalidCode(remaining int) *Error {
	e := newError(KindInvalid, CodeInvalidCode, "invalid code")
	e.AttemptsRemaining = remaining
	return e
}

func (u *UserTwoFactor) open() error {
	if u.st.Forgotten {
		return NotFound(CodeUserForgotten, "user not found")
	}
	return nil
}

// self allows only the user acting on their own account.
func (u *UserTwoFactor) self(env Env) error {
	if err := u.open(); err != nil {
		return err
	}
	if !env.Actor.actsOnSelf(u.userID) {
		return Forbidden(CodeNotAllowed, "only the user can do this")
	}
	return nil
}

// selfOrAdmin allows the user on their own account, and admins on anyone of the tenant.
func (u *UserTwoFactor) selfOrAdmin(env Env) error {
	if err := u.open(); err != nil {
		return err
	}
	if env.Actor.actsOnSelf(u.userID) || env.Actor.isAdmin() {
		return nil
	}
	return Forbidden(CodeNotAllowed, "not allowed")
}

func (u *UserTwoFactor) admin(env Env) error {
	if err := u.open(); err != nil {
		return err
	}
	if !env.Actor.isAdmin() {
		return Forbidden(CodeNotAllowed, "only an admin can do this")
	}
	return nil
}

// requireFresh enforces the fresh second-factor check before a sensitive change of
// one's own account. Admins acting on another user are exempt (and audited by
// the event metadata). An email code never authorises touching a stronger method.
func (u *UserTwoFactor) requireFresh(env Env) error {
	if env.Actor.ID != u.userID || env.Actor.Kind == ActorSystem {
		return nil
	}
	fresh := func(at time.Time) bool {
		return !at.IsZero() && env.Now.Sub(at) <= env.Policy.FreshVerificationWindow
	}
	for s := u.strongestMethod(); s <= maxStrength; s++ {
		if fresh(u.st.VerifiedAt[s]) {
			return nil
		}
	}
	for s := 0; s < u.strongestMethod(); s++ {
		if fresh(u.st.VerifiedAt[s]) {
			return Forbidden(CodeStrongerMethod, "verify with a stronger method first")
		}
	}
	return Precondition(CodeFreshVerification, "verify a second factor first")
}

func (u *UserTwoFactor) notLocked(env Env) error {
	if u.locked(env.Now) {
		return Locked(u.st.LockedUntil, env.Now)
	}
	return nil
}

// mayStartUsing: a user may switch 2FA on only where allowed, unless it is required of them.
func (u *UserTwoFactor) mayStartUsing(env Env) error {
	if u.st.Enabled {
		return u.requireFresh(env)
	}
	if u.st.Required || u.st.MustReenroll || u.mayToggle(env.Policy) {
		return nil
	}
	return Forbidden(CodeNotAllowed, "two-factor authentication cannot be switched on for this user")
}

func (u *UserTwoFactor) methodUsable(env Env, m Method) error {
	if !u.st.Enabled {
		return Precondition(CodeNotEnrolled, "two-factor authentication is not enabled")
	}
	if !u.hasMethod(m) {
		return Precondition(CodeMethodNotEnrolled, "method is not enrolled")
	}
	if !env.Policy.methodAllowed(m) {
		return Forbidden(CodeMethodDisabled, "method is switched off by the tenant")
	}
	return nil
}

// fail records a failed check and locks when the threshold is reached.
func (u *UserTwoFactor) fail(env Env, failure func(consecutive int) Event) ([]Event, error) {
	n := u.st.ConsecutiveFailures + 1
	events := []Event{failure(n)}
	if n >= env.Policy.LockoutThreshold {
		lockout := u.st.Lockouts + 1
		until := env.Now.Add(env.Policy.lockoutFor(lockout))
		events = append(events, &TwoFactorLocked{Until: until, Lockout: lockout})
		return events, Locked(until, env.Now)
	}
	return events, invalidCode(env.Policy.LockoutThreshold - n)
}

func encodeHashes(hashes [][]byte) []string {
	out := make([]string, len(hashes))
	for i, h := range hashes {
		out[i] = base64.StdEncoding.EncodeToString(h)
	}
	return out
}

func validBackupSet(env Env, hashes [][]byte) error {
	if len(hashes) != env.Policy.BackupCodeCount {
		return Invalid(CodeInvalidArgument, "backup code set has the wrong size")
	}
	seen := make(map[string]bool, len(hashes))
	for _, h := range hashes {
		if len(h) == 0 || seen[string(h)] {
			return Invalid(CodeInvalidArgument, "backup code hashes must be distinct and non-empty")
		}
		seen[string(h)] = true
	}
	return nil
}

// StartTOTPEnrollment records a pending authenticator. With one already confirmed it
// is a replacement, which needs a fresh strong verification.
func (u *UserTwoFactor) StartTOTPEnrollment(env Env, t TOTPParams) ([]Event, error) {
	if err := u.self(env); err != nil {
		return nil, err
	}
	if err := u.mayStartUsing(env); err != nil {
		return nil, err
	}
	if t.SealedSecret == "" {
		return nil, Invalid(CodeInvalidArgument, "secret missing")
	}
	return []Event{&TOTPEnrollmentStarted{
		SealedSecret: t.SealedSecret,
		Algorithm:    t.Algorithm,
		Digits:       t.Digits,
		PeriodSecs:   t.PeriodSecs,
		ExpiresAt:    env.Now.Add(env.Policy.EnrollmentTTL),
		Replacement:  u.st.TOTP != nil,
	}}, nil
}

// ConfirmTOTPEnrollment activates the pending authenticator when the first code
// matched one of matchedSteps. backupHashes is a new set, used when one is due.
func (u *UserTwoFactor) ConfirmTOTPEnrollment(env Env, matchedSteps []int64, backupHashes [][]byte) ([]Event, error) {
	if err := u.self(env); err != nil {
		return nil, err
	}
	if err := u.notLocked(env); err != nil {
		return nil, err
	}
	p := u.st.PendingTOTP
	if p == nil {
		return nil, Precondition(CodeNoPendingEnrollment, "no authenticator enrolment is pending")
	}
	if !env.Now.Before(p.ExpiresAt) {
		return nil, Precondition(CodeEnrollmentExpired, "the enrolment expired; start again")
	}
	if err := validBackupSet(env, backupHashes); err != nil {
		return nil, err
	}
	if len(matchedSteps) == 0 {
		return u.fail(env, func(n int) Event {
			return &TOTPCheckFailed{Purpose: CheckEnrollment, ConsecutiveFailures: n}
		})
	}
	confirmed := &TOTPEnrollmentConfirmed{Step: maxStep(matchedSteps), Replacement: p.Replacement}
	if u.st.SetupAppAtNextLogin && u.st.SwitchedFrom != "" && u.st.SwitchedFrom != MethodTOTP && u.hasMethod(u.st.SwitchedFrom) {
		confirmed.RemovedMethods = []Method{u.st.SwitchedFrom}
	}
	events := []Event{confirmed}
	hashes := encodeHashes(backupHashes)
	switch {
	case !u.st.Enabled:
		events = append(events, &BackupCodesGenerated{Hashes: hashes, Reason: BackupReasonEnabled}, &TwoFactorEnabled{Method: MethodTOTP})
	case p.Replacement:
		events = append(events, &BackupCodesGenerated{Hashes: hashes, Reason: BackupReasonAuthenticatorReplace})
	case u.st.SetupAppAtNextLogin:
		events = append(events, &BackupCodesGenerated{Hashes: hashes, Reason: BackupReasonMethodSwitched})
	}
	return events, nil
}

func maxStep(steps []int64) int64 {
	best := steps[0]
	for _, s := range steps[1:] {
		if s > best {
			best = s
		}
	}
	return best
}

// StartOTPMethodSetup records an email address or phone number awaiting its code.
func (u *UserTwoFactor) StartOTPMethodSetup(env Env, m Method, sealedDestination, sealedCode string) ([]Event, error) {
	if err := u.self(env); err != nil {
		return nil, err
	}
	if m != MethodEmail && m != MethodSMS {
		return nil, Invalid("invalid_method", "only email and sms are set up with a code")
	}
	if !env.Policy.methodAllowed(m) {
		return nil, Forbidden(CodeMethodDisabled, "method is switched off by the tenant")
	}
	if err := u.mayStartUsing(env); err != nil {
		return nil, err
	}
	if s, ok := u.st.Setups[m]; ok {
		if err := cooldown(env, s); err != nil {
			return nil, err
		}
	}
	return []Event{&OTPMethodSetupStarted{
		Method: m, SealedDestination: sealedDestination, SealedCode: sealedCode,
		ExpiresAt: env.Now.Add(env.Policy.OTPLifetime),
	}}, nil
}

func cooldown(env Env, last pendingCode) error {
	next := last.IssuedAt.Add(env.Policy.OTPResendCooldown)
	if env.Now.Before(next) {
		e := Conflict(CodeResendTooSoon, "a code was sent moments ago")
		e.RetryAfterSeconds = int(next.Sub(env.Now).Round(time.Second)/time.Second) + 1
		return e
	}
	return nil
}

// ConfirmOTPMethod adds the method when the code sent to it matched.
func (u *UserTwoFactor) ConfirmOTPMethod(env Env, m Method, matched bool, backupHashes [][]byte) ([]Event, error) {
	if err := u.self(env); err != nil {
		return nil, err
	}
	if m != MethodEmail && m != MethodSMS {
		return nil, Invalid("invalid_method", "only email and sms are set up with a code")
	}
	if err := u.notLocked(env); err != nil {
		return nil, err
	}
	if !env.Policy.methodAllowed(m) {
		return nil, Forbidden(CodeMethodDisabled, "method is switched off by the tenant")
	}
	s, ok := u.st.Setups[m]
	if !ok {
		return nil, Precondition(CodeNoPendingCode, "no set-up is pending for this method")
	}
	if !env.Now.Before(s.ExpiresAt) {
		return nil, Precondition(CodeCodeExpired, "the code expired; request a new one")
	}
	if err := validBackupSet(env, backupHashes); err != nil {
		return nil, err
	}
	if !matched {
		return u.fail(env, func(n int) Event {
			return &OTPCheckFailed{Method: m, Purpose: CheckEnrollment, ConsecutiveFailures: n}
		})
	}
	events := []Event{&OTPMethodConfirmed{Method: m}}
	if !u.st.Enabled {
		events = append(events,
			&BackupCodesGenerated{Hashes: encodeHashes(backupHashes), Reason: BackupReasonEnabled},
			&TwoFactorEnabled{Method: m})
	}
	return events, nil
}

// LoginOptions is what a login needs to know before asking for a second factor.
type LoginOptions struct {
	EnrollmentRequired bool `json:"enrollment_required"`
	// CanDisable: the prompt may offer "Disable 2FA" (DisableTwoFactor by the user).
	CanDisable          bool      `json:"can_disable"`
	Enabled             bool      `json:"enabled"`
	Methods             []Method  `json:"methods"`
	DefaultMethod       Method    `json:"default_method,omitempty"`
	SetupAppAtNextLogin bool      `json:"setup_app_at_next_login"`
	BackupCodesLeft     int       `json:"backup_codes_remaining"`
	LockedUntil         time.Time `json:"locked_until,omitempty"`
	AttemptsRemaining   int       `json:"attempts_remaining"`
}

// LoginOptions lists the usable methods, the default first in line.
func (u *UserTwoFactor) LoginOptions(env Env) (LoginOptions, error) {
	if err := u.self(env); err != nil {
		return LoginOptions{}, err
	}
	now, p := env.Now, env.Policy
	o := LoginOptions{
		// After a switch to the app the login sets it up (QR code, new backup
		// codes): enrolment is required, though 2FA stays on and this login is
		// still verified with the old method where the tenant allows it.
		EnrollmentRequired:  u.mustEnroll() || (u.st.Enabled && u.st.SetupAppAtNextLogin),
		Enabled:             u.st.Enabled,
		Methods:             []Method{},
		SetupAppAtNextLogin: u.st.SetupAppAtNextLogin,
		BackupCodesLeft:     u.backupCodesRemaining(),
		AttemptsRemaining:   u.attemptsRemaining(now, p),
	}
	o.CanDisable = (u.st.Enabled || o.EnrollmentRequired) && p.DisableBy != DisableBySuperAdmins && u.mayToggle(p)
	if !u.st.Enabled {
		return o, nil
	}
	for _, m := range u.methods() {
		if p.methodAllowed(m) {
			o.Methods = append(o.Methods, m)
		}
	}
	if p.methodAllowed(u.st.Default) && u.hasMethod(u.st.Default) {
		o.DefaultMethod = u.st.Default
	} else if len(o.Methods) > 0 {
		o.DefaultMethod = o.Methods[0]
	}
	if u.locked(now) {
		o.LockedUntil = u.st.LockedUntil
	}
	return o, nil
}

// IssueChallenge records a login code to be sent by email or SMS, rate-limited.
func (u *UserTwoFactor) IssueChallenge(env Env, m Method, sealedCode string) ([]Event, error) {
	if err := u.self(env); err != nil {
		return nil, err
	}
	if m != MethodEmail && m != MethodSMS {
		return nil, Invalid("invalid_method", "only email and sms codes are sent")
	}
	if err := u.methodUsable(env, m); err != nil {
		return nil, err
	}
	if err := u.notLocked(env); err != nil {
		return nil, err
	}
	if c, ok := u.st.Challenges[m]; ok {
		if err := cooldown(env, c); err != nil {
			return nil, err
		}
	}
	return []Event{&OTPChallengeIssued{
		Method: m, SealedDestination: u.st.Contacts[m], SealedCode: sealedCode,
		ExpiresAt: env.Now.Add(env.Policy.OTPLifetime),
	}}, nil
}

// VerifyTOTP decides a login with an authenticator code. matchedSteps are the time
// steps (within the allowed skew) whose code equals the one typed. A step at or
// below the last accepted one is a replay and is refused.
func (u *UserTwoFactor) VerifyTOTP(env Env, matchedSteps []int64) ([]Event, error) {
	if err := u.self(env); err != nil {
		return nil, err
	}
	if err := u.notLocked(env); err != nil {
		return nil, err
	}
	if err := u.methodUsable(env, MethodTOTP); err != nil {
		return nil, err
	}
	var fresh []int64
	for _, s := range matchedSteps {
		if s > u.st.TOTP.LastStep {
			fresh = append(fresh, s)
		}
	}
	if len(fresh) == 0 {
		replayed := len(matchedSteps) > 0
		return u.fail(env, func(n int) Event {
			return &TOTPCheckFailed{Purpose: CheckLogin, Replayed: replayed, ConsecutiveFailures: n}
		})
	}
	return []Event{&TOTPVerified{Step: maxStep(fresh)}}, nil
}

// VerifyOTP decides a login with an emailed or texted code; matched is the
// constant-time comparison made by the command layer.
func (u *UserTwoFactor) VerifyOTP(env Env, m Method, matched bool) ([]Event, error) {
	if err := u.self(env); err != nil {
		return nil, err
	}
	if m != MethodEmail && m != MethodSMS {
		return nil, Invalid("invalid_method", "only email and sms codes are sent")
	}
	if err := u.notLocked(env); err != nil {
		return nil, err
	}
	if err := u.methodUsable(env, m); err != nil {
		return nil, err
	}
	c, ok := u.st.Challenges[m]
	if !ok {
		return nil, Precondition(CodeNoPendingCode, "no code was sent; request one")
	}
	if !env.Now.Before(c.ExpiresAt) {
		return nil, Precondition(CodeCodeExpired, "the code expired; request a new one")
	}
	if !matched {
		return u.fail(env, func(n int) Event {
			return &OTPCheckFailed{Method: m, Purpose: CheckLogin, ConsecutiveFailures: n}
		})
	}
	return []Event{&OTPVerified{Method: m}}, nil
}

// ConsumeBackupCode decides a login with a backup code given as its keyed hash.
func (u *UserTwoFactor) ConsumeBackupCode(env Env, hash []byte) ([]Event, error) {
	if err := u.self(env); err != nil {
		return nil, err
	}
	if err := u.notLocked(env); err != nil {
		return nil, err
	}
	if !u.st.Enabled {
		return nil, Precondition(CodeNotEnrolled, "two-factor authentication is not enabled")
	}
	match := -1
	for i, c := range u.st.BackupCodes {
		// Every code is compared, so timing does not reveal the position.
		if len(c.Hash) > 0 && hmac.Equal(c.Hash, hash) && !c.Used && match < 0 {
			match = i
		}
	}
	if match < 0 {
		return u.fail(env, func(n int) Event { return &BackupCodeCheckFailed{ConsecutiveFailures: n} })
	}
	events := []Event{&BackupCodeConsumed{
		Index: match, Remaining: u.backupCodesRemaining() - 1, LowThreshold: env.Policy.LowBackupCodesWarn,
	}}
	if env.Policy.RecoveryCodeDisables {
		events = append(events, &TwoFactorDisabled{Reason: DisabledByRecoveryCode})
	}
	return events, nil
}

// ChangeDefaultMethod picks the method login prompts first.
func (u *UserTwoFactor) ChangeDefaultMethod(env Env, m Method) ([]Event, error) {
	if err := u.selfOrAdmin(env); err != nil {
		return nil, err
	}
	if _, err := ParseMethod(string(m)); err != nil {
		return nil, err
	}
	if err := u.methodUsable(env, m); err != nil {
		return nil, err
	}
	if u.st.Default == m {
		return nil, Precondition(CodeNothingToChange, "already the default method")
	}
	return []Event{&DefaultMethodChanged{Method: m}}, nil
}

// RegenerateBackupCodes replaces the whole set; old codes stop working at once.
// Only the user: whoever regenerates sees the new codes, and an admin holding a
// user's backup codes could log in as them.
func (u *UserTwoFactor) RegenerateBackupCodes(env Env, hashes [][]byte) ([]Event, error) {
	if err := u.self(env); err != nil {
		return nil, err
	}
	if !u.st.Enabled {
		return nil, Precondition(CodeNotEnrolled, "two-factor authentication is not enabled")
	}
	if err := u.requireFresh(env); err != nil {
		return nil, err
	}
	if err := validBackupSet(env, hashes); err != nil {
		return nil, err
	}
	return []Event{&BackupCodesRegenerated{Hashes: encodeHashes(hashes)}}, nil
}

// RemoveMethod removes one of several methods; the last one goes only with a disable.
func (u *UserTwoFactor) RemoveMethod(env Env, m Method) ([]Event, error) {
	if err := u.selfOrAdmin(env); err != nil {
		return nil, err
	}
	if _, err := ParseMethod(string(m)); err != nil {
		return nil, err
	}
	if !u.hasMethod(m) {
		return nil, Precondition(CodeMethodNotEnrolled, "method is not enrolled")
	}
	if len(u.methods()) == 1 {
		return nil, Precondition(CodeLastMethod, "the last method is removed by disabling 2FA")
	}
	if err := u.requireFresh(env); err != nil {
		return nil, err
	}
	return []Event{&MethodRemoved{Method: m}}, nil
}

// DisableTwoFactor switches 2FA off and voids every backup code. For a user it
// means "I do not use 2FA": allowed with "can toggle 2FA" (unless the tenant
// reserves disabling to super admins), and it waives "use 2FA" too, so a
// required user who never enrolled is let in from the enrolment prompt.
func (u *UserTwoFactor) DisableTwoFactor(env Env) ([]Event, error) {
	if err := u.selfOrAdmin(env); err != nil {
		return nil, err
	}
	reason := DisabledByAdmin
	switch {
	case env.Actor.Kind == ActorSuperAdmin:
	case env.Policy.DisableBy == DisableBySuperAdmins:
		return nil, Forbidden(CodeNotAllowed, "only a super admin can disable 2FA in this tenant")
	case env.Actor.Kind == ActorAdmin:
	default:
		reason = DisabledByUser
		if err := u.userMayToggle(env); err != nil {
			return nil, err
		}
	}
	if !u.st.Enabled {
		// At the enrolment prompt there is no factor to verify with yet.
		if reason == DisabledByUser && u.mustEnroll() {
			return []Event{&TwoFactorRequirementChanged{Required: false, ChangedBy: ChangedByUser}}, nil
		}
		return nil, Precondition(CodeNotEnrolled, "two-factor authentication is not enabled")
	}
	if err := u.requireFresh(env); err != nil {
		return nil, err
	}
	events := []Event{&TwoFactorDisabled{Reason: reason}}
	if reason == DisabledByUser && u.st.Required {
		events = append(events, &TwoFactorRequirementChanged{Required: false, ChangedBy: ChangedByUser})
	}
	return events, nil
}

// userMayToggle: "can toggle 2FA" lets a user change "use 2FA" for themself;
// without it only an admin can.
func (u *UserTwoFactor) userMayToggle(env Env) error {
	if u.mayToggle(env.Policy) {
		return nil
	}
	if u.st.Required {
		return Forbidden(CodeRequired, "2FA is required for this user; only an admin can waive it")
	}
	return Forbidden(CodeNotAllowed, "this user cannot switch 2FA on or off")
}

// RequireTwoFactor turns "use 2FA" on or off: an admin for any user, a user
// with "can toggle 2FA" for themself (off only where users may disable).
func (u *UserTwoFactor) RequireTwoFactor(env Env, required bool) ([]Event, error) {
	if err := u.selfOrAdmin(env); err != nil {
		return nil, err
	}
	if env.Actor.isAdmin() {
		if u.st.Required == required {
			return nil, Precondition(CodeNothingToChange, "no change")
		}
		return []Event{&TwoFactorRequirementChanged{Required: required, ChangedBy: ChangedByAdmin}}, nil
	}
	if !required && env.Policy.DisableBy == DisableBySuperAdmins {
		return nil, Forbidden(CodeNotAllowed, "only a super admin can disable 2FA in this tenant")
	}
	if err := u.userMayToggle(env); err != nil {
		return nil, err
	}
	// A pending re-enrolment is part of what the user waives (see Apply).
	if u.st.Required == required && (required || !u.st.MustReenroll) {
		return nil, Precondition(CodeNothingToChange, "no change")
	}
	return []Event{&TwoFactorRequirementChanged{Required: required, ChangedBy: ChangedByUser}}, nil
}

// SetTogglePermission grants or withdraws "can toggle 2FA".
func (u *UserTwoFactor) SetTogglePermission(env Env, canToggle bool) ([]Event, error) {
	if err := u.admin(env); err != nil {
		return nil, err
	}
	if u.st.CanToggle != nil && *u.st.CanToggle == canToggle {
		return nil, Precondition(CodeNothingToChange, "no change")
	}
	return []Event{&TogglePermissionChanged{CanToggle: canToggle}}, nil
}

// SwitchMethod moves the user from their default method to another: to email or
// SMS at once (the app is no longer needed), to the app at the next login.
// sealedDestination is required when the target method has no registered one.
func (u *UserTwoFactor) SwitchMethod(env Env, to Method, sealedDestination string) ([]Event, error) {
	if err := u.selfOrAdmin(env); err != nil {
		return nil, err
	}
	if _, err := ParseMethod(string(to)); err != nil {
		return nil, err
	}
	if to == MethodWebAuthn {
		// A key exists only once its owner registered it; nobody can switch to one.
		return nil, Invalid("invalid_method", "security keys are registered by their owner, not switched to")
	}
	if env.Actor.actsOnSelf(u.userID) && !u.mayToggle(env.Policy) {
		return nil, Forbidden(CodeNotAllowed, "this user cannot switch methods")
	}
	if !u.st.Enabled {
		return nil, Precondition(CodeNotEnrolled, "two-factor authentication is not enabled")
	}
	if !env.Policy.methodAllowed(to) {
		return nil, Forbidden(CodeMethodDisabled, "method is switched off by the tenant")
	}
	from := u.st.Default
	// Switching back to the current method cancels a pending switch to the app.
	cancelsPending := to == from && u.st.SetupAppAtNextLogin
	if (to == from && !cancelsPending) || (to == MethodTOTP && u.hasMethod(MethodTOTP)) {
		return nil, Precondition(CodeNothingToChange, "already using this method")
	}
	if to != MethodTOTP && sealedDestination == "" && !u.hasMethod(to) {
		return nil, Invalid(CodeInvalidArgument, "a destination is needed for this method")
	}
	if err := u.requireFresh(env); err != nil {
		return nil, err
	}
	switched := &MethodSwitched{From: from, To: to, SealedDestination: sealedDestination}
	if to != MethodTOTP {
		for _, m := range u.methods() {
			if m != to {
				switched.RemovedMethods = append(switched.RemovedMethods, m)
			}
		}
	}
	return []Event{switched}, nil
}

// ResetTwoFactor wipes the setup; the user enrols again at the next login. An
// admin cannot reset their own account (the tenant's last admin path could go
// with it); a super admin can.
func (u *UserTwoFactor) ResetTwoFactor(env Env) ([]Event, error) {
	if err := u.admin(env); err != nil {
		return nil, err
	}
	if env.Actor.Kind == ActorAdmin && env.Actor.ID == u.userID {
		return nil, Forbidden(CodeSelfReset, "an admin's own reset needs a super admin")
	}
	if !u.st.Enabled && u.st.PendingTOTP == nil && len(u.st.Setups) == 0 {
		return nil, Precondition(CodeNothingToChange, "nothing to reset")
	}
	return []Event{&TwoFactorReset{}}, nil
}

// Unlock lifts a lockout before it ends.
func (u *UserTwoFactor) Unlock(env Env) ([]Event, error) {
	if err := u.admin(env); err != nil {
		return nil, err
	}
	if !u.locked(env.Now) {
		return nil, Precondition(CodeNotLocked, "the user is not locked")
	}
	return []Event{&TwoFactorUnlocked{}}, nil
}

// ForgetUser closes the stream; the command layer deletes the user's data key.
func (u *UserTwoFactor) ForgetUser(env Env) ([]Event, error) {
	if err := u.admin(env); err != nil {
		return nil, err
	}
	if u.version == 0 {
		return nil, NotFound(CodeUserNotFound, "user not found")
	}
	return []Event{&UserForgotten{}}, nil
}

// SetContactAddress registers where security messages go for a user whose methods
// give no address. Redirecting them is sensitive: a user's own change needs a
// fresh verification once 2FA is on (the message about the change still goes to
// the address registered before it).
func (u *UserTwoFactor) SetContactAddress(env Env, m Method, sealedAddress string) ([]Event, error) {
	if err := u.selfOrAdmin(env); err != nil {
		return nil, err
	}
	if m != MethodEmail && m != MethodSMS {
		return nil, Invalid("invalid_method", "a contact address is an email address or a phone number")
	}
	if _, had := u.st.ContactAddresses[m]; sealedAddress == "" && !had {
		return nil, Precondition(CodeNothingToChange, "no contact address to remove")
	}
	if u.st.Enabled {
		if err := u.requireFresh(env); err != nil {
			return nil, err
		}
	}
	return []Event{&ContactAddressSet{Method: m, SealedAddress: sealedAddress}}, nil
}
