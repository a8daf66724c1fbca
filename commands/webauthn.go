package commands

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/go-webauthn/webauthn/protocol"
	"github.com/go-webauthn/webauthn/webauthn"

	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/secrets"
)

// Security keys (WebAuthn). go-webauthn runs the ceremonies' cryptography here
// against the challenge the user's stream holds; the domain decides from the
// outcome. The library's own session expiry reads the wall clock, so it is left
// unset: the domain checks expiry against the injected clock.

// MaxSecurityKeyResponse bounds a browser's answer before it is parsed; real
// ones are a few KiB.
const MaxSecurityKeyResponse = 64 << 10

// challengeBytes: WebAuthn asks for at least 16 random bytes.
const challengeBytes = 32

var b64url = base64.RawURLEncoding

// storedCredential is what a key's SealedCredential holds.
type storedCredential struct {
	ID              []byte   `json:"id"`
	PublicKey       []byte   `json:"public_key"`
	AttestationType string   `json:"attestation_type"`
	Format          string   `json:"format"`
	AAGUID          []byte   `json:"aaguid,omitempty"`
	Transports      []string `json:"transports,omitempty"`
	UserPresent     bool     `json:"user_present"`
	UserVerified    bool     `json:"user_verified"`
	BackupEligible  bool     `json:"backup_eligible"`
	BackupState     bool     `json:"backup_state"`
}

func (c storedCredential) credential(signCount uint32) webauthn.Credential {
	transports := make([]protocol.AuthenticatorTransport, len(c.Transports))
	for i, t := range c.Transports {
		transports[i] = protocol.AuthenticatorTransport(t)
	}
	return webauthn.Credential{
		ID: c.ID, PublicKey: c.PublicKey, AttestationType: c.AttestationType, AttestationFormat: c.Format,
		Transport: transports,
		Flags: webauthn.CredentialFlags{
			UserPresent: c.UserPresent, UserVerified: c.UserVerified, BackupEligible: c.BackupEligible, BackupState: c.BackupState,
		},
		Authenticator: webauthn.Authenticator{AAGUID: c.AAGUID, SignCount: signCount},
	}
}

// keyUser is the user as go-webauthn sees it.
type keyUser struct {
	handle      []byte
	name        string
	credentials []webauthn.Credential
}

func (k keyUser) WebAuthnID() []byte                         { return k.handle }
func (k keyUser) WebAuthnName() string                       { return k.name }
func (k keyUser) WebAuthnDisplayName() string                { return k.name }
func (k keyUser) WebAuthnCredentials() []webauthn.Credential { return k.credentials }

// relyingParty builds the tenant's relying party from its policy.
func relyingParty(p domain.Policy) (*webauthn.WebAuthn, error) {
	return webauthn.New(&webauthn.Config{
		RPID:          p.WebAuthn.RPID,
		RPDisplayName: p.WebAuthn.DisplayName(p.IssuerName),
		RPOrigins:     p.WebAuthn.Origins,
		// "none": the service trusts a key by its owner's fresh verification,
		// not by a vendor certificate, and asks browsers for no identifying data.
		AttestationPreference: protocol.PreferNoAttestation,
	})
}

func uvRequirement(uv string) protocol.UserVerificationRequirement {
	if uv == domain.UserVerificationRequired {
		return protocol.VerificationRequired
	}
	return protocol.VerificationPreferred
}

// openKeys unseals the user's credentials, in the order of u.SecurityKeys().
func (s *Service) openKeys(ctx context.Context, u *domain.UserTwoFactor) ([]domain.SecurityKey, []storedCredential, error) {
	keys := u.SecurityKeys()
	creds := make([]storedCredential, len(keys))
	for i, k := range keys {
		raw, err := s.open(ctx, u.TenantID(), u.UserID(), secrets.PurposeSecurityKey, k.SealedCredential)
		if err != nil {
			return nil, nil, err
		}
		if err := json.Unmarshal(raw, &creds[i]); err != nil {
			return nil, nil, err
		}
	}
	return keys, creds, nil
}

func (s *Service) newChallenge() (string, error) {
	b := make([]byte, challengeBytes)
	if err := s.readRandom(b); err != nil {
		return "", err
	}
	return b64url.EncodeToString(b), nil
}

