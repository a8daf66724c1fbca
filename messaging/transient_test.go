package messaging_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/internal/testdb"
	"github.com/twofactor/twofactor/messaging"
)

func TestTransientClassification(t *testing.T) {
	pg := func(code string) error { return fmt.Errorf("wrapped: %w", &pgconn.PgError{Code: code, Message: "x"}) }
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"connection failure 08006", pg("08006"), true},
		{"connection does not exist 08003", pg("08003"), true},
		{"admin shutdown 57P01", pg("57P01"), true},
		{"crash shutdown 57P02", pg("57P02"), true},
		{"cannot connect now 57P03", pg("57P03"), true},
		{"serialization failure 40001", pg("40001"), true},
		{"deadlock 40P01", pg("40P01"), true},
		{"too many connections 53300", pg("53300"), true},
		{"unique violation 23505", pg("23505"), false},
		{"check violation 23514", pg("23514"), false},
		{"unsupported unicode escape 22P05", pg("22P05"), false},
		{"undefined table 42P01", pg("42P01"), false},
		{"deadline", fmt.Errorf("query: %w", context.DeadlineExceeded), true},
		{"canceled", context.Canceled, true},
		{"eof", fmt.Errorf("read: %w", io.ErrUnexpectedEOF), true},
		{"reset", &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}, true},
		{"refused", fmt.Errorf("dial: %w", syscall.ECONNREFUSED), true},
		{"abandoned", messaging.ErrTxAbandoned, true},
		{"tx closed", pgx.ErrTxClosed, true},
		{"a bug", errors.New("projections: event version 3 does not follow 1"), false},
		{"a domain error", domain.Invalid(domain.CodeInvalidArgument, "no"), false},
	} {
		if got := messaging.Transient(tc.err); got != tc.want {
			t.Errorf("%s: Transient(%v) = %v, want %v", tc.name, tc.err, got, tc.want)
		}
	}
}

// The errors a real lost connection produces are transient.
func TestLostConnectionsAreTransient(t *testing.T) {
	url := testdb.Fresh(t)
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.Close(ctx); err != nil {
		t.Fatal(err)
	}
	_, err = conn.Exec(ctx, `SELECT 1`)
	if err == nil || !messaging.Transient(err) {
		t.Errorf("closed connection: %v is not transient", err)
	}

	victim, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer victim.Close(ctx)
	killer, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer killer.Close()
	if _, err := killer.Exec(ctx, `SELECT pg_terminate_backend($1)`, victim.PgConn().PID()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	_, err = victim.Exec(ctx, `SELECT 1`)
	if err == nil || !messaging.Transient(err) {
		t.Errorf("terminated backend: %v is not transient", err)
	}
	_, err = victim.Exec(ctx, `SELECT 1`)
	if err == nil || !messaging.Transient(err) {
		t.Errorf("after the termination: %v is not transient", err)
	}

	killer.Close()
	_, err = killer.Exec(ctx, `SELECT 1`)
	if err == nil || !messaging.Transient(err) {
		t.Errorf("closed pool: %v is not transient", err)
	}
}

// A handler failing with transient errors more times than MaxRetries is
// retried until it succeeds and nothing reaches the poison queue; the effects
// written in the abandoned transactions (of that message and of the others in
// its batch) commit once.
func TestTransientErrorsAreRetriedNeverPoisoned(t *testing.T) {
	pool := freshPool(t)
	if _, err := pool.Exec(ctx, `CREATE TABLE transient_effects (tenant TEXT PRIMARY KEY, n INT NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	calls := map[string]int{}
	handle := func(msg *message.Message) error {
		rec, err := messaging.DecodeMessage(msg)
		if err != nil {
			return err
		}
		mu.Lock()
		calls[rec.TenantID]++
		n := calls[rec.TenantID]
		mu.Unlock()
		tx, ok := messaging.TxFromMessage(msg)
		if !ok {
			return errors.New("no transaction")
		}
		if err := tx.Use(func(tx pgx.Tx) error {
			_, err := tx.Exec(msg.Context(), `INSERT INTO transient_effects VALUES ($1, 1) ON CONFLICT (tenant) DO UPDATE SET n = transient_effects.n + 1`, rec.TenantID)
			return err
		}); err != nil {
			return err
		}
		// More failures than MaxRetries (2), of the kinds a PostgreSQL restart,
		// a lost connection and a conflict give.
		if rec.TenantID == "t2" && n <= 5 {
			return fmt.Errorf("write: %w", &pgconn.PgError{Code: []string{"57P01", "08006", "40001"}[n%3]})
		}
		return nil
	}
	r, err := messaging.NewRouter(pool, fastRetries(), watermill.NopLogger{}, []messaging.Consumer{{Name: "flaky", Handle: handle}})
	if err != nil {
		t.Fatal(err)
	}
	run(t, r)
	publish(t, pool, "t1", "t2", "t3")
	waitFor(t, "the effects", 20*time.Second, func() bool {
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM transient_effects`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 3
	})
	time.Sleep(200 * time.Millisecond)
	rows, err := pool.Query(ctx, `SELECT tenant, n FROM transient_effects ORDER BY tenant`)
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[struct {
		Tenant string
		N      int
	}])
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range got {
		if g.N != 1 {
			t.Errorf("tenant %s: effect committed %d times", g.Tenant, g.N)
		}
	}
	var poisoned int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM watermill_twofactor_poison`).Scan(&poisoned); err != nil {
		t.Fatal(err)
	}
	if poisoned != 0 {
		t.Fatalf("%d messages poisoned by transient errors", poisoned)
	}
	mu.Lock()
	defer mu.Unlock()
	if calls["t2"] != 6 {
		t.Errorf("the failing message was handled %d times", calls["t2"])
	}
}
