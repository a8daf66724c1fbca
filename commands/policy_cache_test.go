package commands_test

import (
	"crypto/rand"
	"testing"

	"github.com/twofactor/twofactor/commands"
	"github.com/twofactor/twofactor/domain"
)

// Each process keeps the tenant's policy folded, keyed by the head of the
// tenant stream it reads with every command: a policy changed by another
// process decides the very next command here, never the cached one.
func TestAPolicyChangedElsewhereDecidesTheNextCommand(t *testing.T) {
	f := newFixture(t, nil)
	secret, _ := f.EnrolTOTP("ann")
	other := commands.New(f.Store, f.Vault, f.Codes, f.Clock.Now, rand.Reader) // another process
	_, err := other.VerifyTOTP(ctx, as("ann"), commands.VerifyTOTP{TenantID: f.Tenant, UserID: "ann", Code: f.WrongCode(secret)})
	if de := wantErr(t, err, domain.KindInvalid, domain.CodeInvalidCode); de.AttemptsRemaining != 4 {
		t.Fatalf("attempts remaining %d under the default threshold of 5", de.AttemptsRemaining)
	}
	st, err := other.Status(ctx, f.Tenant, "ann")
	if err != nil {
		t.Fatal(err)
	}
	if st.AttemptsRemaining != 4 {
		t.Fatalf("attempts remaining %d under the default threshold of 5", st.AttemptsRemaining)
	}

	policy, err := f.Svc.TenantPolicy(ctx, f.Tenant)
	if err != nil {
		t.Fatal(err)
	}
	policy.LockoutThreshold = 2
	if _, err := f.Svc.ChangeTenantPolicy(ctx, admin, commands.ChangeTenantPolicy{TenantID: f.Tenant, Policy: policy}); err != nil {
		t.Fatal(err)
	}
	if st, err = other.Status(ctx, f.Tenant, "ann"); err != nil || st.AttemptsRemaining != 1 {
		t.Fatalf("after the change elsewhere: %d attempts remaining (%v), want 1", st.AttemptsRemaining, err)
	}
	_, err = other.VerifyTOTP(ctx, as("ann"), commands.VerifyTOTP{TenantID: f.Tenant, UserID: "ann", Code: f.WrongCode(secret)})
	wantErr(t, err, domain.KindLocked, domain.CodeLocked)
}
