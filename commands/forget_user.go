package commands

import (
	"context"
	"errors"

	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/eventstore"
)

// ForgetUser erases a user: UserForgotten is appended, then the user's data key is
// deleted, which makes their sealed secrets and personal data in the log unreadable
// without rewriting history.
type ForgetUser struct{ TenantID, UserID string }

func (s *Service) ForgetUser(ctx context.Context, meta Meta, cmd ForgetUser) (Result, error) {
	res, err := s.decideUser(ctx, meta, cmd.TenantID, cmd.UserID, func(u *domain.UserTwoFactor, env domain.Env) ([]domain.Event, error) {
		return u.ForgetUser(env)
	})
	if err != nil && !errors.Is(err, domain.NotFound(domain.CodeUserForgotten, "")) {
		return res, err
	}
	// After the event, and again on a retry: if deleting fails the command can be
	// repeated; the reverse order could leave a live user whose secrets are gone.
	if ferr := s.vault.Forget(ctx, cmd.TenantID, cmd.UserID); ferr != nil {
		return res, ferr
	}
	if ferr := s.store.DeleteSnapshot(ctx, eventstore.UserStream(cmd.TenantID, cmd.UserID)); ferr != nil {
		return res, ferr
	}
	return res, err
}
