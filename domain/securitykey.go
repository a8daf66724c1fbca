package domain

import (
	"crypto/subtle"
	"time"
)

// Security keys (WebAuthn). The command layer runs the ceremonies' cryptography
// (go-webauthn) against the challenge this aggregate holds and hands the
// outcome here; the aggregate decides whether the challenge is still open, what
// the counter says and whether the tenant's rules are met.

// securityKey is one registered credential.
type securityKey struct {
	ID               string    `json:"id"`
	SealedName       string    `json:"sealed_name"`
	SealedCredential string    `json:"sealed_credential"`
	SignCount        uint32    `json:"sign_count,omitempty"`
	RegisteredAt     time.Time `json:"registered_at"`
	LastUsedAt       time.Time `json:"last_used_at"`
	// CloneSuspected stays set once a counter went back.
	CloneSuspected bool `json:"clone_suspected,omitempty"`
}

// keyCeremony is an open registration or login challenge.
type keyCeremony struct {
	Challenge        string    `json:"challenge"`
	UserVerification string    `json:"user_verification"`
	ExpiresAt        time.Time `json:"expires_at"`
}

// KeyCeremony is what the command layer needs to verify a response to a challenge.
type KeyCeremony struct {
	Challenge string
	// UserVerification is what the options asked for (UserVerification*).
	UserVerification string
	ExpiresAt        time.Time
	// UserHandle is the user's WebAuthn user id.
	UserHandle string
}

// SecurityKey is a registered key as the command layer sees it.
type SecurityKey struct {
	ID               string
	SealedName       string
	SealedCredential string
	SignCount        uint32
	RegisteredAt     time.Time
	LastUsedAt       time.Time
	CloneSuspected   bool
}

// WebAuthnUserHandle is the user's WebAuthn user id, "" before the first registration.
func (u *UserTwoFactor) WebAuthnUserHandle() string { return u.st.WebAuthnUserHandle }

// SecurityKeys lists the registered keys in registration order.
func (u *UserTwoFactor) SecurityKeys() []SecurityKey {
	out := make([]SecurityKey, 0, len(u.st.SecurityKeys))
	for _, k := range u.st.SecurityKeys {
		out = append(out, SecurityKey{
			ID: k.ID, SealedName: k.SealedName, SealedCredential: k.SealedCredential, SignCount: k.SignCount,
			RegisteredAt: k.RegisteredAt, LastUsedAt: k.LastUsedAt, CloneSuspected: k.CloneSuspected,
		})
	}
	return out
}

// ListSecurityKeys shows the keys to the user or an admin of the tenant.
func (u *UserTwoFactor) ListSecurityKeys(env Env) ([]SecurityKey, error) {
	if err := u.selfOrAdmin(env); err != nil {
		return nil, err
	}
	if u.version == 0 {
		// Listing must not tell a user nobody has seen from one without keys.
		return nil, NotFound(CodeUserNotFound, "user not found")
	}
	return u.SecurityKeys(), nil
}

// PendingKeyRegistration returns the open registration ceremony, if any.
func (u *UserTwoFactor) PendingKeyRegistration() (KeyCeremony, bool) {
	return u.st.PendingKeyRegistration.view(u.st.WebAuthnUserHandle)
}

// PendingKeyChallenge returns the open login ceremony, if any.
func (u *UserTwoFactor) PendingKeyChallenge() (KeyCeremony, bool) {
	return u.st.KeyChallenge.view(u.st.WebAuthnUserHandle)
}

func (c *keyCeremony) view(handle string) (KeyCeremony, bool) {
	if c == nil {
		return KeyCeremony{}, false
	}
	return KeyCeremony{Challenge: c.Challenge, UserVerification: c.UserVerification, ExpiresAt: c.ExpiresAt, UserHandle: handle}, true
}

func (u *UserTwoFactor) key(id string) (int, bool) {
	for i, k := range u.st.SecurityKeys {
		if k.ID == id {
			return i, true
		}
	}
	return -1, false
}