// StartSecurityKeyRegistration opens a registration: the options go to the
// browser's navigator.credentials.create().
type StartSecurityKeyRegistration struct {
	TenantID string
	UserID   string
	// AccountName is what the authenticator shows for the account (the user id when empty).
	AccountName string
}

// SecurityKeyOptions are WebAuthn options for the browser ({"publicKey": …}).
type SecurityKeyOptions struct {
	Result
	Options   json.RawMessage `json:"options"`
	ExpiresAt time.Time       `json:"expires_at"`
}

func (s *Service) StartSecurityKeyRegistration(ctx context.Context, meta Meta, cmd StartSecurityKeyRegistration) (SecurityKeyOptions, error) {
	// The account name is in no event, but an authenticator may store it.
	if err := domain.CheckText("account_name", cmd.AccountName); err != nil {
		return SecurityKeyOptions{}, err
	}
	if len(cmd.AccountName) > 200 {
		return SecurityKeyOptions{}, domain.Invalid(domain.CodeInvalidArgument, "account_name must be at most 200 bytes")
	}
	var out SecurityKeyOptions
	res, _, err := s.executeUser(ctx, meta, cmd.TenantID, cmd.UserID, func(ctx context.Context, u *domain.UserTwoFactor, env domain.Env) ([]domain.Event, error) {
		challenge, err := s.newChallenge()
		if err != nil {
			return nil, err
		}
		handle := make([]byte, 32)
		if err := s.readRandom(handle); err != nil {
			return nil, err
		}
		events, err := u.StartSecurityKeyRegistration(env, challenge, b64url.EncodeToString(handle))
		if err != nil {
			return events, err
		}
		started := events[0].(*domain.SecurityKeyRegistrationStarted)
		userHandle, err := b64url.DecodeString(started.UserHandle)
		if err != nil {
			return nil, err
		}
		_, creds, err := s.openKeys(ctx, u)
		if err != nil {
			return nil, err
		}
		exclude := make([]protocol.CredentialDescriptor, len(creds))
		for i, c := range creds {
			cred := c.credential(0)
			exclude[i] = cred.Descriptor()
		}
		account := cmd.AccountName
		if account == "" {
			account = cmd.UserID
		}
		rp, err := relyingParty(env.Policy)
		if err != nil {
			return nil, err
		}
		raw, _ := b64url.DecodeString(challenge)
		creation, _, err := rp.BeginRegistration(keyUser{handle: userHandle, name: account},
			webauthn.WithExclusions(exclude),
			webauthn.WithAuthenticatorSelection(protocol.AuthenticatorSelection{
				ResidentKey: protocol.ResidentKeyRequirementDiscouraged, UserVerification: uvRequirement(started.UserVerification),
			}),
			func(o *protocol.PublicKeyCredentialCreationOptions) error {
				o.Challenge = raw
				o.Timeout = int(started.ExpiresAt.Sub(env.Now) / time.Millisecond)
				return nil
			})
		if err != nil {
			return nil, err
		}
		if out.Options, err = json.Marshal(creation); err != nil {
			return nil, err
		}
		out.ExpiresAt = started.ExpiresAt
		return events, nil
	})
	out.Result = res
	return out, err
}

// FinishSecurityKeyRegistration adds the key whose attestation (the JSON of the
// browser's PublicKeyCredential) answers the pending registration.
type FinishSecurityKeyRegistration struct {
	TenantID string
	UserID   string
	// Name is what the user calls the key ("YubiKey on my keyring").
	Name     string
	Response []byte
}

// SecurityKeyAdded carries the new key's id and, when the key switched 2FA on,
// the backup codes, shown exactly once.
type SecurityKeyAdded struct {
	Activation
	KeyID string `json:"key_id"`
}

// ValidateKeyName: 1–64 bytes of text, no control characters.
func ValidateKeyName(name string) (string, error) {
	name = strings.TrimSpace(name)
	if err := domain.CheckText("name", name); err != nil {
		return "", err
	}
	if name == "" || len(name) > 64 || !utf8.ValidString(name) {
		e := domain.Invalid(domain.CodeInvalidArgument, "name must be 1-64 bytes")
		e.Field = "name"
		return "", e
	}
	return name, nil
}

