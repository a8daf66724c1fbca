package messaging

import (
	"context"
	stdsql "database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/components/forwarder"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"

	"github.com/twofactor/twofactor/eventstore"
)

// ForwarderGroup is the consumer group, on the PostgreSQL event log, of the
// forwarders to NATS. Every forwarder of every process shares it: watermill-sql
// locks the group's offset row while a batch is read and forwarded, so one
// forwards at a time and the others stand by.
// WARNING: durable name: renaming it forwards the whole log to NATS again
// (harmless, consumers are idempotent, but slow).
const ForwarderGroup = "forwarder.nats"

// Forwarder moves the event log from PostgreSQL to NATS JetStream with
// watermill's forwarder component (components/forwarder).
//
// Append is not changed by the bus setting: it writes the events in the
// command's transaction, and API processes never talk to NATS (a NATS outage
// cannot fail a command; the forwarder falls behind meanwhile). The forwarder
// reads the log (eventstore.LogSchema) in its own consumer group, and a
// middleware wraps each event in the forwarder's envelope with its destination: the partition
// subject of the row's event stream (NATSConfig.SubjectOf). The forwarder
// unwraps it and publishes it to JetStream (pipelinedPublisher: watermill-nats'
// message format, Nats-Msg-Id = event id, each message chained to the one
// before), and the group's offset commits only once JetStream acknowledged every
// event it covers. So the stream holds the log's delivery order, and a crash between
// publishing and committing re-publishes rows that JetStream drops as
// duplicates.
type Forwarder struct {
	fwd       *forwarder.Forwarder
	nc        *nats.Conn
	ncfg      NATSConfig
	logger    watermill.LoggerAdapter
	listener  *Listener
	ownL      bool
	forwarded atomic.Int64
	lead      *leader
}

// NewForwarder builds a forwarder. cfg.Listener (when set) wakes it at each
// commit; otherwise it holds a LISTEN connection of its own while it runs.
// cfg.BatchSize, PollInterval, ResendInterval and AckDeadline apply to its
// reading of the log.
func NewForwarder(pool *pgxpool.Pool, cfg Config, ncfg NATSConfig, logger watermill.LoggerAdapter) (*Forwarder, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := ncfg.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	logger = logger.With(watermill.LogFields{"component": "forwarder"})
	// No reconnect buffer: a publish while disconnected fails at once instead of
	// being sent later behind the forwarder's back.
	nc, err := ConnectNATS(ncfg, "twofactord forwarder", logger, nats.ReconnectBufSize(-1))
	if err != nil {
		return nil, err
	}
	f := &Forwarder{nc: nc, ncfg: ncfg, logger: logger}
	if cfg.Listener == nil && cfg.Backoff == nil {
		cfg.Listener = NewListener(pool, logger, EventsChannel)
		f.ownL = true
	}
	f.listener = cfg.Listener
	closing := make(chan struct{})
	f.lead = &leader{pool: pool, key: "twofactor.forwarder:" + ForwarderGroup + ":" + ncfg.Stream, retry: ncfg.OwnerRetry, logger: logger}
	inner, err := newForwarderSubscriber(pool, cfg, nc, f.lead, logger, closing)
	if err != nil {
		nc.Close()
		return nil, err
	}
	sub := &subscriber{Subscriber: inner, closing: closing}
	pub, err := newPipelinedPublisher(f)
	if err != nil {
		nc.Close()
		return nil, err
	}
	fcfg := forwarder.Config{
		// The forwarder reads the event topic itself (see envelope).
		ForwarderTopic: eventstore.Topic,
		Middlewares:    []message.HandlerMiddleware{f.envelope},
		CloseTimeout:   15 * time.Second,
	}
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: fcfg.CloseTimeout}, logger)
	if err != nil {
		nc.Close()
		return nil, err
	}
	// A panic is an error, and an error (NATS away) is retried a few times in
	// place and then handed back to the subscriber, which offers the row again:
	// nothing is ever skipped or parked. No poison queue here.
	router.AddMiddleware(middleware.Retry{MaxRetries: 3, InitialInterval: 100 * time.Millisecond, MaxInterval: time.Second,
		Multiplier: 2, Logger: logger}.Middleware, middleware.Recoverer)
	fcfg.Router = router
	fwd, err := forwarder.NewForwarder(sub, pub, logger, fcfg)
	if err != nil {
		nc.Close()
		return nil, err
	}
	f.fwd = fwd
	return f, nil
}

