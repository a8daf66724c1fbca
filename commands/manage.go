package commands

import (
	"context"

	"github.com/twofactor/twofactor/domain"
)

// The self-service and admin commands below share one shape: target a user, let
// the domain decide from the actor and the policy. Sensitive ones need a fresh
// verification when users act on themselves; the domain enforces it.

// ChangeDefaultMethod picks the method login prompts first.
type ChangeDefaultMethod struct {
	TenantID, UserID string
	Method           domain.Method
}

func (s *Service) ChangeDefaultMethod(ctx context.Context, meta Meta, cmd ChangeDefaultMethod) (Result, error) {
	return s.decideUser(ctx, meta, cmd.TenantID, cmd.UserID, func(u *domain.UserTwoFactor, env domain.Env) ([]domain.Event, error) {
		return u.ChangeDefaultMethod(env, cmd.Method)
	})
}

// RemoveMethod removes one of several methods.
type RemoveMethod struct {
	TenantID, UserID string
	Method           domain.Method
}

func (s *Service) RemoveMethod(ctx context.Context, meta Meta, cmd RemoveMethod) (Result, error) {
	return s.decideUser(ctx, meta, cmd.TenantID, cmd.UserID, func(u *domain.UserTwoFactor, env domain.Env) ([]domain.Event, error) {
		return u.RemoveMethod(env, cmd.Method)
	})
}

// DisableTwoFactor switches 2FA off and voids all backup codes.
type DisableTwoFactor struct{ TenantID, UserID string }

func (s *Service) DisableTwoFactor(ctx context.Context, meta Meta, cmd DisableTwoFactor) (Result, error) {
	return s.decideUser(ctx, meta, cmd.TenantID, cmd.UserID, func(u *domain.UserTwoFactor, env domain.Env) ([]domain.Event, error) {
		return u.DisableTwoFactor(env)
	})
}

// RequireTwoFactor turns "use 2FA" on or off (an admin, or the user for themself with "can toggle 2FA").
type RequireTwoFactor struct {
	TenantID, UserID string
	Required         bool
}

func (s *Service) RequireTwoFactor(ctx context.Context, meta Meta, cmd RequireTwoFactor) (Result, error) {
	return s.decideUser(ctx, meta, cmd.TenantID, cmd.UserID, func(u *domain.UserTwoFactor, env domain.Env) ([]domain.Event, error) {
		return u.RequireTwoFactor(env, cmd.Required)
	})
}

// SetTogglePermission grants or withdraws "can toggle 2FA" (admin).
type SetTogglePermission struct {
	TenantID, UserID string
	CanToggle        bool
}

func (s *Service) SetTogglePermission(ctx context.Context, meta Meta, cmd SetTogglePermission) (Result, error) {
	return s.decideUser(ctx, meta, cmd.TenantID, cmd.UserID, func(u *domain.UserTwoFactor, env domain.Env) ([]domain.Event, error) {
		return u.SetTogglePermission(env, cmd.CanToggle)
	})
}

// ResetTwoFactor wipes a user's setup; they enrol again at the next login (admin).
type ResetTwoFactor struct{ TenantID, UserID string }

func (s *Service) ResetTwoFactor(ctx context.Context, meta Meta, cmd ResetTwoFactor) (Result, error) {
	return s.decideUser(ctx, meta, cmd.TenantID, cmd.UserID, func(u *domain.UserTwoFactor, env domain.Env) ([]domain.Event, error) {
		return u.ResetTwoFactor(env)
	})
}

// UnlockTwoFactor lifts a lockout (admin).
type UnlockTwoFactor struct{ TenantID, UserID string }

func (s *Service) UnlockTwoFactor(ctx context.Context, meta Meta, cmd UnlockTwoFactor) (Result, error) {
	return s.decideUser(ctx, meta, cmd.TenantID, cmd.UserID, func(u *domain.UserTwoFactor, env domain.Env) ([]domain.Event, error) {
		return u.Unlock(env)
	})
}

// decideUser runs a command whose decision needs no cryptographic work.
func (s *Service) decideUser(ctx context.Context, meta Meta, tenantID, userID string, decide func(*domain.UserTwoFactor, domain.Env) ([]domain.Event, error)) (Result, error) {
	res, _, err := s.executeUser(ctx, meta, tenantID, userID, func(_ context.Context, u *domain.UserTwoFactor, env domain.Env) ([]domain.Event, error) {
		return decide(u, env)
	})
	return res, err
}
