package commands_test

import (
	"crypto/rand"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/twofactor/twofactor/commands"
	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/eventstore"
	"github.com/twofactor/twofactor/internal/testdb"
	"github.com/twofactor/twofactor/internal/testkit"
	"github.com/twofactor/twofactor/secrets"
)

func TestNoSecretIsStoredInPlainText(t *testing.T) {
	f := newFixture(t, nil)
	u := "priya"
	secret, codes := f.EnrolTOTP(u)
	if _, err := f.Svc.VerifyTOTP(ctx, as(u), commands.VerifyTOTP{TenantID: f.Tenant, UserID: u, Code: f.CodeAt(secret, 30*time.Second)}); err != nil {
		t.Fatal(err)
	}
	email, phone := "priya.secret@example.com", "+447700900123"
	var otps []string
	for _, m := range []struct {
		method      domain.Method
		destination string
	}{{domain.MethodEmail, email}, {domain.MethodSMS, phone}} {
		if _, err := f.Svc.StartOTPMethodSetup(ctx, as(u), commands.StartOTPMethodSetup{TenantID: f.Tenant, UserID: u, Method: m.method, Destination: m.destination}); err != nil {
			t.Fatal(err)
		}
		code := f.SentCode(u)
		otps = append(otps, code)
		if _, err := f.Svc.ConfirmOTPMethod(ctx, as(u), commands.ConfirmOTPMethod{TenantID: f.Tenant, UserID: u, Method: m.method, Code: code}); err != nil {
			t.Fatal(err)
		}
	}
	f.Clock.Advance(time.Hour)
	if _, err := f.Svc.StartLoginChallenge(ctx, as(u), commands.StartLoginChallenge{TenantID: f.Tenant, UserID: u, Method: domain.MethodSMS}); err != nil {
		t.Fatal(err)
	}
	otps = append(otps, f.SentCode(u))
	if _, err := f.Svc.ConsumeBackupCode(ctx, as(u), commands.ConsumeBackupCode{TenantID: f.Tenant, UserID: u, Code: codes[0]}); err != nil {
		t.Fatal(err)
	}
	regenerated, err := f.Svc.RegenerateBackupCodes(ctx, as(u), commands.RegenerateBackupCodes{TenantID: f.Tenant, UserID: u})
	if err != nil {
		t.Fatal(err)
	}

	needles := []string{secret, email, phone, strings.TrimPrefix(phone, "+")}
	for _, c := range append(codes, regenerated.BackupCodes...) {
		needles = append(needles, c, strings.ReplaceAll(c, "-", ""))
	}
	for _, c := range otps {
		needles = append(needles, `"`+c+`"`) // as a JSON value; bare digits also occur in timestamps
	}
	for _, n := range needles {
		if tables := testkit.ScanDatabase(t, f.Pool, n); len(tables) > 0 {
			t.Errorf("%q is stored in plain text in %v", n, tables)
		}
	}
	// The scan itself can find things: the user id is stored in plain text.
	if tables := testkit.ScanDatabase(t, f.Pool, u); len(tables) == 0 {
		t.Fatal("the scan found nothing, not even the user id")
	}
}