// Run forwards until ctx ends or Close.
func (f *Forwarder) Run(ctx context.Context) error {
	defer f.nc.Close()
	defer f.lead.release()
	if f.ownL {
		lctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go f.listener.Run(lctx) //nolint:errcheck // logs and reconnects until cancelled
	}
	return f.fwd.Run(ctx)
}

// Running is closed once the forwarder runs.
func (f *Forwarder) Running() chan struct{} { return f.fwd.Running() }

// Close stops the forwarder; the row in flight is either committed or read
// again by the next forwarder.
func (f *Forwarder) Close() error { return f.fwd.Close() }

// Forwarded counts the rows this forwarder published (tests and metrics).
func (f *Forwarder) Forwarded() int64 { return f.forwarded.Load() }

// Connected reports whether the NATS connection is up.
func (f *Forwarder) Connected() bool { return f.nc.IsConnected() }

// envelope wraps an event of the log in the forwarder's envelope (through
// forwarder.Publisher, which defines it), addressed to its partition subject.
func (f *Forwarder) envelope(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		streamID := msg.Metadata.Get("stream_id")
		if streamID == "" {
			var env struct {
				StreamID string `json:"stream_id"`
			}
			if err := json.Unmarshal(msg.Payload, &env); err != nil || env.StreamID == "" {
				return nil, fmt.Errorf("messaging: message %s names no stream", msg.UUID)
			}
			streamID = env.StreamID
		}
		var c capture
		if err := forwarder.NewPublisher(&c, forwarder.PublisherConfig{ForwarderTopic: eventstore.Topic}).
			Publish(f.ncfg.SubjectOf(streamID), msg); err != nil {
			return nil, err
		}
		return h(c.msg)
	}
}

// capture is the publisher forwarder.Publisher writes the envelope to.
type capture struct{ msg *message.Message }

func (c *capture) Publish(_ string, msgs ...*message.Message) error {
	if len(msgs) != 1 {
		return errors.New("messaging: one message at a time")
	}
	c.msg = msgs[0]
	return nil
}

func (c *capture) Close() error { return nil }

// newForwarderSubscriber reads the event topic in the forwarder's group. It
// opens a transaction (which locks the group's offset row) only while NATS is
// connected, so an outage holds no transaction open.
func newForwarderSubscriber(pool *pgxpool.Pool, cfg Config, nc *nats.Conn, lead *leader, logger watermill.LoggerAdapter, closing <-chan struct{}) (*wsql.Subscriber, error) {
	ack := cfg.AckDeadline
	poll := cfg.PollInterval
	if poll <= 0 {
		poll = time.Second
	}
	resend := cfg.ResendInterval
	if resend <= 0 {
		resend = 100 * time.Millisecond
	}
	backoff := cfg.Backoff
	if backoff == nil && cfg.Listener != nil {
		backoff = newWakeBackoff(cfg.Listener, EventsChannel, poll, cfg.QuietPollInterval, time.Second, closing)
	}
	return wsql.NewSubscriber(&gatedBeginner{beginner: &beginner{pool: pool}, nc: nc, lead: lead, closing: closing}, wsql.SubscriberConfig{
		ConsumerGroup:    ForwarderGroup,
		SchemaAdapter:    eventstore.LogSchema{BatchSize: cfg.BatchSize},
		OffsetsAdapter:   wsql.DefaultPostgreSQLOffsetsAdapter{},
		PollInterval:     poll,
		ResendInterval:   resend,
		AckDeadline:      &ack,
		BackoffManager:   backoff,
		InitializeSchema: false,
	}, logger)
}

