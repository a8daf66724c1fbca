package commands_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/twofactor/twofactor/commands"
	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/eventstore"
)

func TestSnapshotsShortenLoadsAndAlteredOnesAreIgnored(t *testing.T) {
	f := newFixture(t, nil)
	f.Svc.WithSnapshotEvery(10)
	u := "long"
	secret, _ := f.EnrolTOTP(u)
	login := func() error {
		f.Clock.Advance(30 * time.Second)
		_, err := f.Svc.VerifyTOTP(ctx, as(u), commands.VerifyTOTP{TenantID: f.Tenant, UserID: u, Code: f.CodeAt(secret, 0)})
		return err
	}
	for i := 0; i < 25; i++ {
		if err := login(); err != nil {
			t.Fatal(err)
		}
	}
	stream := eventstore.UserStream(f.Tenant, u)
	snap, after, err := f.Store.LoadSince(ctx, stream)
	if err != nil || snap == nil {
		t.Fatalf("no snapshot after 29 events: %v", err)
	}
	if snap.Version < 20 || len(after) >= 10 || snap.Version+int64(len(after)) != 29 {
		t.Fatalf("snapshot at %d with %d events after it", snap.Version, len(after))
	}

	// The status from the snapshot equals a full replay.
	full := domain.NewUserTwoFactor(f.Tenant, u)
	for _, r := range f.Records(u) {
		full.Apply(r.Event, r.RecordedAt)
	}
	want, _ := json.Marshal(full.Snapshot(f.Clock.Now(), domain.DefaultPolicy()))
	got, _ := json.Marshal(f.Status(u))
	if string(want) != string(got) {
		t.Fatalf("status from snapshot:\n%s\nfull replay:\n%s", got, want)
	}

	// Someone with database access pushes the replay guard far ahead and locks the
	// user in the snapshot: the MAC no longer matches, the events decide.
	if _, err := f.Pool.Exec(ctx, `UPDATE user_snapshots SET state = replace(replace(state::text,
		'"last_step":', '"last_step":9999999999'), '"locked_until":"0001', '"locked_until":"2999')::json WHERE stream_id = $1`, stream); err != nil {
		t.Fatal(err)
	}
	var altered bool
	if err := f.Pool.QueryRow(ctx, `SELECT strpos(state::text, '9999999999') > 0 AND strpos(state::text, '"2999') > 0
		FROM user_snapshots WHERE stream_id = $1`, stream).Scan(&altered); err != nil || !altered {
		t.Fatalf("the snapshot was not altered (%v)", err)
	}
	if err := login(); err != nil {
		t.Fatalf("an altered snapshot was believed: %v", err)
	}
}
