package handlers

import (
	"context"
	"errors"

	"github.com/twofactor/twofactor/projections"
)

// ProjectionReads answers ReadModels from the read side's queries.
func ProjectionReads(q *projections.Queries) ReadModels { return projectionReads{q} }

type projectionReads struct{ q *projections.Queries }

func readErr(err error) error {
	if errors.Is(err, projections.ErrNotCaughtUp) {
		return ErrReadTimeout
	}
	return err
}

func statusOfRow(s projections.UserStatus) UserStatus {
	u := StatusFromSnapshot(s.Snapshot())
	u.UpdatedAt = timePtr(s.UpdatedAt)
	return u
}

func (r projectionReads) GetUser(ctx context.Context, tenantID, userID string, minPosition int64) (UserStatus, error) {
	s, err := r.q.GetUser(ctx, tenantID, userID, projections.ReadOptions{MinPosition: minPosition})
	if err != nil {
		return UserStatus{}, readErr(err)
	}
	return statusOfRow(s), nil
}

func (r projectionReads) ListUsers(ctx context.Context, tenantID string, q UserQuery, minPosition int64) (UserPage, error) {
	page, err := r.q.ListUsers(ctx, tenantID,
		projections.UserFilter{Status: q.Status, Method: q.Method, Required: q.Required, LowBackupCodes: q.LowBackupCodes, Locked: q.Locked},
		projections.PageRequest{After: q.After, Limit: q.Limit}, projections.ReadOptions{MinPosition: minPosition})
	if err != nil {
		return UserPage{}, readErr(err)
	}
	out := UserPage{Users: make([]UserStatus, 0, len(page.Users)), NextCursor: page.NextCursor}
	for _, s := range page.Users {
		out.Users = append(out.Users, statusOfRow(s))
	}
	return out, nil
}

func (r projectionReads) Coverage(ctx context.Context, tenantID string, minPosition int64) (Coverage, error) {
	c, err := r.q.Coverage(ctx, tenantID, projections.ReadOptions{MinPosition: minPosition})
	if err != nil {
		return Coverage{}, readErr(err)
	}
	return Coverage{
		Users: c.Users, ByStatus: c.ByStatus, Activated: c.Activated, ActivatedShare: c.ActivatedShare,
		RequiredNotEnrolled: c.RequiredNotEnrolled, LockedNow: c.LockedNow, UpdatedAt: timePtr(c.UpdatedAt),
		AppliedPosition: c.AppliedPosition,
	}, nil
}
