package messaging

import (
	"context"
	stdsql "database/sql"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Tx is the transaction a watermill-sql subscriber reads a batch of messages in
// and acknowledges them in. A handler that writes through it (or through a hook)
// commits its effects atomically with the consumer group's offset: the effect of
// a message is committed exactly when the message is acknowledged.
//
// Hooks let a handler defer its writes to the end of the batch (one round trip for
// a hundred messages instead of one per message): BeforeCommit runs inside the
// transaction after the offset update and before COMMIT; if it fails, the
// transaction rolls back and the whole batch is delivered again.
//
// The subscriber stops waiting for a handler at shutdown or at the ack deadline,
// and then acknowledges the batch and commits while the handler may still run:
// every use of the connection (the subscriber's queries, the commit, a
// handler's Use) is serialised by conn, and Use refuses once the transaction has
// ended.
type Tx struct {
	tx  pgx.Tx
	ctx context.Context

	conn sync.Mutex
	done bool
	// abandoned: a handler found the transaction unusable (its connection
	// lost, or an effect it can never write); nothing of it may commit.
	abandoned error

	mu    sync.Mutex
	keys  []any
	hooks map[any]TxHook
	// failed counts failed commits of the beginner, for its backoff.
	failed *atomic.Int64
}

// TxHook takes part in a subscriber transaction.
type TxHook interface {
	// BeforeCommit runs inside the transaction just before COMMIT.
	BeforeCommit(ctx context.Context, tx pgx.Tx) error
	// AfterCommit runs once the transaction committed.
	AfterCommit()
	// AfterRollback runs when the transaction rolled back or failed to commit.
	AfterRollback()
}

// TxFromMessage returns the subscriber transaction a message was delivered in.
// It is false for messages that do not come from this package's subscribers
// (PostgreSQL or NATS), for example a test calling a handler directly.
func TxFromMessage(msg *message.Message) (*Tx, bool) {
	if t, ok := msg.Context().Value(txKey{}).(*Tx); ok {
		return t, true // delivered from NATS JetStream (natsconsumer.go)
	}
	t, ok := wsql.TxFromContext(msg.Context())
	if !ok {
		return nil, false
	}
	tx, ok := t.(*Tx)
	return tx, ok
}

// txKey carries the transaction of a message that did not come from
// watermill-sql (the NATS consumers open one per message or batch).
type txKey struct{}

func withTx(ctx context.Context, t *Tx) context.Context { return context.WithValue(ctx, txKey{}, t) }

// Pgx is the underlying transaction, for hooks (BeforeCommit receives it too).
// A handler uses Use instead.
func (t *Tx) Pgx() pgx.Tx { return t.tx }

// ErrTxDone: the subscriber transaction has ended (committed or rolled back)
// while a handler still ran. It wraps context.Canceled: the message was not
// acknowledged, is delivered again, and is not parked in the poison queue.
var ErrTxDone = fmt.Errorf("messaging: the subscriber transaction has ended: %w", context.Canceled)

// ErrTxAbandoned: a handler abandoned the subscriber transaction. Its batch rolls
// back and is read again in a new transaction; the messages handed out
// meanwhile are acknowledged into a transaction that never commits.
var ErrTxAbandoned = errors.New("messaging: the subscriber transaction was abandoned; its batch is read again")

// Abandon makes the transaction roll back instead of committing, whatever is
// handed out in it afterwards, so that its batch is read again from the last
// committed offset: the way out of a transaction whose connection died (a
// retry in it can never succeed) and of a batch a handler must read again
// another way (the projector isolating an event). Messages of the batch are
// then acknowledged at once (see Retry), without being handled.
func (t *Tx) Abandon(cause error) {
	t.conn.Lock()
	defer t.conn.Unlock()
	if t.abandoned == nil {
		if cause == nil {
			cause = ErrTxAbandoned
		}
		t.abandoned = cause
	}
}

// Abandoned is the cause given to Abandon, or nil.
func (t *Tx) Abandoned() error {
	t.conn.Lock()
	defer t.conn.Unlock()
	return t.abandoned
}

// Use runs fn with the transaction, never concurrently with the subscriber's own
// queries or the commit; ErrTxDone once the transaction has ended, and
// ErrTxAbandoned once it was abandoned.
func (t *Tx) Use(fn func(pgx.Tx) error) error {
	t.conn.Lock()
	defer t.conn.Unlock()
	if t.abandoned != nil {
		return fmt.Errorf("%w (%v)", ErrTxAbandoned, t.abandoned)
	}
	if t.done {
		return ErrTxDone
	}
	return fn(t.tx)
}

// Hook returns the hook registered under key, creating it with create on first
// use in this transaction. Keys make registration idempotent: a handler retried
// or duplicated by a middleware finds the hook it registered before.
func (t *Tx) Hook(key any, create func() TxHook) TxHook {
	t.mu.Lock()
	defer t.mu.Unlock()
	if h, ok := t.hooks[key]; ok {
		return h
	}
	if t.hooks == nil {
		t.hooks = map[any]TxHook{}
	}
	h := create()
	t.hooks[key] = h
	t.keys = append(t.keys, key)
	return h
}

func (t *Tx) registered() []TxHook {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]TxHook, len(t.keys))
	for i, k := range t.keys {
		out[i] = t.hooks[k]
	}
	return out
}