// applySecurityKey folds the security-key events; false for any other event.
func (u *UserTwoFactor) applySecurityKey(e Event, at time.Time) bool {
	switch e := e.(type) {
	case *SecurityKeyRegistrationStarted:
		u.st.WebAuthnUserHandle = e.UserHandle
		u.st.PendingKeyRegistration = &keyCeremony{Challenge: e.Challenge, UserVerification: e.UserVerification, ExpiresAt: e.ExpiresAt}
	case *SecurityKeyRegistered:
		u.st.PendingKeyRegistration = nil
		u.st.SecurityKeys = append(u.st.SecurityKeys, securityKey{
			ID: e.KeyID, SealedName: e.SealedName, SealedCredential: e.SealedCredential,
			SignCount: e.SignCount, RegisteredAt: at,
		})
		u.st.MustReenroll = false
		if u.st.Default == "" {
			u.st.Default = MethodWebAuthn
		}
		// The attestation proved possession of the key just now.
		u.verified(MethodWebAuthn, at)
	case *SecurityKeyChallengeIssued:
		u.st.KeyChallenge = &keyCeremony{Challenge: e.Challenge, UserVerification: e.UserVerification, ExpiresAt: e.ExpiresAt}
	case *SecurityKeyUsed:
		u.st.KeyChallenge = nil
		if i, ok := u.key(e.KeyID); ok {
			k := &u.st.SecurityKeys[i]
			// The highest counter seen: a clone still behind it keeps being caught.
			k.SignCount = max(k.SignCount, e.SignCount)
			k.LastUsedAt = at
		}
		u.verified(MethodWebAuthn, at)
	case *SecurityKeyAssertionFailed:
		u.st.KeyChallenge = nil
		u.st.ConsecutiveFailures++
	case *SecurityKeyCloneSuspected:
		if e.Refused {
			u.st.KeyChallenge = nil
		}
		if i, ok := u.key(e.KeyID); ok {
			u.st.SecurityKeys[i].CloneSuspected = true
		}
	case *SecurityKeyRemoved:
		if i, ok := u.key(e.KeyID); ok {
			u.st.SecurityKeys = append(u.st.SecurityKeys[:i:i], u.st.SecurityKeys[i+1:]...)
		}
		if len(u.st.SecurityKeys) == 0 {
			u.removeMethod(MethodWebAuthn)
		}
	default:
		return false
	}
	return true
}

// StartSecurityKeyRegistration opens a registration ceremony. challenge is the
// base64url of fresh random bytes; newHandle is a fresh random user handle,
// used only when the user has none yet. Adding a key to an account with 2FA on
// needs a fresh verification, like any new method.
func (u *UserTwoFactor) StartSecurityKeyRegistration(env Env, challenge, newHandle string) ([]Event, error) {
	if err := u.self(env); err != nil {
		return nil, err
	}
	if !env.Policy.methodAllowed(MethodWebAuthn) {
		return nil, Forbidden(CodeMethodDisabled, "security keys are not set up for this tenant")
	}
	if err := u.mayStartUsing(env); err != nil {
		return nil, err
	}
	if len(u.st.SecurityKeys) >= MaxSecurityKeys {
		return nil, Precondition(CodeTooManySecurityKeys, "remove a security key before adding another")
	}
	if challenge == "" || newHandle == "" {
		return nil, Invalid(CodeInvalidArgument, "challenge or user handle missing")
	}
	handle := u.st.WebAuthnUserHandle
	if handle == "" {
		handle = newHandle
	}
	return []Event{&SecurityKeyRegistrationStarted{
		Challenge: challenge, UserHandle: handle, UserVerification: uvOf(env.Policy),
		ExpiresAt: env.Now.Add(env.Policy.WebAuthn.challengeTTL()),
	}}, nil
}

func uvOf(p Policy) string {
	if p.WebAuthn.RequiresUserVerification() {
		return UserVerificationRequired
	}
	return UserVerificationPreferred
}

// KeyRegistration is the outcome of a verified attestation.
type KeyRegistration struct {
	// Challenge is the one the attestation was verified against.
	Challenge        string
	KeyID            string
	SealedName       string
	SealedCredential string
	SignCount        uint32
	UserVerified     bool
	Format           string
	// AlreadyRegistered: the credential id is one of the user's keys already.
	AlreadyRegistered bool
}

// RegisterSecurityKey adds the key whose attestation answered the pending
// challenge. The first method of an account switches 2FA on with a backup set.
func (u *UserTwoFactor) RegisterSecurityKey(env Env, r KeyRegistration, backupHashes [][]byte) ([]Event, error) {
	if err := u.self(env); err != nil {
		return nil, err
	}
	if !env.Policy.methodAllowed(MethodWebAuthn) {
		return nil, Forbidden(CodeMethodDisabled, "security keys are not set up for this tenant")
	}
	p := u.st.PendingKeyRegistration
	if p == nil || !sameChallenge(p.Challenge, r.Challenge) {
		return nil, Precondition(CodeNoPendingChallenge, "no security key registration is pending; start again")
	}
	if !env.Now.Before(p.ExpiresAt) {
		return nil, Precondition(CodeChallengeExpired, "the registration expired; start again")
	}
	switch {
	case r.AlreadyRegistered:
		return nil, Conflict(CodeSecurityKeyExists, "this security key is registered already")
	case p.UserVerification == UserVerificationRequired && !r.UserVerified:
		return nil, Invalid(CodeUserVerificationRequired, "the security key must verify the user (PIN or biometric)")
	case len(u.st.SecurityKeys) >= MaxSecurityKeys:
		return nil, Precondition(CodeTooManySecurityKeys, "remove a security key before adding another")
	case r.KeyID == "" || r.SealedCredential == "" || r.SealedName == "":
		return nil, Invalid(CodeInvalidArgument, "key id, name or credential missing")
	}
	if _, dup := u.key(r.KeyID); dup {
		return nil, Conflict(CodeSecurityKeyExists, "key id in use")
	}
	if err := validBackupSet(env, backupHashes); err != nil && !u.st.Enabled {
		return nil, err
	}
	events := []Event{&SecurityKeyRegistered{
		KeyID: r.KeyID, SealedName: r.SealedName, SealedCredential: r.SealedCredential,
		SignCount: r.SignCount, UserVerified: r.UserVerified, AttestationFormat: r.Format,
	}}
	if !u.st.Enabled {
		events = append(events,
			&BackupCodesGenerated{Hashes: encodeHashes(backupHashes), Reason: BackupReasonEnabled},
			&TwoFactorEnabled{Method: MethodWebAuthn})
	}
	return events, nil
}

