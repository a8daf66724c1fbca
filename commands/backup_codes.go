package commands

import (
	"context"

	"github.com/twofactor/twofactor/domain"
)

// RegenerateBackupCodes replaces the whole set; the old codes stop working at once.
type RegenerateBackupCodes struct{ TenantID, UserID string }

func (s *Service) RegenerateBackupCodes(ctx context.Context, meta Meta, cmd RegenerateBackupCodes) (Activation, error) {
	var codes []string
	res, _, err := s.executeUser(ctx, meta, cmd.TenantID, cmd.UserID, func(ctx context.Context, u *domain.UserTwoFactor, env domain.Env) ([]domain.Event, error) {
		var hashes [][]byte
		var err error
		codes, hashes, err = s.newBackupCodes(cmd.TenantID, cmd.UserID, env.Policy.BackupCodeCount)
		if err != nil {
			return nil, err
		}
		return u.RegenerateBackupCodes(env, hashes)
	})
	return activation(res, codes), err
}
