package audit_test

import (
	"bytes"
	"context"
	"encoding/json"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/twofactor/twofactor/audit"
	"github.com/twofactor/twofactor/commands"
	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/eventstore"
	"github.com/twofactor/twofactor/internal/testdb"
	"github.com/twofactor/twofactor/internal/testkit"
)

func TestMain(m *testing.M) { os.Exit(testdb.Main(m)) }

var ctx = context.Background()

// freshFixture gives a test its own database: tampering tests bypass the trigger.
func freshFixture(t *testing.T) *testkit.Fixture {
	t.Helper()
	pool, err := pgxpool.New(ctx, testdb.Fresh(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return testkit.New(t, pool, nil)
}

type observation struct {
	user string
	at   time.Time
	want domain.Snapshot
}

// randomHistory drives random commands for several users and records the state
// the commands saw right after each one.
func randomHistory(t *testing.T, f *testkit.Fixture, users, steps int, seed uint64) []observation {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, seed))
	secrets := map[string]string{}
	backup := map[string][]string{}
	var seen []observation
	for i := 0; i < steps; i++ {
		f.Clock.Advance(time.Duration(1+rng.IntN(120)) * time.Second)
		u := "user-" + string(rune('a'+rng.IntN(users)))
		tenant := f.Tenant
		switch rng.IntN(12) {
		case 0, 1:
			enrol, err := f.Svc.StartTOTPEnrollment(ctx, testkit.As(u), commands.StartTOTPEnrollment{TenantID: tenant, UserID: u})
			if err == nil {
				secrets[u] = enrol.Secret
				f.Clock.Advance(time.Second)
				act, err := f.Svc.ConfirmTOTPEnrollment(ctx, testkit.As(u), commands.ConfirmTOTPEnrollment{TenantID: tenant, UserID: u, Code: f.CodeAt(enrol.Secret, 0)})
				if err == nil && len(act.BackupCodes) > 0 {
					backup[u] = act.BackupCodes
				}
			}
		case 2, 3, 4:
			if s, ok := secrets[u]; ok {
				code := f.CodeAt(s, 0)
				if rng.IntN(3) == 0 {
					code = f.WrongCode(s)
				}
				f.Svc.VerifyTOTP(ctx, testkit.As(u), commands.VerifyTOTP{TenantID: tenant, UserID: u, Code: code}) //nolint:errcheck
			}
		case 5, 6:
			if codes := backup[u]; len(codes) > 0 {
				f.Svc.ConsumeBackupCode(ctx, testkit.As(u), commands.ConsumeBackupCode{TenantID: tenant, UserID: u, Code: codes[rng.IntN(len(codes))]}) //nolint:errcheck
			}
		case 7:
			f.Svc.RequireTwoFactor(ctx, testkit.Admin, commands.RequireTwoFactor{TenantID: tenant, UserID: u, Required: rng.IntN(2) == 0}) //nolint:errcheck
		case 8:
			f.Svc.UnlockTwoFactor(ctx, testkit.Admin, commands.UnlockTwoFactor{TenantID: tenant, UserID: u}) //nolint:errcheck
		case 9:
			f.Svc.ResetTwoFactor(ctx, testkit.Admin, commands.ResetTwoFactor{TenantID: tenant, UserID: u}) //nolint:errcheck
		case 10:
			f.Svc.SwitchMethod(ctx, testkit.Admin, commands.SwitchMethod{TenantID: tenant, UserID: u, To: domain.MethodEmail, Destination: u + "@example.com"}) //nolint:errcheck
		case 11:
			f.Svc.DisableTwoFactor(ctx, testkit.Admin, commands.DisableTwoFactor{TenantID: tenant, UserID: u}) //nolint:errcheck
		}
		seen = append(seen, observation{user: u, at: f.Clock.Now(), want: f.Status(u)})
	}
	return seen
}

