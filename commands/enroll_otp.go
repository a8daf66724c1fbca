package commands

import (
	"context"
	"net/mail"
	"regexp"
	"strings"
	"time"

	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/secrets"
)

// StartOTPMethodSetup registers an email address or phone number and sends it a
// confirmation code.
type StartOTPMethodSetup struct {
	TenantID    string
	UserID      string
	Method      domain.Method
	Destination string
}

// CodeSent says where a code went and until when it works.
type CodeSent struct {
	Result
	Method    domain.Method `json:"method"`
	ExpiresAt time.Time     `json:"expires_at"`
}

var e164 = regexp.MustCompile(`^\+[1-9][0-9]{6,14}$`)

// destinationPurpose validates an address or number (the input named field)
// and names what seals it.
func destinationPurpose(field string, m domain.Method, destination string) (secrets.Purpose, string, error) {
	if err := domain.CheckText(field, destination); err != nil {
		return "", "", err
	}
	switch m {
	case domain.MethodEmail:
		addr, err := mail.ParseAddress(destination)
		if err != nil || addr.Name != "" || addr.Address != destination || len(destination) > 254 {
			return "", "", domain.Invalid("invalid_email", "a plain email address is needed")
		}
		return secrets.PurposeEmail, strings.ToLower(destination), nil
	case domain.MethodSMS:
		if !e164.MatchString(destination) {
			return "", "", domain.Invalid("invalid_phone", "a phone number in E.164 form (+14155550123) is needed")
		}
		return secrets.PurposePhone, destination, nil
	}
	return "", "", domain.Invalid("invalid_method", "only email and sms have a destination")
}

func (s *Service) StartOTPMethodSetup(ctx context.Context, meta Meta, cmd StartOTPMethodSetup) (CodeSent, error) {
	purpose, destination, err := destinationPurpose("destination", cmd.Method, cmd.Destination)
	if err != nil {
		return CodeSent{}, err
	}
	var expires time.Time
	res, _, err := s.executeUser(ctx, meta, cmd.TenantID, cmd.UserID, func(ctx context.Context, u *domain.UserTwoFactor, env domain.Env) ([]domain.Event, error) {
		sealedDestination, err := s.vault.Seal(ctx, cmd.TenantID, cmd.UserID, purpose, []byte(destination))
		if err != nil {
			return nil, err
		}
		sealedCode, err := s.sealNewCode(ctx, cmd.TenantID, cmd.UserID, env.Policy.OTPLength)
		if err != nil {
			return nil, err
		}
		expires = env.Now.Add(env.Policy.OTPLifetime)
		return u.StartOTPMethodSetup(env, cmd.Method, sealedDestination, sealedCode)
	})
	if err != nil {
		return CodeSent{}, err
	}
	return CodeSent{Result: res, Method: cmd.Method, ExpiresAt: expires}, nil
}

// sealNewCode draws a one-time code and seals it: only the notifier opens it again.
func (s *Service) sealNewCode(ctx context.Context, tenantID, userID string, length int) (string, error) {
	code, err := s.newNumericCode(length)
	if err != nil {
		return "", err
	}
	return s.vault.Seal(ctx, tenantID, userID, secrets.PurposeOTPCode, []byte(code))
}

// checkSealedCode validates the typed code's shape first, then compares it in
// constant time with the sealed one.
func (s *Service) checkSealedCode(ctx context.Context, u *domain.UserTwoFactor, env domain.Env, sealed, code string) (bool, error) {
	if err := domain.ValidateNumericCode(code, env.Policy.OTPLength); err != nil {
		return false, err
	}
	expected, err := s.open(ctx, u.TenantID(), u.UserID(), secrets.PurposeOTPCode, sealed)
	if err != nil {
		return false, err
	}
	return equalCodes(string(expected), code), nil
}

// ConfirmOTPMethod adds the method when its confirmation code matches.
type ConfirmOTPMethod struct {
	TenantID string
	UserID   string
	Method   domain.Method
	Code     string
}

func (s *Service) ConfirmOTPMethod(ctx context.Context, meta Meta, cmd ConfirmOTPMethod) (Activation, error) {
	var codes []string
	res, _, err := s.executeUser(ctx, meta, cmd.TenantID, cmd.UserID, func(ctx context.Context, u *domain.UserTwoFactor, env domain.Env) ([]domain.Event, error) {
		if err := domain.ValidateNumericCode(cmd.Code, env.Policy.OTPLength); err != nil {
			return nil, err
		}
		sealed, ok := u.PendingSetupCode(cmd.Method)
		if !ok {
			return u.ConfirmOTPMethod(env, cmd.Method, false, nil)
		}
		matched, err := s.checkSealedCode(ctx, u, env, sealed, cmd.Code)
		if err != nil {
			return nil, err
		}
		var hashes [][]byte
		codes, hashes, err = s.newBackupCodes(cmd.TenantID, cmd.UserID, env.Policy.BackupCodeCount)
		if err != nil {
			return nil, err
		}
		return u.ConfirmOTPMethod(env, cmd.Method, matched, hashes)
	})
	return activation(res, codes), err
}
