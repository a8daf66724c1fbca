package commands_test

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twofactor/twofactor/commands"
	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/internal/testkit"
)

const racers = 50

// race runs fn from many goroutines released at once and counts the successes.
func race(fn func() error) (successes int64, errs []error) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	start := make(chan struct{})
	var ok atomic.Int64
	for i := 0; i < racers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			if err := fn(); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
				return
			}
			ok.Add(1)
		}()
	}
	close(start)
	wg.Wait()
	return ok.Load(), errs
}

func assertContiguous(t *testing.T, f *testkit.Fixture, user string) {
	t.Helper()
	for i, r := range f.Records(user) {
		if r.Version != int64(i+1) {
			t.Fatalf("%s: record %d has version %d", user, i, r.Version)
		}
	}
}

func TestOneBackupCodeRacedFiftyTimesWorksOnce(t *testing.T) {
	f := newFixture(t, nil)
	_, codes := f.EnrolTOTP("racer")
	wins, errs := race(func() error {
		_, err := f.Svc.ConsumeBackupCode(ctx, as("racer"), commands.ConsumeBackupCode{TenantID: f.Tenant, UserID: "racer", Code: codes[0]})
		return err
	})
	if wins != 1 {
		t.Fatalf("%d goroutines logged in with one backup code, want 1 (errors: %v)", wins, errs[:min(3, len(errs))])
	}
	if n := f.CountEvents("racer", "BackupCodeConsumed"); n != 1 {
		t.Fatalf("%d BackupCodeConsumed events, want 1", n)
	}
	for _, err := range errs {
		if k := domain.KindOf(err); k == "" {
			t.Fatalf("unexpected error: %v", err)
		}
	}
	assertContiguous(t, f, "racer")
	if s := f.Status("racer"); s.BackupCodesRemaining != 9 {
		t.Errorf("%d codes remain, want 9", s.BackupCodesRemaining)
	}
}

func TestOneTOTPCodeRacedFiftyTimesWorksOnce(t *testing.T) {
	f := newFixture(t, nil)
	secret, _ := f.EnrolTOTP("racer")
	f.Clock.Advance(60e9)
	code := f.CodeAt(secret, 0)
	wins, errs := race(func() error {
		_, err := f.Svc.VerifyTOTP(ctx, as("racer"), commands.VerifyTOTP{TenantID: f.Tenant, UserID: "racer", Code: code})
		return err
	})
	if wins != 1 {
		t.Fatalf("%d goroutines logged in with one TOTP code, want 1 (errors: %d)", wins, len(errs))
	}
	if n := f.CountEvents("racer", "TOTPVerified"); n != 1 {
		t.Fatalf("%d TOTPVerified events, want 1", n)
	}
	assertContiguous(t, f, "racer")
}

func TestOneEmailedCodeRacedFiftyTimesWorksOnce(t *testing.T) {
	f := newFixture(t, nil)
	const u = "mailer"
	if _, err := f.Svc.StartOTPMethodSetup(ctx, as(u), commands.StartOTPMethodSetup{TenantID: f.Tenant, UserID: u, Method: domain.MethodEmail, Destination: "mailer@example.com"}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Svc.ConfirmOTPMethod(ctx, as(u), commands.ConfirmOTPMethod{TenantID: f.Tenant, UserID: u, Method: domain.MethodEmail, Code: f.SentCode(u)}); err != nil {
		t.Fatal(err)
	}
	f.Clock.Advance(time.Hour)
	if _, err := f.Svc.StartLoginChallenge(ctx, as(u), commands.StartLoginChallenge{TenantID: f.Tenant, UserID: u}); err != nil {
		t.Fatal(err)
	}
	code := f.SentCode(u)
	wins, errs := race(func() error {
		_, err := f.Svc.VerifyOTP(ctx, as(u), commands.VerifyOTP{TenantID: f.Tenant, UserID: u, Method: domain.MethodEmail, Code: code})
		return err
	})
	if wins != 1 {
		t.Fatalf("%d goroutines logged in with one emailed code, want 1 (errors: %d)", wins, len(errs))
	}
	if n := f.CountEvents(u, "OTPVerified"); n != 1 {
		t.Fatalf("%d OTPVerified events, want 1", n)
	}
	assertContiguous(t, f, u)
}

func TestParallelWrongCodesLockAfterTheLimit(t *testing.T) {
	f := newFixture(t, nil)
	secret, _ := f.EnrolTOTP("brute")
	f.Clock.Advance(60e9)
	wrong := f.WrongCode(secret)
	wins, _ := race(func() error {
		_, err := f.Svc.VerifyTOTP(ctx, as("brute"), commands.VerifyTOTP{TenantID: f.Tenant, UserID: "brute", Code: wrong})
		return err
	})
	if wins != 0 {
		t.Fatalf("%d wrong codes were accepted", wins)
	}
	if n := f.CountEvents("brute", "TOTPCheckFailed"); n > 5 || n == 0 {
		t.Fatalf("%d failures recorded, want 1..5 before the lock", n)
	}
	if n := f.CountEvents("brute", "TwoFactorLocked"); n != 1 {
		t.Fatalf("%d TwoFactorLocked events, want 1", n)
	}
	assertContiguous(t, f, "brute")
	if s := f.Status("brute"); s.Status != domain.StatusLocked {
		t.Errorf("status = %s, want locked", s.Status)
	}
	// Even the right code is refused while locked.
	_, err := f.Svc.VerifyTOTP(ctx, as("brute"), commands.VerifyTOTP{TenantID: f.Tenant, UserID: "brute", Code: f.CodeAt(secret, 30e9)})
	wantErr(t, err, domain.KindLocked, domain.CodeLocked)
}
