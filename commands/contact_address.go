package commands

import (
	"context"

	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/secrets"
)

// SetContactAddress registers where security messages go for a user whose methods
// give no address (an app-only user): typically the login's email address, handed
// over by the host product. An empty Address removes it.
type SetContactAddress struct {
	TenantID, UserID string
	Method           domain.Method
	Address          string
}

func (s *Service) SetContactAddress(ctx context.Context, meta Meta, cmd SetContactAddress) (Result, error) {
	var purpose secrets.Purpose
	var address string
	if cmd.Address != "" {
		var err error
		if purpose, address, err = destinationPurpose("address", cmd.Method, cmd.Address); err != nil {
			return Result{}, err
		}
	}
	res, _, err := s.executeUser(ctx, meta, cmd.TenantID, cmd.UserID, func(ctx context.Context, u *domain.UserTwoFactor, env domain.Env) ([]domain.Event, error) {
		sealed := ""
		if address != "" {
			var err error
			if sealed, err = s.vault.Seal(ctx, cmd.TenantID, cmd.UserID, purpose, []byte(address)); err != nil {
				return nil, err
			}
		}
		return u.SetContactAddress(env, cmd.Method, sealed)
	})
	return res, err
}