func invalidKeyResponse() error {
	return domain.Invalid(domain.CodeInvalidSecurityKeyData, "the security key's answer is malformed")
}

func (s *Service) FinishSecurityKeyRegistration(ctx context.Context, meta Meta, cmd FinishSecurityKeyRegistration) (SecurityKeyAdded, error) {
	name, err := ValidateKeyName(cmd.Name)
	if err != nil {
		return SecurityKeyAdded{}, err
	}
	if len(cmd.Response) == 0 || len(cmd.Response) > MaxSecurityKeyResponse {
		return SecurityKeyAdded{}, invalidKeyResponse()
	}
	var codes []string
	var keyID string
	res, _, err := s.executeUser(ctx, meta, cmd.TenantID, cmd.UserID, func(ctx context.Context, u *domain.UserTwoFactor, env domain.Env) ([]domain.Event, error) {
		pending, ok := u.PendingKeyRegistration()
		if !ok || !env.Now.Before(pending.ExpiresAt) || env.Policy.WebAuthn.RPID == "" {
			// The domain says why (nothing pending, expired, no relying party
			// any more) before any crypto.
			return u.RegisterSecurityKey(env, domain.KeyRegistration{Challenge: pending.Challenge}, nil)
		}
		// Parsed once an answer is awaited: a user nobody has seen answers as
		// unknown, not as a bad request (another tenant's key learns nothing).
		parsed, err := protocol.ParseCredentialCreationResponseBytes(cmd.Response)
		if err != nil {
			return nil, invalidKeyResponse()
		}
		handle, err := b64url.DecodeString(pending.UserHandle)
		if err != nil {
			return nil, err
		}
		rp, err := relyingParty(env.Policy)
		if err != nil {
			return nil, err
		}
		session := webauthn.SessionData{
			Challenge: pending.Challenge, RelyingPartyID: env.Policy.WebAuthn.RPID, UserID: handle,
			// Preferred here: the domain decides on the UV flag with the policy
			// (user_verification_required rather than a bad answer).
			UserVerification: protocol.VerificationPreferred, CredParams: webauthn.CredentialParametersDefault(),
		}
		cred, err := rp.CreateCredential(keyUser{handle: handle, name: cmd.UserID}, session, parsed)
		if err != nil {
			e := domain.Invalid(domain.CodeInvalidSecurityKeyData, "the security key's answer did not verify (origin, challenge, relying party or signature)")
			return nil, e
		}
		_, creds, err := s.openKeys(ctx, u)
		if err != nil {
			return nil, err
		}
		already := false
		for _, c := range creds {
			already = already || bytes.Equal(c.ID, cred.ID)
		}
		stored, err := json.Marshal(storedCredential{
			ID: cred.ID, PublicKey: cred.PublicKey, AttestationType: cred.AttestationType, Format: cred.AttestationFormat,
			AAGUID: cred.Authenticator.AAGUID, Transports: transportNames(cred.Transport),
			UserPresent: cred.Flags.UserPresent, UserVerified: cred.Flags.UserVerified,
			BackupEligible: cred.Flags.BackupEligible, BackupState: cred.Flags.BackupState,
		})
		if err != nil {
			return nil, err
		}
		sealedCred, err := s.vault.Seal(ctx, cmd.TenantID, cmd.UserID, secrets.PurposeSecurityKey, stored)
		if err != nil {
			return nil, err
		}
		sealedName, err := s.vault.Seal(ctx, cmd.TenantID, cmd.UserID, secrets.PurposeSecurityKeyName, []byte(name))
		if err != nil {
			return nil, err
		}
		id := make([]byte, 16)
		if err := s.readRandom(id); err != nil {
			return nil, err
		}
		keyID = b64url.EncodeToString(id)
		var hashes [][]byte
		if !u.Enabled() {
			if codes, hashes, err = s.newBackupCodes(cmd.TenantID, cmd.UserID, env.Policy.BackupCodeCount); err != nil {
				return nil, err
			}
		}
		return u.RegisterSecurityKey(env, domain.KeyRegistration{
			Challenge: pending.Challenge, KeyID: keyID, SealedName: sealedName, SealedCredential: sealedCred,
			SignCount: cred.Authenticator.SignCount, UserVerified: cred.Flags.UserVerified, Format: cred.AttestationFormat,
			AlreadyRegistered: already,
		}, hashes)
	})
	if err != nil {
		return SecurityKeyAdded{Activation: Activation{Result: res}}, err
	}
	return SecurityKeyAdded{Activation: activation(res, codes), KeyID: keyID}, nil
}