type gatedBeginner struct {
	*beginner
	nc      *nats.Conn
	lead    *leader
	closing <-chan struct{}
}

func (g *gatedBeginner) BeginTx(ctx context.Context, opts *stdsql.TxOptions) (wsql.Tx, error) {
	// Only the polls wait (watermill-sql gives them an isolation level): the
	// transaction that registers the group when subscribing (nil options) must
	// not, or a standby forwarder would never start.
	if opts == nil {
		return g.beginner.BeginTx(ctx, opts)
	}
	if err := waitConnected(ctx, g.nc, 0, g.closing); err != nil {
		return nil, err
	}
	if err := g.lead.wait(ctx, g.closing); err != nil {
		return nil, err
	}
	return g.beginner.BeginTx(ctx, opts)
}

// leader makes one forwarder of all the processes the active one; the others
// wait. The offset row lock alone would keep them correct, but two forwarders
// polling the same group take turns on that lock, and each one's open
// transaction hides the newest commits from the other's next query (the log
// is read below pg_snapshot_xmin): the events would wait for the poll interval.
// The active forwarder holds a session advisory lock on a connection of its
// own; when that connection is gone, so is the lock, and a standby takes over
// within a second.
type leader struct {
	pool    *pgxpool.Pool
	key     string
	retry   time.Duration
	logger  watermill.LoggerAdapter
	mu      sync.Mutex
	conn    *pgx.Conn
	checked time.Time
}

// wait returns once this process is the active forwarder.
func (l *leader) wait(ctx context.Context, closing <-chan struct{}) error {
	for {
		ok, err := l.holds(ctx)
		if ok {
			return nil
		}
		if err != nil {
			l.logger.Error("forwarder election failed; trying again", err, nil)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-closing:
			return errClosing
		case <-time.After(l.retry):
		}
	}
}

func (l *leader) holds(ctx context.Context) (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn != nil {
		if time.Since(l.checked) < time.Second {
			return true, nil
		}
		if err := l.conn.Ping(ctx); err == nil {
			l.checked = time.Now()
			return true, nil
		}
		l.logger.Info("this forwarder lost its lead (its lock connection is gone)", nil)
		_ = l.conn.Close(context.WithoutCancel(ctx))
		l.conn = nil
	}
	conn, err := tryAdvisoryLock(ctx, l.pool, l.key)
	if err != nil || conn == nil {
		return false, err
	}
	l.conn, l.checked = conn, time.Now()
	l.logger.Info("this forwarder is the active one", nil)
	return true, nil
}

func (l *leader) release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn != nil {
		_ = l.conn.Close(context.Background())
		l.conn = nil
	}
}

// ForwarderConfig is the default reading of the log by a forwarder: batches
// as large as the consumers'; a short ack deadline so that a NATS outage in the
// middle of a batch commits what was forwarded and releases the group's lock
// within seconds; and a 100 ms poll behind the wake-ups. A commit notifies the
// forwarder at once, but the row becomes readable only when every older
// transaction has ended (the log is read below pg_snapshot_xmin), and the
// consumers' own transactions, running alongside the commands, often hold that
// horizon back for longer than the wake-up's short chase: with the default 1 s
// poll, one commit in ten waited a second. Only the active forwarder polls, so
// the shorter interval costs one small query every 100 ms (BENCHMARKS.md,
// "Scale-out") while events come; after QuietPollInterval without any, it polls
// at that interval like the consumers (a commit still wakes it at once).
func ForwarderConfig() Config {
	c := DefaultConfig()
	c.PollInterval = 100 * time.Millisecond
	c.AckDeadline = 10 * time.Second
	c.ResendInterval = 250 * time.Millisecond
	return c
}
