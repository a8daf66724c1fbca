package commands

import (
	"context"
	"fmt"
	"time"

	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"

	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/secrets"
)

func otpAlgorithm(name string) (otp.Algorithm, error) {
	switch name {
	case "SHA1":
		return otp.AlgorithmSHA1, nil
	case "SHA256":
		return otp.AlgorithmSHA256, nil
	case "SHA512":
		return otp.AlgorithmSHA512, nil
	}
	return 0, fmt.Errorf("commands: unknown TOTP algorithm %q", name)
}

// secretSize follows RFC 6238's seeds: the key is as long as the hash output.
func secretSize(algorithm string) uint {
	switch algorithm {
	case "SHA256":
		return 32
	case "SHA512":
		return 64
	}
	return 20
}

// MatchTOTP returns the time steps within ±skew of now whose code equals code.
// Every candidate is computed and compared in constant time.
func MatchTOTP(secret string, p domain.TOTPParams, skew int, code string, now time.Time) ([]int64, error) {
	alg, err := otpAlgorithm(p.Algorithm)
	if err != nil {
		return nil, err
	}
	period := int64(p.PeriodSecs)
	current := now.Unix() / period
	opts := totp.ValidateOpts{Period: uint(p.PeriodSecs), Digits: otp.Digits(p.Digits), Algorithm: alg}
	var matched []int64
	for step := current - int64(skew); step <= current+int64(skew); step++ {
		expected, err := totp.GenerateCodeCustom(secret, time.Unix(step*period, 0), opts)
		if err != nil {
			return nil, fmt.Errorf("commands: compute TOTP: %w", err)
		}
		if equalCodes(expected, code) {
			matched = append(matched, step)
		}
	}
	return matched, nil
}

// checkTOTP validates the code's shape before any cryptographic work, unseals the
// secret and returns the matching steps.
func (s *Service) checkTOTP(ctx context.Context, u *domain.UserTwoFactor, env domain.Env, p domain.TOTPParams, code string) ([]int64, error) {
	if err := domain.ValidateNumericCode(code, p.Digits); err != nil {
		return nil, err
	}
	secret, err := s.open(ctx, u.TenantID(), u.UserID(), secrets.PurposeTOTPSecret, p.SealedSecret)
	if err != nil {
		return nil, err
	}
	return MatchTOTP(string(secret), p, env.Policy.TOTPSkew, code, env.Now)
}