func TestStateAtEveryMomentEqualsWhatTheCommandsSaw(t *testing.T) {
	f := testkit.New(t, testdb.Pool(t), nil)
	observations := randomHistory(t, f, 8, 300, 42)
	a := audit.New(f.Pool)
	events := 0
	for _, o := range observations {
		got, err := a.StateAt(ctx, f.Tenant, o.user, o.at)
		if err != nil {
			t.Fatal(err)
		}
		gotJSON, _ := json.Marshal(got)
		wantJSON, _ := json.Marshal(o.want)
		if !bytes.Equal(gotJSON, wantJSON) {
			t.Fatalf("state of %s at %s:\n got %s\nwant %s", o.user, o.at, gotJSON, wantJSON)
		}
		events = max(events, int(o.want.Version))
	}
	if events < 10 {
		t.Fatalf("the random history is too thin (max version %d)", events)
	}
	_, err := a.StateAt(ctx, f.Tenant, "user-a", time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC))
	testkit.WantErr(t, err, domain.KindNotFound, domain.CodeTenantNotFound)
}

func TestHistoryIsRedactedAndFiltered(t *testing.T) {
	f := testkit.New(t, testdb.Pool(t), nil)
	secret, codes := f.EnrolTOTP("hana")
	f.Clock.Advance(time.Minute)
	if _, err := f.Svc.VerifyTOTP(ctx, testkit.As("hana"), commands.VerifyTOTP{TenantID: f.Tenant, UserID: "hana", Code: f.CodeAt(secret, 0)}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Svc.SwitchMethod(ctx, testkit.Admin, commands.SwitchMethod{TenantID: f.Tenant, UserID: "hana", To: domain.MethodEmail, Destination: "hana@example.com"}); err != nil {
		t.Fatal(err)
	}
	a := audit.New(f.Pool)
	page, err := a.History(ctx, f.Tenant, "hana", audit.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	types := []string{}
	for _, e := range page.Entries {
		types = append(types, e.Type)
		if e.UserID != "hana" || e.TenantID != f.Tenant || e.Actor.Kind == "" || e.RequestID == "" {
			t.Errorf("entry lacks who/where: %+v", e)
		}
	}
	want := "TOTPEnrollmentStarted TOTPEnrollmentConfirmed BackupCodesGenerated TwoFactorEnabled TOTPVerified MethodSwitched"
	if strings.Join(types, " ") != want {
		t.Fatalf("history = %v", types)
	}
	raw, _ := json.Marshal(page)
	for _, leak := range []string{`"v1.`, secret, codes[0], "hana@example.com", `"hashes"`} {
		if strings.Contains(string(raw), leak) {
			t.Errorf("history leaks %q", leak)
		}
	}
	if !strings.Contains(string(raw), audit.Redacted) || !strings.Contains(string(raw), `"code_count":10`) {
		t.Errorf("history does not show redactions: %s", raw)
	}

	byAdmin, err := a.Feed(ctx, f.Tenant, audit.Filter{ActorKind: domain.ActorAdmin})
	if err != nil {
		t.Fatal(err)
	}
	if len(byAdmin.Entries) != 1 || byAdmin.Entries[0].Type != "MethodSwitched" {
		t.Fatalf("feed by admin = %+v", byAdmin.Entries)
	}
	// Keyset pagination walks the whole feed without repeats.
	var all []int64
	for after := int64(0); ; {
		p, err := a.Feed(ctx, f.Tenant, audit.Filter{AfterPosition: after, Limit: 2})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range p.Entries {
			all = append(all, e.Position)
		}
		if p.Next == 0 {
			break
		}
		after = p.Next
	}
	if len(all) != 7 { // TenantCreated + the six above
		t.Fatalf("paged feed has %d entries", len(all))
	}
	for i := 1; i < len(all); i++ {
		if all[i] <= all[i-1] {
			t.Fatalf("feed positions not increasing: %v", all)
		}
	}
}

// tamper runs SQL as a superuser who bypasses the append-only trigger.
func tamper(t *testing.T, pool *pgxpool.Pool, sql string, args ...any) {
	t.Helper()
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SET session_replication_role = replica"); err != nil {
		t.Fatal(err)
	}
	defer conn.Exec(ctx, "SET session_replication_role = origin") //nolint:errcheck
	tag, err := conn.Exec(ctx, sql, args...)
	if err != nil {
		t.Fatal(err)
	}
	if tag.RowsAffected() == 0 {
		t.Fatalf("tampering changed nothing: %s", sql)
	}
}

func verify(t *testing.T, pool *pgxpool.Pool) audit.Report {
	t.Helper()
	rep, err := audit.New(pool).Verify(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

func TestTamperingIsDetectedAndTheRightEventNamed(t *testing.T) {
	setup := func(t *testing.T) (*testkit.Fixture, []*eventstore.Record) {
		f := freshFixture(t)
		randomHistory(t, f, 3, 40, 7)
		secret, _ := f.EnrolTOTP("victim")
		for i := 0; i < 3; i++ {
			f.Clock.Advance(time.Minute)
			if _, err := f.Svc.VerifyTOTP(ctx, testkit.As("victim"), commands.VerifyTOTP{TenantID: f.Tenant, UserID: "victim", Code: f.CodeAt(secret, 0)}); err != nil {
				t.Fatal(err)
			}
		}
		if rep := verify(t, f.Pool); !rep.OK || rep.Events < 10 {
			t.Fatalf("untouched history does not verify: %+v", rep)
		}
		return f, f.Records("victim")
	}
	stream := func(f *testkit.Fixture) string { return eventstore.UserStream(f.Tenant, "victim") }

	t.Run("changed payload", func(t *testing.T) {
		f, recs := setup(t)
		target := recs[4] // a TOTPVerified
		tamper(t, f.Pool, `UPDATE events SET payload = '{"step":1}' WHERE event_id = $1`, target.EventID)
		rep := verify(t, f.Pool)
		if rep.OK || rep.FirstBroken.EventID != target.EventID || !strings.Contains(rep.FirstBroken.Reason, "altered") {
			t.Fatalf("report = %+v", rep.FirstBroken)
		}
	})
	t.Run("changed actor in metadata", func(t *testing.T) {
		f, recs := setup(t)
		target := recs[2]
		tamper(t, f.Pool, `UPDATE events SET metadata = replace(metadata::text, 'req-victim', 'req-other')::json WHERE event_id = $1`, target.EventID)
		if rep := verify(t, f.Pool); rep.OK || rep.FirstBroken.EventID != target.EventID {
			t.Fatalf("report = %+v", rep.FirstBroken)
		}
	})
	t.Run("deleted event", func(t *testing.T) {
		f, recs := setup(t)
		tamper(t, f.Pool, `DELETE FROM events WHERE event_id = $1`, recs[3].EventID)
		rep := verify(t, f.Pool)
		if rep.OK || rep.FirstBroken.EventID != recs[4].EventID || !strings.Contains(rep.FirstBroken.Reason, "missing") {
			t.Fatalf("report = %+v, want the event after the deleted one named", rep.FirstBroken)
		}
	})
	t.Run("swapped events", func(t *testing.T) {
		f, recs := setup(t)
		a, b := recs[4], recs[5]
		tamper(t, f.Pool, `UPDATE events SET stream_version = stream_version + 1000 WHERE stream_id = $1 AND stream_version IN (5, 6)`, stream(f))
		tamper(t, f.Pool, `UPDATE events SET stream_version = CASE stream_version WHEN 1005 THEN 6 ELSE 5 END WHERE stream_id = $1 AND stream_version IN (1005, 1006)`, stream(f))
		rep := verify(t, f.Pool)
		if rep.OK || (rep.FirstBroken.EventID != a.EventID && rep.FirstBroken.EventID != b.EventID) {
			t.Fatalf("report = %+v, want %s or %s", rep.FirstBroken, a.EventID, b.EventID)
		}
	})
	t.Run("truncated tail is caught by a checkpoint", func(t *testing.T) {
		f, recs := setup(t)
		a := audit.New(f.Pool)
		cp, err := a.TakeCheckpoint(ctx, f.Tenant, f.Clock.Now())
		if err != nil {
			t.Fatal(err)
		}
		if rep, err := a.VerifyCheckpoint(ctx, cp); err != nil || !rep.OK {
			t.Fatalf("fresh checkpoint does not verify: %+v %v", rep, err)
		}
		tamper(t, f.Pool, `DELETE FROM events WHERE event_id = $1`, recs[len(recs)-1].EventID)
		if rep := verify(t, f.Pool); !rep.OK {
			t.Fatalf("a consistent chain should verify without the anchor: %+v", rep)
		}
		rep, err := a.VerifyCheckpoint(ctx, cp)
		if err != nil {
			t.Fatal(err)
		}
		if rep.OK || rep.FirstBroken.StreamID != stream(f) {
			t.Fatalf("checkpoint missed the truncation: %+v", rep)
		}
		cp.Heads[0].Version++
		if _, err := a.VerifyCheckpoint(ctx, cp); err == nil {
			t.Fatal("an altered checkpoint file was accepted")
		}
	})
	t.Run("export verifies offline and a tampered export does not", func(t *testing.T) {
		f, _ := setup(t)
		var buf bytes.Buffer
		n, err := audit.New(f.Pool).Export(ctx, f.Tenant, &buf)
		if err != nil || n < 10 {
			t.Fatalf("export: %d rows, %v", n, err)
		}
		if strings.Contains(buf.String(), `"v1.`) {
			t.Fatal("the export carries sealed values")
		}
		rep, err := audit.VerifyExport(bytes.NewReader(buf.Bytes()))
		if err != nil || !rep.OK || rep.Events != n {
			t.Fatalf("export does not verify: %+v %v", rep, err)
		}
		lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
		lines[3] = strings.Replace(lines[3], `"admin-1"`, `"admin-2"`, 1)
		lines[3] = strings.Replace(lines[3], `\"kind\":\"user\"`, `\"kind\":\"admin\"`, 1)
		rep, err = audit.VerifyExport(strings.NewReader(strings.Join(lines, "\n")))
		if err != nil {
			t.Fatal(err)
		}
		if rep.OK {
			t.Fatal("a tampered export verified")
		}
	})
}

func TestForgottenUserIsUnreadableAndHistoryStillVerifies(t *testing.T) {
	f := freshFixture(t)
	secret, codes := f.EnrolTOTP("fiona")
	f.Clock.Advance(time.Minute)
	if _, err := f.Svc.VerifyTOTP(ctx, testkit.As("fiona"), commands.VerifyTOTP{TenantID: f.Tenant, UserID: "fiona", Code: f.CodeAt(secret, 0)}); err != nil {
		t.Fatal(err)
	}
	email, phone := "fiona.private@example.com", "+447700900777"
	for _, m := range []struct {
		method domain.Method
		dest   string
	}{{domain.MethodEmail, email}, {domain.MethodSMS, phone}} {
		if _, err := f.Svc.StartOTPMethodSetup(ctx, testkit.As("fiona"), commands.StartOTPMethodSetup{TenantID: f.Tenant, UserID: "fiona", Method: m.method, Destination: m.dest}); err != nil {
			t.Fatal(err)
		}
		if _, err := f.Svc.ConfirmOTPMethod(ctx, testkit.As("fiona"), commands.ConfirmOTPMethod{TenantID: f.Tenant, UserID: "fiona", Method: m.method, Code: f.SentCode("fiona")}); err != nil {
			t.Fatal(err)
		}
	}
	before := f.Clock.Now()
	f.Clock.Advance(time.Hour)
	if _, err := f.Svc.ForgetUser(ctx, testkit.Admin, commands.ForgetUser{TenantID: f.Tenant, UserID: "fiona"}); err != nil {
		t.Fatal(err)
	}
	for _, needle := range append([]string{secret, email, phone, strings.TrimPrefix(phone, "+")}, codes...) {
		if tables := testkit.ScanDatabase(t, f.Pool, needle); len(tables) > 0 {
			t.Errorf("%q is readable in %v after erasure", needle, tables)
		}
	}
	var keys int
	if err := f.Pool.QueryRow(ctx, `SELECT count(*) FROM user_data_keys WHERE user_id = 'fiona'`).Scan(&keys); err != nil || keys != 0 {
		t.Fatalf("data key rows after erasure: %d (%v)", keys, err)
	}
	if rep := verify(t, f.Pool); !rep.OK {
		t.Fatalf("history does not verify after erasure: %+v", rep.FirstBroken)
	}
	a := audit.New(f.Pool)
	now, err := a.StateAt(ctx, f.Tenant, "fiona", f.Clock.Now())
	if err != nil || now.Status != domain.StatusErased {
		t.Fatalf("state after erasure = %+v, %v", now, err)
	}
	then, err := a.StateAt(ctx, f.Tenant, "fiona", before)
	if err != nil || then.Status != domain.StatusActivated {
		t.Fatalf("state before erasure = %+v, %v", then, err)
	}
}
