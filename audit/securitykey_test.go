package audit_test

import (
	"encoding/base64"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/twofactor/twofactor/audit"
	"github.com/twofactor/twofactor/commands"
	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/internal/softkey"
	"github.com/twofactor/twofactor/internal/testdb"
	"github.com/twofactor/twofactor/internal/testkit"
)

// A security key's history: the state at a past time shows the key, the
// history shows its events with the sealed fields redacted, and after erasure
// nothing of the credential (id, public key) or its name is readable anywhere
// while the hash chains still verify.
func TestSecurityKeyHistoryStateAndErasure(t *testing.T) {
	pool, err := pgxpool.New(ctx, testdb.Fresh(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	p := domain.DefaultPolicy()
	p.WebAuthn.RPID = "example.com"
	p.WebAuthn.Origins = []string{"https://login.example.com"}
	f := testkit.New(t, pool, &p)
	key, err := softkey.New(softkey.EdDSA, softkey.FormatPacked)
	if err != nil {
		t.Fatal(err)
	}
	const name = "Ingrid's red key"
	opts, err := f.Svc.StartSecurityKeyRegistration(ctx, testkit.As("ingrid"), commands.StartSecurityKeyRegistration{TenantID: f.Tenant, UserID: "ingrid"})
	if err != nil {
		t.Fatal(err)
	}
	created, err := key.Create(opts.Options, "https://login.example.com")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Svc.FinishSecurityKeyRegistration(ctx, testkit.As("ingrid"), commands.FinishSecurityKeyRegistration{TenantID: f.Tenant, UserID: "ingrid", Name: name, Response: created}); err != nil {
		t.Fatal(err)
	}
	registered := f.Clock.Now()
	f.Clock.Advance(time.Hour)
	if _, err := f.Svc.DisableTwoFactor(ctx, testkit.Admin, commands.DisableTwoFactor{TenantID: f.Tenant, UserID: "ingrid"}); err != nil {
		t.Fatal(err)
	}

	a := audit.New(f.Pool)
	then, err := a.StateAt(ctx, f.Tenant, "ingrid", registered)
	if err != nil || then.Status != domain.StatusActivated || then.SecurityKeys != 1 || len(then.Methods) != 1 || then.Methods[0] != domain.MethodWebAuthn {
		t.Fatalf("state when registered = %+v, %v", then, err)
	}
	now, err := a.StateAt(ctx, f.Tenant, "ingrid", f.Clock.Now())
	if err != nil || now.SecurityKeys != 0 || len(now.Methods) != 0 {
		t.Fatalf("state after the disable = %+v, %v", now, err)
	}
	page, err := a.History(ctx, f.Tenant, "ingrid", audit.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	var seen []string
	for _, e := range page.Entries {
		seen = append(seen, e.Type)
		if e.Type == "SecurityKeyRegistered" && (!strings.Contains(string(e.Data), `"sealed_credential":"`+audit.Redacted) || !strings.Contains(string(e.Data), `"sealed_name":"`+audit.Redacted)) {
			t.Errorf("registration not redacted: %s", e.Data)
		}
	}
	if !strings.Contains(strings.Join(seen, ","), "SecurityKeyRegistrationStarted,SecurityKeyRegistered,BackupCodesGenerated,TwoFactorEnabled") {
		t.Fatalf("history = %v", seen)
	}

	if _, err := f.Svc.ForgetUser(ctx, testkit.Admin, commands.ForgetUser{TenantID: f.Tenant, UserID: "ingrid"}); err != nil {
		t.Fatal(err)
	}
	pub, err := key.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	for _, needle := range []string{
		name, base64.RawURLEncoding.EncodeToString(key.ID), base64.StdEncoding.EncodeToString(key.ID), hex.EncodeToString(key.ID),
		base64.StdEncoding.EncodeToString(pub), hex.EncodeToString(pub),
	} {
		if tables := testkit.ScanDatabase(t, f.Pool, needle); len(tables) > 0 {
			t.Errorf("%q is readable in %v after erasure", needle, tables)
		}
	}
	if rep := verify(t, f.Pool); !rep.OK {
		t.Fatalf("history does not verify after erasure: %+v", rep.FirstBroken)
	}
}
