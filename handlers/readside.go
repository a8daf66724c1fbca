package handlers

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/twofactor/twofactor/projections"
)

// ProjectionReads answers ReadModels from the read side's queries.
func ProjectionReads(q *projections.Queries) ReadModels { return projectionReads{q} }

type projectionReads struct{ q *projections.Queries }

func readErr(err error) error {
	if errors.Is(err, projections.ErrNotCaughtUp) {
		return ErrReadTimeout
	}
	var stalled *projections.StalledError
	if errors.As(err, &stalled) {
		return readStalled(stalled.Stall)
	}
	return err
}

// readStalled: the read model isolated an event of the tenant at or before the
// requested position and holds the tenant's later events back until an
// operator heals it. Retrying will not help soon; the reason stays in the
// operators' logs (it may quote internals).
func readStalled(s projections.Stall) error {
	e := newAPIError(http.StatusServiceUnavailable, codeReadModelStalled, fmt.Sprintf(
		"the read model stopped following this tenant at event %s (position %d, %s): it could not be applied and the operators were alerted; writes still succeed, reads with min_position at or after it fail until it is healed",
		s.EventID, s.Position, s.EventType))
	e.retryAfter = 60
	return e
}

func statusOfRow(s projections.UserStatus) UserStatus {
	u := StatusFromSnapshot(s.Snapshot())
	u.UpdatedAt = timePtr(s.UpdatedAt)
	return u
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