func transportNames(ts []protocol.AuthenticatorTransport) []string {
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = string(t)
	}
	return out
}

// StartSecurityKeyLogin issues login options for the user's keys: the options
// go to the browser's navigator.credentials.get().
type StartSecurityKeyLogin struct {
	TenantID string
	UserID   string
}

func (s *Service) StartSecurityKeyLogin(ctx context.Context, meta Meta, cmd StartSecurityKeyLogin) (SecurityKeyOptions, error) {
	var out SecurityKeyOptions
	res, _, err := s.executeUser(ctx, meta, cmd.TenantID, cmd.UserID, func(ctx context.Context, u *domain.UserTwoFactor, env domain.Env) ([]domain.Event, error) {
		challenge, err := s.newChallenge()
		if err != nil {
			return nil, err
		}
		events, err := u.IssueSecurityKeyChallenge(env, challenge)
		if err != nil {
			return events, err
		}
		issued := events[0].(*domain.SecurityKeyChallengeIssued)
		_, creds, err := s.openKeys(ctx, u)
		if err != nil {
			return nil, err
		}
		allow := make([]protocol.CredentialDescriptor, len(creds))
		for i, c := range creds {
			cred := c.credential(0)
			allow[i] = cred.Descriptor()
		}
		rp, err := relyingParty(env.Policy)
		if err != nil {
			return nil, err
		}
		raw, _ := b64url.DecodeString(challenge)
		handle, err := b64url.DecodeString(u.WebAuthnUserHandle())
		if err != nil {
			return nil, err
		}
		assertion, _, err := rp.BeginLogin(keyUser{handle: handle, name: cmd.UserID, credentials: credentialsOf(creds, nil)},
			webauthn.WithAllowedCredentials(allow),
			webauthn.WithUserVerification(uvRequirement(issued.UserVerification)),
			func(o *protocol.PublicKeyCredentialRequestOptions) error {
				o.Challenge = raw
				o.Timeout = int(issued.ExpiresAt.Sub(env.Now) / time.Millisecond)
				return nil
			})
		if err != nil {
			return nil, err
		}
		if out.Options, err = json.Marshal(assertion); err != nil {
			return nil, err
		}
		out.ExpiresAt = issued.ExpiresAt
		return events, nil
	})
	out.Result = res
	return out, err
}

func credentialsOf(creds []storedCredential, keys []domain.SecurityKey) []webauthn.Credential {
	out := make([]webauthn.Credential, len(creds))
	for i, c := range creds {
		var count uint32
		if keys != nil {
			count = keys[i].SignCount
		}
		out[i] = c.credential(count)
	}
	return out
}

// VerifySecurityKey checks an assertion (the JSON of the browser's
// PublicKeyCredential) against the pending login challenge.
type VerifySecurityKey struct {
	TenantID string
	UserID   string
	Response []byte
}

