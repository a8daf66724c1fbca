package commands_test

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

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

// BenchmarkLogin measures a TOTP login of a user enrolled like the HTTP
// benchmark's users, over b.N logins of one user (so over whole snapshot
// intervals), by snapshot interval: besides time and allocations per login,
// the CPU of this process (cpu-ms/op), the CPU of the PostgreSQL backends
// serving this database (pg-cpu-ms/op: other databases of a shared server do
// not count) and PostgreSQL's transactions (pg-txn/op, pg_stat_database).
//
//	go test -run '^$' -bench 'BenchmarkLogin$' -benchtime 400x -count 5 ./commands
func BenchmarkLogin(b *testing.B) {
	for _, every := range []int64{0, 100, 50, 20, 10, 5} {
		name := fmt.Sprintf("snapshot-every=%d", every)
		if every == 0 {
			name = "snapshot-every=default"
		}
		b.Run(name, func(b *testing.B) {
			f := testkit.New(b, testdbPool(b), nil)
			if every > 0 {
				f.Svc.WithSnapshotEvery(every)
			}
			user := "login"
			secret, _ := f.EnrolTOTP(user)
			if _, err := f.Svc.SetContactAddress(ctx, as(user), commands.SetContactAddress{TenantID: f.Tenant, UserID: user,
				Method: domain.MethodEmail, Address: "login@example.com"}); err != nil {
				b.Fatal(err)
			}
			m := startCost(b, f)
			for b.Loop() {
				f.Clock.Advance(30 * time.Second)
				if _, err := f.Svc.VerifyTOTP(ctx, as(user), commands.VerifyTOTP{TenantID: f.Tenant, UserID: user, Code: f.CodeAt(secret, 0)}); err != nil {
					b.Fatal(err)
				}
			}
			m.report(b)
		})
	}
}

// cost samples what BenchmarkLogin reports beside time and allocations.
type cost struct {
	f       *testkit.Fixture
	self    time.Duration
	pg      map[int]time.Duration
	xacts   int64
	started bool
}

func processCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * time.Second / 100 // USER_HZ
}

// backendsCPU is the CPU time of every backend connected to the fixture's
// database, by pid.
func backendsCPU(b *testing.B, f *testkit.Fixture) map[int]time.Duration {
	rows, err := f.Pool.Query(ctx, `SELECT pid FROM pg_stat_activity WHERE datname = current_database()`)
	if err != nil {
		b.Fatal(err)
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		b.Fatal(err)
	}
	out := map[int]time.Duration{}
	for _, pid := range pids {
		out[int(pid)] = processCPU(int(pid))
	}
	return out
}

func transactions(b *testing.B, f *testkit.Fixture) int64 {
	var n int64
	if err := f.Pool.QueryRow(ctx, `SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()`).Scan(&n); err != nil {
		b.Fatal(err)
	}
	return n
}

// statsDelay: backends report their transaction counts when idle, at most
// once a second.
const statsDelay = 1100 * time.Millisecond

func startCost(b *testing.B, f *testkit.Fixture) *cost {
	time.Sleep(statsDelay)
	return &cost{f: f, self: processCPU(os.Getpid()), pg: backendsCPU(b, f), xacts: transactions(b, f)}
}

func (c *cost) report(b *testing.B) {
	b.StopTimer()
	self := processCPU(os.Getpid()) - c.self
	var pg time.Duration
	for pid, t := range backendsCPU(b, c.f) {
		pg += t - c.pg[pid] // a backend started since counts whole
	}
	time.Sleep(statsDelay)
	// The two readings of the counters are transactions themselves: the first
	// is counted in the second, the second is not.
	xacts := transactions(b, c.f) - c.xacts - 2
	n := float64(b.N)
	b.ReportMetric(float64(self)/float64(time.Millisecond)/n, "cpu-ms/op")
	b.ReportMetric(float64(pg)/float64(time.Millisecond)/n, "pg-cpu-ms/op")
	b.ReportMetric(float64(xacts)/n, "pg-txn/op")
}
