package commands_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/twofactor/twofactor/commands"
	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/eventstore"
	"github.com/twofactor/twofactor/internal/testkit"
)

// growStream appends n-len(stream) past logins to a user's stream, many per
// transaction, as years of daily logins would have left it.
func growStream(b *testing.B, f *testkit.Fixture, user string, n int) {
	b.Helper()
	recs := f.Records(user)
	version := int64(len(recs))
	step := f.Clock.Now().Unix()/30 - int64(n)
	meta := eventstore.Metadata{Actor: domain.Actor{Kind: domain.ActorUser, ID: user}}
	for version < int64(n) {
		var batch []domain.Event
		for i := 0; i < 500 && version+int64(len(batch)) < int64(n); i++ {
			batch = append(batch, &domain.TOTPVerified{Step: step})
			step++
		}
		if _, err := f.Store.Append(ctx, f.Tenant, eventstore.UserStream(f.Tenant, user), version, batch, meta); err != nil {
			b.Fatal(err)
		}
		version += int64(len(batch))
	}
}

// BenchmarkVerifyTOTPByStreamLength measures one login for a user whose stream
// holds 10, 1,000 or 10,000 events, with snapshots (the default) and without.
func BenchmarkVerifyTOTPByStreamLength(b *testing.B) {
	for _, snapshots := range []bool{true, false} {
		for _, n := range []int{10, 1000, 10000} {
			b.Run(fmt.Sprintf("snapshots=%v/events=%d", snapshots, n), func(b *testing.B) {
				f := testkit.New(b, testdbPool(b), nil)
				if !snapshots {
					f.Svc.WithSnapshotEvery(0)
				}
				user := fmt.Sprintf("daily-%d", n)
				secret, _ := f.EnrolTOTP(user)
				growStream(b, f, user, n)
				f.Clock.Advance(30 * time.Second)
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					f.Clock.Advance(30 * time.Second)
					if _, err := f.Svc.VerifyTOTP(ctx, as(user), commands.VerifyTOTP{TenantID: f.Tenant, UserID: user, Code: f.CodeAt(secret, 0)}); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

func BenchmarkMatchTOTP(b *testing.B) {
	secret := "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
	p := domain.TOTPParams{Algorithm: "SHA1", Digits: 6, PeriodSecs: 30}
	now := time.Unix(1_800_000_000, 0)
	for i := 0; i < b.N; i++ {
		if _, err := commands.MatchTOTP(secret, p, 1, "123456", now); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSealAndOpen(b *testing.B) {
	f := testkit.New(b, testdbPool(b), nil)
	sealed, err := f.Vault.Seal(ctx, f.Tenant, "bench", "totp-secret", []byte("JBSWY3DPEHPK3PXP"))
	if err != nil {
		b.Fatal(err)
	}
	b.Run("seal", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if _, err := f.Vault.Seal(ctx, f.Tenant, "bench", "totp-secret", []byte("JBSWY3DPEHPK3PXP")); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("open", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if _, err := f.Vault.Open(ctx, f.Tenant, "bench", "totp-secret", sealed); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkBackupCodeHash(b *testing.B) {
	f := testkit.New(b, testdbPool(b), nil)
	code, _ := domain.NormaliseBackupCode("abcde-fghjk")
	stream := eventstore.UserStream(f.Tenant, "bench")
	for i := 0; i < b.N; i++ {
		f.Codes.Hash(stream, code)
	}
}

// BenchmarkFoldStream measures replaying a 1,000-event stream in memory.
func BenchmarkFoldStream(b *testing.B) {
	f := testkit.New(b, testdbPool(b), nil)
	f.EnrolTOTP("fold")
	growStream(b, f, "fold", 1000)
	recs := f.Records("fold")
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		u := domain.NewUserTwoFactor(f.Tenant, "fold")
		for _, r := range recs {
			u.Apply(r.Event, r.RecordedAt)
		}
	}
}

func BenchmarkEventEncoding(b *testing.B) {
	e := &domain.BackupCodeConsumed{Index: 3, Remaining: 6, LowThreshold: 2}
	for i := 0; i < b.N; i++ {
		payload, err := eventstore.Encode(e)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := eventstore.Decode(e.EventType(), eventstore.SchemaVersion, payload); err != nil {
			b.Fatal(err)
		}
	}
}
