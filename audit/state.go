package audit

import (
	"context"
	"time"

	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/eventstore"
)

// StateAt is a user's state as it was at a past moment: the stream replayed up to
// that time with the same domain code the commands use, under the tenant policy
// in force then, shown in the shape of the live status.
func (a *Auditor) StateAt(ctx context.Context, tenantID, userID string, at time.Time) (domain.Snapshot, error) {
	if err := domain.ValidateIdentifier("tenant id", tenantID); err != nil {
		return domain.Snapshot{}, err
	}
	if err := domain.ValidateIdentifier("user id", userID); err != nil {
		return domain.Snapshot{}, err
	}
	tenant, err := a.until(ctx, eventstore.TenantStream(tenantID), at)
	if err != nil {
		return domain.Snapshot{}, err
	}
	policy := domain.NewTenantPolicy(tenantID)
	for _, r := range tenant {
		policy.Apply(r.Event)
	}
	if !policy.Exists() {
		return domain.Snapshot{}, domain.NotFound(domain.CodeTenantNotFound, "the tenant did not exist at that time")
	}
	records, err := a.until(ctx, eventstore.UserStream(tenantID, userID), at)
	if err != nil {
		return domain.Snapshot{}, err
	}
	u := domain.NewUserTwoFactor(tenantID, userID)
	for _, r := range records {
		u.Apply(r.Event, r.RecordedAt)
	}
	return u.Snapshot(at, policy.Policy()), nil
}

// until reads a stream's events recorded at or before at, decoded.
func (a *Auditor) until(ctx context.Context, streamID string, at time.Time) ([]*eventstore.Record, error) {
	records, err := a.query(ctx, `SELECT `+selectColumns+` FROM events
		WHERE stream_id = $1 AND recorded_at <= $2 ORDER BY stream_version`, streamID, at)
	if err != nil {
		return nil, err
	}
	for _, r := range records {
		if r.Event, err = eventstore.Decode(r.Type, r.SchemaVersion, r.Payload); err != nil {
			return nil, err
		}
	}
	return records, nil
}
