package commands

import (
	"context"
	"time"

	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/eventstore"
)

// StartLoginChallenge asks for a second factor after the host product checked the
// password. For email and SMS it issues a code; Method empty means the default.
type StartLoginChallenge struct {
	TenantID string
	UserID   string
	Method   domain.Method
}

// Challenge tells the login page what to ask for.
type Challenge struct {
	Result
	domain.LoginOptions
	// CodeSentBy is the method a code was just issued for, if any.
	CodeSentBy    domain.Method `json:"code_sent_by,omitempty"`
	CodeExpiresAt time.Time     `json:"code_expires_at,omitempty"`
}

func (s *Service) StartLoginChallenge(ctx context.Context, meta Meta, cmd StartLoginChallenge) (Challenge, error) {
	var ch Challenge
	res, _, err := s.executeUser(ctx, meta, cmd.TenantID, cmd.UserID, func(ctx context.Context, u *domain.UserTwoFactor, env domain.Env) ([]domain.Event, error) {
		opts, err := u.LoginOptions(env)
		if err != nil {
			return nil, err
		}
		ch = Challenge{LoginOptions: opts}
		if !opts.Enabled {
			return nil, nil
		}
		method := cmd.Method
		if method == "" {
			method = opts.DefaultMethod
		}
		if method != domain.MethodEmail && method != domain.MethodSMS {
			return nil, nil
		}
		sealed, err := s.sealNewCode(ctx, cmd.TenantID, cmd.UserID, env.Policy.OTPLength)
		if err != nil {
			return nil, err
		}
		events, err := u.IssueChallenge(env, method, sealed)
		if err == nil {
			ch.CodeSentBy = method
			ch.CodeExpiresAt = env.Now.Add(env.Policy.OTPLifetime)
		}
		return events, err
	})
	ch.Result = res
	return ch, err
}

// VerifyTOTP checks an authenticator code at login.
type VerifyTOTP struct {
	TenantID string
	UserID   string
	Code     string
}

// Verification is the outcome of a successful second-factor check.
type Verification struct {
	Result
	Method               domain.Method `json:"method"`
	BackupCodesRemaining int           `json:"backup_codes_remaining"`
	// TwoFactorDisabled: the tenant's policy switched 2FA off after a recovery code.
	TwoFactorDisabled bool `json:"two_factor_disabled,omitempty"`
}

func verification(res Result, u *domain.UserTwoFactor, m domain.Method, err error) (Verification, error) {
	v := Verification{Result: res, Method: m}
	if u != nil {
		v.BackupCodesRemaining = u.BackupCodesRemaining()
		v.TwoFactorDisabled = !u.Enabled()
	}
	return v, err
}

func (s *Service) VerifyTOTP(ctx context.Context, meta Meta, cmd VerifyTOTP) (Verification, error) {
	res, u, err := s.executeUser(ctx, meta, cmd.TenantID, cmd.UserID, func(ctx context.Context, u *domain.UserTwoFactor, env domain.Env) ([]domain.Event, error) {
		p, ok := u.ActiveTOTP()
		if !ok {
			return u.VerifyTOTP(env, nil)
		}
		steps, err := s.checkTOTP(ctx, u, env, p, cmd.Code)
		if err != nil {
			return nil, err
		}
		return u.VerifyTOTP(env, steps)
	})
	return verification(res, u, domain.MethodTOTP, err)
}

// VerifyOTP checks an emailed or texted login code.
type VerifyOTP struct {
	TenantID string
	UserID   string
	Method   domain.Method
	Code     string
}

func (s *Service) VerifyOTP(ctx context.Context, meta Meta, cmd VerifyOTP) (Verification, error) {
	res, u, err := s.executeUser(ctx, meta, cmd.TenantID, cmd.UserID, func(ctx context.Context, u *domain.UserTwoFactor, env domain.Env) ([]domain.Event, error) {
		if err := domain.ValidateNumericCode(cmd.Code, env.Policy.OTPLength); err != nil {
			return nil, err
		}
		sealed, ok := u.PendingChallengeCode(cmd.Method)
		if !ok {
			return u.VerifyOTP(env, cmd.Method, false)
		}
		matched, err := s.checkSealedCode(ctx, u, env, sealed, cmd.Code)
		if err != nil {
			return nil, err
		}
		return u.VerifyOTP(env, cmd.Method, matched)
	})
	return verification(res, u, cmd.Method, err)
}

// ConsumeBackupCode logs in with a single-use backup code.
type ConsumeBackupCode struct {
	TenantID string
	UserID   string
	Code     string
}

func (s *Service) ConsumeBackupCode(ctx context.Context, meta Meta, cmd ConsumeBackupCode) (Verification, error) {
	code, err := domain.NormaliseBackupCode(cmd.Code)
	if err != nil {
		return Verification{}, err
	}
	res, u, err := s.executeUser(ctx, meta, cmd.TenantID, cmd.UserID, func(ctx context.Context, u *domain.UserTwoFactor, env domain.Env) ([]domain.Event, error) {
		return u.ConsumeBackupCode(env, s.codes.Hash(eventstore.UserStream(cmd.TenantID, cmd.UserID), code))
	})
	return verification(res, u, domain.MethodBackup, err)
}