// ExecContext and QueryContext serve watermill-sql's own queries. (The rows of
// its select are read before any message of the batch is handed out.)
func (t *Tx) ExecContext(ctx context.Context, query string, args ...any) (wsql.Result, error) {
	t.conn.Lock()
	defer t.conn.Unlock()
	if t.abandoned != nil {
		// The subscriber's acknowledgement fails: it rolls back and reads again.
		return nil, fmt.Errorf("%w (%v)", ErrTxAbandoned, t.abandoned)
	}
	tag, err := t.tx.Exec(ctx, query, args...)
	return wsql.PgxResult{CommandTag: tag}, err
}

func (t *Tx) QueryContext(ctx context.Context, query string, args ...any) (wsql.Rows, error) {
	t.conn.Lock()
	defer t.conn.Unlock()
	if t.abandoned != nil {
		return nil, fmt.Errorf("%w (%v)", ErrTxAbandoned, t.abandoned)
	}
	rows, err := t.tx.Query(ctx, query, args...)
	return wsql.PgxRows{Rows: rows}, err
}

// end commits or rolls back under the connection lock, once.
func (t *Tx) end(commit bool) error {
	t.conn.Lock()
	defer t.conn.Unlock()
	if t.done {
		return pgx.ErrTxClosed
	}
	t.done = true
	if commit && t.abandoned != nil {
		_ = t.tx.Rollback(context.WithoutCancel(t.ctx))
		return fmt.Errorf("%w (%v)", ErrTxAbandoned, t.abandoned)
	}
	// Not cut short by shutdown: a COMMIT cancelled in flight may have committed
	// on the server while reporting a failure here.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(t.ctx), 30*time.Second)
	defer cancel()
	if commit {
		return t.tx.Commit(ctx)
	}
	return t.tx.Rollback(ctx)
}

// Commit runs the hooks' BeforeCommit, then commits. The subscriber only logs a
// failed commit; the offset did not move, so the batch is read again.
//
// The hooks run without the connection lock: a hook excludes its own handlers
// (which take their locks in the order hook, then connection) and the
// subscriber does nothing else meanwhile.
func (t *Tx) Commit() error {
	hooks := t.registered()
	if cause := t.Abandoned(); cause != nil {
		_ = t.end(false)
		t.afterRollback(hooks)
		return fmt.Errorf("%w (%v)", ErrTxAbandoned, cause)
	}
	for _, h := range hooks {
		if err := h.BeforeCommit(t.ctx, t.tx); err != nil {
			_ = t.end(false)
			t.afterRollback(hooks)
			return fmt.Errorf("messaging: before commit: %w", err)
		}
	}
	if err := t.end(true); err != nil {
		t.afterRollback(hooks)
		return err
	}
	if t.failed != nil {
		t.failed.Store(0)
	}
	for _, h := range hooks {
		h.AfterCommit()
	}
	return nil
}

// Rollback rolls back and tells the hooks.
func (t *Tx) Rollback() error {
	err := t.end(false)
	t.afterRollback(t.registered())
	return err
}

func (t *Tx) afterRollback(hooks []TxHook) {
	if t.failed != nil && (len(hooks) > 0 || t.Abandoned() != nil) {
		t.failed.Add(1)
	}
	for _, h := range hooks {
		h.AfterRollback()
	}
}

// beginner hands watermill-sql a *Tx for every transaction it opens.
type beginner struct {
	pool   *pgxpool.Pool
	failed atomic.Int64
}

func (b *beginner) BeginTx(ctx context.Context, opts *stdsql.TxOptions) (wsql.Tx, error) {
	// After a failed commit (a hook could not write), wait before reading the batch
	// again instead of spinning on it; the wait grows up to 5 s.
	if n := b.failed.Load(); n > 0 {
		d := 10 * time.Millisecond << min(n-1, 9)
		if d > 5*time.Second {
			d = 5 * time.Second
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(d):
		}
	}
	txOpts := pgx.TxOptions{}
	if opts != nil {
		switch opts.Isolation {
		case stdsql.LevelDefault:
		case stdsql.LevelReadCommitted:
			txOpts.IsoLevel = pgx.ReadCommitted
		case stdsql.LevelRepeatableRead:
			txOpts.IsoLevel = pgx.RepeatableRead
		case stdsql.LevelSerializable:
			txOpts.IsoLevel = pgx.Serializable
		default:
			return nil, errors.New("messaging: unsupported isolation level " + opts.Isolation.String())
		}
		if opts.ReadOnly {
			txOpts.AccessMode = pgx.ReadOnly
		}
	}
	tx, err := b.pool.BeginTx(ctx, txOpts)
	if err != nil {
		return nil, err
	}
	return &Tx{tx: tx, ctx: ctx, failed: &b.failed}, nil
}

func (b *beginner) ExecContext(ctx context.Context, query string, args ...any) (wsql.Result, error) {
	tag, err := b.pool.Exec(ctx, query, args...)
	return wsql.PgxResult{CommandTag: tag}, err
}

func (b *beginner) QueryContext(ctx context.Context, query string, args ...any) (wsql.Rows, error) {
	rows, err := b.pool.Query(ctx, query, args...)
	return wsql.PgxRows{Rows: rows}, err
}
