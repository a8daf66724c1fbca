package commands

import (
	"context"

	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/secrets"
)

// SwitchMethod moves a user to another method: to email or SMS at once (Destination
// needed unless one is registered), to the authenticator app at the next login.
type SwitchMethod struct {
	TenantID, UserID string
	To               domain.Method
	Destination      string
}

func (s *Service) SwitchMethod(ctx context.Context, meta Meta, cmd SwitchMethod) (Result, error) {
	if _, err := domain.ParseMethod(string(cmd.To)); err != nil {
		return Result{}, err
	}
	var purpose secrets.Purpose
	var destination string
	if cmd.Destination != "" {
		var err error
		if purpose, destination, err = destinationPurpose("destination", cmd.To, cmd.Destination); err != nil {
			return Result{}, err
		}
	}
	res, _, err := s.executeUser(ctx, meta, cmd.TenantID, cmd.UserID, func(ctx context.Context, u *domain.UserTwoFactor, env domain.Env) ([]domain.Event, error) {
		sealed := ""
		if destination != "" {
			var err error
			sealed, err = s.vault.Seal(ctx, cmd.TenantID, cmd.UserID, purpose, []byte(destination))
			if err != nil {
				return nil, err
			}
		}
		return u.SwitchMethod(env, cmd.To, sealed)
	})
	return res, err
}
