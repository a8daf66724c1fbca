package eventstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// A Unit is one transaction shared by every write of a request, held open
// after the command that began it so that the caller can add its own record
// (the idempotent response) and commit both together. Without it a crash
// between a command's commit and the recording of its answer lets a retry run
// the command a second time.
//
// The transaction begins at the first write, not with the request, so that a
// request holds no connection while it reads and decides, and onBegin runs
// right after BEGIN: it may take a lock or claim a row that makes concurrent
// requests of the same unit wait for this one's outcome.
type Unit struct {
	pool    *pgxpool.Pool
	onBegin func(ctx context.Context, tx pgx.Tx) error
	tx      pgx.Tx
	err     error
	done    bool
}

// NewUnit returns a unit over pool; onBegin may be nil.
func NewUnit(pool *pgxpool.Pool, onBegin func(ctx context.Context, tx pgx.Tx) error) *Unit {
	return &Unit{pool: pool, onBegin: onBegin}
}

type unitKey struct{}

// WithUnit makes every write below ctx that goes through InTx join u.
func WithUnit(ctx context.Context, u *Unit) context.Context {
	return context.WithValue(ctx, unitKey{}, u)
}

func unitOf(ctx context.Context) *Unit {
	u, _ := ctx.Value(unitKey{}).(*Unit)
	return u
}

// ErrUnitClosed: a write came after the unit was committed or rolled back.
var ErrUnitClosed = errors.New("eventstore: the request's transaction has ended")

// Begun reports whether anything was written in the unit.
func (u *Unit) Begun() bool { return u.tx != nil }

// Err is the error that stopped the unit from beginning (onBegin's), if any.
func (u *Unit) Err() error { return u.err }

// Tx is the unit's transaction, nil until the first write.
func (u *Unit) Tx() pgx.Tx { return u.tx }

func (u *Unit) begin(ctx context.Context) (pgx.Tx, error) {
	if u.done {
		return nil, ErrUnitClosed
	}
	if u.err != nil {
		return nil, u.err
	}
	if u.tx != nil {
		return u.tx, nil
	}
	tx, err := u.pool.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("eventstore: begin: %w", err)
	}
	if u.onBegin != nil {
		if err := u.onBegin(ctx, tx); err != nil {
			_ = tx.Rollback(context.WithoutCancel(ctx))
			u.err = err
			return nil, err
		}
	}
	u.tx = tx
	return tx, nil
}

// Commit commits what the unit wrote; a unit that wrote nothing commits nothing.
// An error means the outcome is unknown to the caller when the connection was
// lost during COMMIT: a retry must find out which it was.
func (u *Unit) Commit(ctx context.Context) error {
	if u.done {
		return ErrUnitClosed
	}
	u.done = true
	if u.tx == nil {
		return nil
	}
	return u.tx.Commit(ctx)
}

// Rollback discards what the unit wrote; after Commit it does nothing.
func (u *Unit) Rollback(ctx context.Context) {
	if u.done {
		return
	}
	u.done = true
	if u.tx != nil {
		_ = u.tx.Rollback(context.WithoutCancel(ctx))
	}
}

// InTx runs fn in a transaction: inside the unit of ctx when there is one (in a
// savepoint, so that an error of fn, such as a concurrency conflict the command
// retries, undoes fn's writes and leaves the unit usable), otherwise in a
// transaction of its own on pool that commits when fn succeeds.
func InTx(ctx context.Context, pool *pgxpool.Pool, fn func(tx pgx.Tx) error) error {
	u := unitOf(ctx)
	if u == nil {
		return pgx.BeginFunc(ctx, pool, fn)
	}
	tx, err := u.begin(ctx)
	if err != nil {
		return err
	}
	return pgx.BeginFunc(ctx, tx, fn)
}

// InOpenTx runs fn inside the unit of ctx when one has begun, and otherwise
// directly on pool: for a write that must not commit before the command it
// belongs to (a snapshot of the state the command produced), but that alone
// does not begin a unit.
func InOpenTx(ctx context.Context, pool *pgxpool.Pool, fn func(q Querier) error) error {
	if u := unitOf(ctx); u != nil && u.tx != nil && !u.done {
		return pgx.BeginFunc(ctx, u.tx, func(tx pgx.Tx) error { return fn(tx) })
	}
	return fn(pool)
}

// Querier is what pgxpool.Pool and pgx.Tx share for single statements.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Reader is the unit's transaction when one has begun (it sees the request's
// own uncommitted writes and needs no second connection), otherwise pool.
func Reader(ctx context.Context, pool *pgxpool.Pool) Querier {
	if u := unitOf(ctx); u != nil && u.tx != nil && !u.done {
		return u.tx
	}
	return pool
}