func TestCiphertextCopiedOntoAnotherUserDoesNotOpen(t *testing.T) {
	f := newFixture(t, nil)
	secret, _ := f.EnrolTOTP("alice")
	var sealed string
	for _, r := range f.Records("alice") {
		if e, ok := r.Event.(*domain.TOTPEnrollmentStarted); ok {
			sealed = e.SealedSecret
		}
	}
	if _, err := f.Vault.Open(ctx, f.Tenant, "alice", secrets.PurposeTOTPSecret, sealed); err != nil {
		t.Fatal(err)
	}
	// Mallory plants Alice's sealed secret in her own stream, then tries Alice's code.
	f.EnrolTOTP("mallory")
	planted := &domain.TOTPEnrollmentStarted{SealedSecret: sealed, Algorithm: "SHA1", Digits: 6, PeriodSecs: 30, ExpiresAt: f.Clock.Now().Add(time.Hour), Replacement: true}
	version := int64(len(f.Records("mallory")))
	if _, err := f.Store.Append(ctx, f.Tenant, eventstore.UserStream(f.Tenant, "mallory"), version, []domain.Event{planted}, eventstore.Metadata{Actor: system}); err != nil {
		t.Fatal(err)
	}
	f.Clock.Advance(time.Minute)
	_, err := f.Svc.ConfirmTOTPEnrollment(ctx, as("mallory"), commands.ConfirmTOTPEnrollment{TenantID: f.Tenant, UserID: "mallory", Code: f.CodeAt(secret, 0)})
	if !errors.Is(err, secrets.ErrOpenFailed) {
		t.Fatalf("err = %v, want ErrOpenFailed", err)
	}
	if _, err := f.Vault.Open(ctx, f.Tenant, "alice", secrets.PurposeOTPCode, sealed); !errors.Is(err, secrets.ErrOpenFailed) {
		t.Fatalf("a secret opened under another purpose: %v", err)
	}
}

func TestUsersStillVerifyAfterKeyRotation(t *testing.T) {
	pool, err := pgxpool.New(ctx, testdb.Fresh(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	f := newFixtureOn(t, pool, nil)
	secret, codes := f.EnrolTOTP("rosa")

	// Rotation runs with the new key first and the old one still present.
	k2 := mustKey(t, "k2")
	both, err := secrets.NewKeyring(k2, f.MasterKey)
	if err != nil {
		t.Fatal(err)
	}
	n, err := secrets.NewVault(f.Pool, both, rand.Reader).Rotate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n < 1 {
		t.Fatalf("rotated %d keys", n)
	}
	onlyNew, err := secrets.NewKeyring(k2)
	if err != nil {
		t.Fatal(err)
	}
	svc := commands.New(f.Store, secrets.NewVault(f.Pool, onlyNew, rand.Reader), f.Codes, f.Clock.Now, rand.Reader)
	f.Clock.Advance(time.Minute)
	if _, err := svc.VerifyTOTP(ctx, as("rosa"), commands.VerifyTOTP{TenantID: f.Tenant, UserID: "rosa", Code: f.CodeAt(secret, 0)}); err != nil {
		t.Fatalf("after rotation: %v", err)
	}
	if _, err := svc.ConsumeBackupCode(ctx, as("rosa"), commands.ConsumeBackupCode{TenantID: f.Tenant, UserID: "rosa", Code: codes[0]}); err != nil {
		t.Fatalf("backup code after rotation: %v", err)
	}
}

func TestForgetUserMakesSecretsUnreadable(t *testing.T) {
	f := newFixture(t, nil)
	f.EnrolTOTP("gone")
	if _, err := f.Svc.ForgetUser(ctx, as("gone"), commands.ForgetUser{TenantID: f.Tenant, UserID: "gone"}); err == nil {
		t.Fatal("a user forgot themself")
	}
	if _, err := f.Svc.ForgetUser(ctx, admin, commands.ForgetUser{TenantID: f.Tenant, UserID: "gone"}); err != nil {
		t.Fatal(err)
	}
	var sealed string
	for _, r := range f.Records("gone") {
		if e, ok := r.Event.(*domain.TOTPEnrollmentStarted); ok {
			sealed = e.SealedSecret
		}
	}
	if _, err := f.Vault.Open(ctx, f.Tenant, "gone", secrets.PurposeTOTPSecret, sealed); !errors.Is(err, secrets.ErrKeyErased) {
		t.Fatalf("open after erasure: %v", err)
	}
	if s := f.Status("gone"); s.Status != domain.StatusErased {
		t.Fatalf("status = %s", s.Status)
	}
	_, err := f.Svc.StartTOTPEnrollment(ctx, as("gone"), commands.StartTOTPEnrollment{TenantID: f.Tenant, UserID: "gone"})
	wantErr(t, err, domain.KindNotFound, domain.CodeUserForgotten)
}
