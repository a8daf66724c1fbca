package commands

import (
	"bytes"
	"context"
	"image/png"
	"time"
	"unicode/utf8"

	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"

	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/secrets"
)

// StartTOTPEnrollment begins enrolling (or replacing) an authenticator app.
type StartTOTPEnrollment struct {
	TenantID string
	UserID   string
	// AccountName is what the app shows under the issuer (e.g. the login's email).
	AccountName string
}

// TOTPEnrollment is shown to the user once: the key as text, as a URI and as a QR code.
type TOTPEnrollment struct {
	Result
	Secret    string    `json:"secret"`
	URI       string    `json:"otpauth_uri"`
	QRCodePNG []byte    `json:"qr_code_png"`
	ExpiresAt time.Time `json:"expires_at"`
}

func (s *Service) StartTOTPEnrollment(ctx context.Context, meta Meta, cmd StartTOTPEnrollment) (TOTPEnrollment, error) {
	// The account name is in no event, but it is in the URI and the QR code a
	// phone stores.
	if err := domain.CheckText("account_name", cmd.AccountName); err != nil {
		return TOTPEnrollment{}, err
	}
	if utf8.RuneCountInString(cmd.AccountName) > 200 {
		return TOTPEnrollment{}, domain.Invalid(domain.CodeInvalidArgument, "account_name must be at most 200 characters")
	}
	var key *otp.Key
	var expires time.Time
	res, _, err := s.executeUser(ctx, meta, cmd.TenantID, cmd.UserID, func(ctx context.Context, u *domain.UserTwoFactor, env domain.Env) ([]domain.Event, error) {
		account := cmd.AccountName
		if account == "" {
			account = cmd.UserID
		}
		alg, err := otpAlgorithm(env.Policy.TOTPAlgorithm)
		if err != nil {
			return nil, err
		}
		key, err = totp.Generate(totp.GenerateOpts{
			Issuer: env.Policy.IssuerName, AccountName: account,
			Period: uint(env.Policy.TOTPPeriod / time.Second), SecretSize: secretSize(env.Policy.TOTPAlgorithm),
			Digits: otp.Digits(env.Policy.TOTPDigits), Algorithm: alg, Rand: s.random,
		})
		if err != nil {
			return nil, err
		}
		sealed, err := s.vault.Seal(ctx, cmd.TenantID, cmd.UserID, secrets.PurposeTOTPSecret, []byte(key.Secret()))
		if err != nil {
			return nil, err
		}
		expires = env.Now.Add(env.Policy.EnrollmentTTL)
		return u.StartTOTPEnrollment(env, domain.TOTPParams{
			SealedSecret: sealed, Algorithm: env.Policy.TOTPAlgorithm,
			Digits: env.Policy.TOTPDigits, PeriodSecs: int(env.Policy.TOTPPeriod / time.Second),
		})
	})
	if err != nil {
		return TOTPEnrollment{}, err
	}
	img, err := key.Image(256, 256)
	if err != nil {
		return TOTPEnrollment{}, err
	}
	var qr bytes.Buffer
	if err := png.Encode(&qr, img); err != nil {
		return TOTPEnrollment{}, err
	}
	return TOTPEnrollment{Result: res, Secret: key.Secret(), URI: key.URL(), QRCodePNG: qr.Bytes(), ExpiresAt: expires}, nil
}

// ConfirmTOTPEnrollment activates the pending authenticator with its first code
// ("test token and activate").
type ConfirmTOTPEnrollment struct {
	TenantID string
	UserID   string
	Code     string
}

// Activation carries the new backup codes, shown exactly once, when a set was issued.
type Activation struct {
	Result
	BackupCodes []string `json:"backup_codes,omitempty"`
}

func (s *Service) ConfirmTOTPEnrollment(ctx context.Context, meta Meta, cmd ConfirmTOTPEnrollment) (Activation, error) {
	var codes []string
	res, _, err := s.executeUser(ctx, meta, cmd.TenantID, cmd.UserID, func(ctx context.Context, u *domain.UserTwoFactor, env domain.Env) ([]domain.Event, error) {
		p, ok := u.PendingTOTP()
		if !ok {
			return u.ConfirmTOTPEnrollment(env, nil, nil)
		}
		steps, err := s.checkTOTP(ctx, u, env, p, cmd.Code)
		if err != nil {
			return nil, err
		}
		var hashes [][]byte
		codes, hashes, err = s.newBackupCodes(cmd.TenantID, cmd.UserID, env.Policy.BackupCodeCount)
		if err != nil {
			return nil, err
		}
		return u.ConfirmTOTPEnrollment(env, steps, hashes)
	})
	return activation(res, codes), err
}

// activation returns the plain codes only when the append issued them.
func activation(res Result, codes []string) Activation {
	for _, e := range res.Events {
		if e == (&domain.BackupCodesGenerated{}).EventType() || e == (&domain.BackupCodesRegenerated{}).EventType() {
			return Activation{Result: res, BackupCodes: codes}
		}
	}
	return Activation{Result: res}
}