// IssueSecurityKeyChallenge opens a login ceremony; a newer one replaces an
// older one, so only the latest options can be answered.
func (u *UserTwoFactor) IssueSecurityKeyChallenge(env Env, challenge string) ([]Event, error) {
	if err := u.self(env); err != nil {
		return nil, err
	}
	if err := u.methodUsable(env, MethodWebAuthn); err != nil {
		return nil, err
	}
	if err := u.notLocked(env); err != nil {
		return nil, err
	}
	if challenge == "" {
		return nil, Invalid(CodeInvalidArgument, "challenge missing")
	}
	return []Event{&SecurityKeyChallengeIssued{
		Challenge: challenge, UserVerification: uvOf(env.Policy),
		ExpiresAt: env.Now.Add(env.Policy.WebAuthn.challengeTTL()),
	}}, nil
}

// KeyAssertion is the outcome of checking an assertion against the pending challenge.
type KeyAssertion struct {
	// Challenge is the one the assertion was checked against.
	Challenge string
	// KeyID is the registered key the assertion named, "" when none matched.
	KeyID string
	// Valid: signature, challenge, origin, rp id and flags verified.
	Valid        bool
	SignCount    uint32
	UserVerified bool
}

// VerifySecurityKey decides a login with a security key. The challenge is
// spent by the first answer, right or wrong: a replayed or concurrent second
// answer finds none open.
func (u *UserTwoFactor) VerifySecurityKey(env Env, a KeyAssertion) ([]Event, error) {
	if err := u.self(env); err != nil {
		return nil, err
	}
	if err := u.notLocked(env); err != nil {
		return nil, err
	}
	if err := u.methodUsable(env, MethodWebAuthn); err != nil {
		return nil, err
	}
	c := u.st.KeyChallenge
	if c == nil || !sameChallenge(c.Challenge, a.Challenge) {
		return nil, Precondition(CodeNoPendingChallenge, "no security key challenge is open; request one")
	}
	if !env.Now.Before(c.ExpiresAt) {
		return nil, Precondition(CodeChallengeExpired, "the challenge expired; request a new one")
	}
	i, known := u.key(a.KeyID)
	failed := func(keyID, reason string) ([]Event, error) {
		return u.fail(env, func(n int) Event {
			return &SecurityKeyAssertionFailed{KeyID: keyID, Reason: reason, ConsecutiveFailures: n}
		})
	}
	switch {
	case !known:
		return failed("", AssertionUnknownKey)
	case !a.Valid:
		return failed(a.KeyID, AssertionInvalid)
	case c.UserVerification == UserVerificationRequired && !a.UserVerified:
		return failed(a.KeyID, AssertionUserNotVerified)
	}
	stored := u.st.SecurityKeys[i].SignCount
	// A key that counts never repeats or goes back; both zero means it does not count.
	if (a.SignCount != 0 || stored != 0) && a.SignCount <= stored {
		refuse := !env.Policy.WebAuthn.AllowClonedKeys
		clone := &SecurityKeyCloneSuspected{KeyID: a.KeyID, StoredCount: stored, ReceivedCount: a.SignCount, Refused: refuse}
		if refuse {
			return []Event{clone}, Forbidden(CodeSecurityKeyCloned, "this security key may have been cloned; use another method")
		}
		return []Event{clone, &SecurityKeyUsed{KeyID: a.KeyID, SignCount: a.SignCount, UserVerified: a.UserVerified}}, nil
	}
	return []Event{&SecurityKeyUsed{KeyID: a.KeyID, SignCount: a.SignCount, UserVerified: a.UserVerified}}, nil
}

// RemoveSecurityKey removes one key. The last key of a user whose only method
// it is goes only with a disable; a user's own removal needs a fresh
// verification with a method as strong as the key (an email code alone never does).
func (u *UserTwoFactor) RemoveSecurityKey(env Env, keyID string) ([]Event, error) {
	if err := u.selfOrAdmin(env); err != nil {
		return nil, err
	}
	if _, ok := u.key(keyID); !ok {
		return nil, NotFound(CodeSecurityKeyNotFound, "no such security key")
	}
	remaining := len(u.st.SecurityKeys) - 1
	if remaining == 0 && len(u.methods()) == 1 {
		return nil, Precondition(CodeLastMethod, "the last method is removed by disabling 2FA")
	}
	if err := u.requireFresh(env); err != nil {
		return nil, err
	}
	return []Event{&SecurityKeyRemoved{KeyID: keyID, Remaining: remaining}}, nil
}

func sameChallenge(a, b string) bool {
	return a != "" && subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}