func (s *Service) VerifySecurityKey(ctx context.Context, meta Meta, cmd VerifySecurityKey) (Verification, error) {
	if len(cmd.Response) == 0 || len(cmd.Response) > MaxSecurityKeyResponse {
		return Verification{}, invalidKeyResponse()
	}
	res, u, err := s.executeUser(ctx, meta, cmd.TenantID, cmd.UserID, func(ctx context.Context, u *domain.UserTwoFactor, env domain.Env) ([]domain.Event, error) {
		pending, ok := u.PendingKeyChallenge()
		if !ok || !env.Now.Before(pending.ExpiresAt) || env.Policy.WebAuthn.RPID == "" {
			return u.VerifySecurityKey(env, domain.KeyAssertion{Challenge: pending.Challenge})
		}
		// Parsed once an answer is awaited (see FinishSecurityKeyRegistration).
		parsed, err := protocol.ParseCredentialRequestResponseBytes(cmd.Response)
		if err != nil {
			return nil, invalidKeyResponse()
		}
		keys, creds, err := s.openKeys(ctx, u)
		if err != nil {
			return nil, err
		}
		a := domain.KeyAssertion{Challenge: pending.Challenge}
		for i, c := range creds {
			if bytes.Equal(c.ID, parsed.RawID) {
				a.KeyID = keys[i].ID
			}
		}
		if a.KeyID == "" {
			return u.VerifySecurityKey(env, a)
		}
		rp, err := relyingParty(env.Policy)
		if err != nil {
			return nil, err
		}
		handle, err := b64url.DecodeString(pending.UserHandle)
		if err != nil {
			return nil, err
		}
		session := webauthn.SessionData{
			Challenge: pending.Challenge, RelyingPartyID: env.Policy.WebAuthn.RPID, UserID: handle,
			AllowedCredentialIDs: idsOf(creds),
			// Preferred here: the domain decides on the UV flag with the policy.
			UserVerification: protocol.VerificationPreferred,
		}
		user := keyUser{handle: handle, name: cmd.UserID, credentials: credentialsOf(creds, keys)}
		if _, err := rp.ValidateLogin(user, session, parsed); err == nil {
			a.Valid = true
			a.SignCount = parsed.Response.AuthenticatorData.Counter
			a.UserVerified = parsed.Response.AuthenticatorData.Flags.HasUserVerified()
		}
		return u.VerifySecurityKey(env, a)
	})
	return verification(res, u, domain.MethodWebAuthn, err)
}

func idsOf(creds []storedCredential) [][]byte {
	out := make([][]byte, len(creds))
	for i, c := range creds {
		out[i] = c.ID
	}
	return out
}

// RemoveSecurityKey removes one of the user's keys.
type RemoveSecurityKey struct {
	TenantID string
	UserID   string
	KeyID    string
}

func (s *Service) RemoveSecurityKey(ctx context.Context, meta Meta, cmd RemoveSecurityKey) (Result, error) {
	return s.decideUser(ctx, meta, cmd.TenantID, cmd.UserID, func(u *domain.UserTwoFactor, env domain.Env) ([]domain.Event, error) {
		return u.RemoveSecurityKey(env, cmd.KeyID)
	})
}

// ListSecurityKeys shows a user's keys with their names.
type ListSecurityKeys struct {
	TenantID string
	UserID   string
}

// SecurityKeyInfo is one key as the API shows it: never its credential.
type SecurityKeyInfo struct {
	KeyID          string     `json:"key_id"`
	Name           string     `json:"name"`
	RegisteredAt   time.Time  `json:"registered_at"`
	LastUsedAt     *time.Time `json:"last_used_at,omitempty"`
	CloneSuspected bool       `json:"clone_suspected"`
}

func (s *Service) ListSecurityKeys(ctx context.Context, meta Meta, q ListSecurityKeys) ([]SecurityKeyInfo, error) {
	if err := validateTarget(meta, q.TenantID, q.UserID); err != nil {
		return nil, err
	}
	policy, u, _, _, key, err := s.loadForCommand(ctx, q.TenantID, q.UserID)
	if err != nil {
		return nil, err
	}
	keys, err := u.ListSecurityKeys(domain.Env{Now: s.clock(), Actor: meta.Actor, Policy: policy})
	if err != nil {
		return nil, err
	}
	kctx := context.WithValue(ctx, keyLookupKey{}, key)
	out := make([]SecurityKeyInfo, 0, len(keys))
	for _, k := range keys {
		name, err := s.open(kctx, q.TenantID, q.UserID, secrets.PurposeSecurityKeyName, k.SealedName)
		if err != nil {
			return nil, err
		}
		info := SecurityKeyInfo{KeyID: k.ID, Name: string(name), RegisteredAt: k.RegisteredAt, CloneSuspected: k.CloneSuspected}
		if !k.LastUsedAt.IsZero() {
			t := k.LastUsedAt
			info.LastUsedAt = &t
		}
		out = append(out, info)
	}
	return out, nil
}
