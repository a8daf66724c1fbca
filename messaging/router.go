// Package messaging wires watermill: a router over the watermill-sql Postgres
// subscriber, one consumer group per consumer, with recoverer, retry and poison
// queue middlewares. It knows no event types.
//
// Beyond watermill-sql's defaults: subscribers read the event log itself, not
// an outbox (eventstore.LogSchema, with an index range instead of a scan of the
// backlog), are woken by LISTEN/NOTIFY at commit instead of polling
// (listener.go), and hand handlers the
// transaction that acknowledges the batch, with hooks to write their effects in
// it just before COMMIT (tx.go).
package messaging

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/twofactor/twofactor/eventstore"
)

// PoisonTopic receives the messages a consumer could never handle.
// WARNING: durable name; its tables are created by migrations/0002.
const PoisonTopic = "twofactor_poison"

// Consumer is one durable consumer group reading every event.
type Consumer struct {
	// Name is both the watermill handler name and the consumer group.
	// WARNING: durable: renaming it replays the whole history into the consumer.
	Name   string
	Handle message.NoPublishHandlerFunc
}

// Config tunes the subscribers and the retry policy.
type Config struct {
	// PollInterval is the wait after an empty poll.
	PollInterval time.Duration
	// QuietPollInterval replaces PollInterval once a subscriber has seen no
	// event and no notification for that long, while the Listener hears the
	// events channel: an idle consumer then costs one transaction per
	// QuietPollInterval, and a lost notification is caught by the next poll.
	// Values up to PollInterval turn it off.
	QuietPollInterval time.Duration
	// BatchSize is how many events one poll reads.
	BatchSize int
	// AckDeadline redelivers a message whose handler has not finished in time.
	AckDeadline time.Duration
	// MaxRetries of a permanent error before the message goes to the poison
	// queue. Transient errors (Transient) are retried without a limit, waiting
	// from RetryInitial up to RetryMax between tries.
	MaxRetries   int
	RetryInitial time.Duration
	RetryMax     time.Duration
	// ResendInterval is the wait before a nacked message is delivered again.
	ResendInterval time.Duration
	// Listener wakes the subscribers as soon as an event commits (LISTEN/NOTIFY);
	// PollInterval is then only the fallback for a lost notification. When nil,
	// NewRouter runs a listener of its own while the router runs.
	Listener *Listener
	// Backoff, when set, replaces both the poll interval and the wake-ups (plain
	// polling: wsql.NewDefaultBackoffManager). It is shared by every subscriber.
	Backoff wsql.BackoffManager
}

// DefaultConfig: see BENCHMARKS.md ("Read side") for the measurements. With
// wake-ups the poll interval is only a fallback, so it is long: a poll is a
// transaction that locks the group's offset row, and takes a transaction id.
// A batch is one transaction, which holds back what every consumer of the
// cluster can see (pg_snapshot_xmin) while it runs: 250 messages caught up as
// fast as 500 or 1,000 (100 was 10-25 % slower) with a shorter transaction.
func DefaultConfig() Config {
	return Config{
		PollInterval:      time.Second,
		QuietPollInterval: 5 * time.Second,
		BatchSize:         250,
		AckDeadline:       30 * time.Second,
		MaxRetries:        5,
		RetryInitial:      100 * time.Millisecond,
		RetryMax:          5 * time.Second,
		ResendInterval:    100 * time.Millisecond,
	}
}

// Validate refuses settings that would stall or spin.
func (c Config) Validate() error {
	switch {
	case c.PollInterval <= 0 && c.Backoff == nil:
		return errors.New("messaging: poll interval must be positive")
	case c.BatchSize < 1:
		return errors.New("messaging: batch size must be at least 1")
	case c.AckDeadline <= 0:
		return errors.New("messaging: ack deadline must be positive")
	case c.MaxRetries < 0 || c.RetryInitial <= 0 || c.RetryMax < c.RetryInitial:
		return errors.New("messaging: retry settings are inconsistent")
	case c.ResendInterval < 0:
		return errors.New("messaging: resend interval must not be negative")
	}
	return nil
}

// NewSubscriber returns a subscriber of the event log for one consumer group.
// Handlers find its transaction with TxFromMessage.
func NewSubscriber(pool *pgxpool.Pool, cfg Config, group string, logger watermill.LoggerAdapter) (message.Subscriber, error) {
	closing := make(chan struct{})
	sub, err := newSubscriber(pool, cfg, group, logger, closing)
	if err != nil {
		return nil, err
	}
	return &subscriber{Subscriber: sub, closing: closing}, nil
}

// subscriber wakes its backoff when closed, so closing never waits for a poll.
type subscriber struct {
	*wsql.Subscriber
	once    sync.Once
	closing chan struct{}
	onClose func()
}

func (s *subscriber) Close() error {
	s.once.Do(func() {
		close(s.closing)
		if s.onClose != nil {
			defer s.onClose()
		}
	})
	return s.Subscriber.Close()
}

func newSubscriber(pool *pgxpool.Pool, cfg Config, group string, logger watermill.LoggerAdapter, closing <-chan struct{}) (*wsql.Subscriber, error) {
	ack := cfg.AckDeadline
	poll := cfg.PollInterval
	if poll <= 0 {
		poll = time.Second // only reached with a custom Backoff, which ignores it
	}
	resend := cfg.ResendInterval
	if resend <= 0 {
		resend = 100 * time.Millisecond
	}
	backoff := cfg.Backoff
	if backoff == nil && cfg.Listener != nil {
		backoff = newWakeBackoff(cfg.Listener, EventsChannel, poll, cfg.QuietPollInterval, time.Second, closing)
	}
	return wsql.NewSubscriber(&beginner{pool: pool}, wsql.SubscriberConfig{
		ConsumerGroup:  group,
		SchemaAdapter:  eventstore.LogSchema{BatchSize: cfg.BatchSize},
		OffsetsAdapter: wsql.DefaultPostgreSQLOffsetsAdapter{},
		PollInterval:   poll,
		ResendInterval: resend,
		AckDeadline:    &ack,
		BackoffManager: backoff,
		// Tables come from migrations, never from a running process.
		InitializeSchema: false,
	}, logger)
}

// NewRouter builds a router with one handler per consumer, each in its own
// consumer group on the event topic. Extra middlewares (tests add watermill's
// Duplicator and RandomFail) run inside the retry.
func NewRouter(pool *pgxpool.Pool, cfg Config, logger watermill.LoggerAdapter, consumers []Consumer, extra ...message.HandlerMiddleware) (*message.Router, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 15 * time.Second}, logger)
	if err != nil {
		return nil, err
	}
	poisonPublisher, err := wsql.NewPublisher(wsql.BeginnerFromPgx(pool), wsql.PublisherConfig{SchemaAdapter: wsql.DefaultPostgreSQLSchema{}}, logger)
	if err != nil {
		return nil, err
	}
	// Only a permanent error parks a message: a handler cut short by shutdown or
	// the ack deadline, or failing on the database or the network, failed for
	// want of time or of a server, not because of its message. That message is
	// not acknowledged and is delivered again.
	poison, err := middleware.PoisonQueueWithFilter(poisonPublisher, PoisonTopic, func(err error) bool {
		return !Transient(err)
	})
	if err != nil {
		return nil, err
	}
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	retry := retry{initial: cfg.RetryInitial, max: cfg.RetryMax, maxPermanent: cfg.MaxRetries, logger: logger}
	// Outermost first: a panic becomes an error, errors are retried, and what still
	// fails permanently is parked in the poison queue with its reason, so one bad
	// event never blocks the consumer group.
	router.AddMiddleware(poison, retry.middleware, middleware.Recoverer)
	router.AddMiddleware(extra...)

	// Without a Listener of the caller's (serve shares one with the read side),
	// the router holds its own while it runs: wake-ups are the default, polling
	// only the fallback. A custom Backoff opts out.
	stop := func() {}
	var open atomic.Int32
	if cfg.Listener == nil && cfg.Backoff == nil && len(consumers) > 0 {
		l := NewListener(pool, logger, EventsChannel)
		lctx, cancel := context.WithCancel(context.Background())
		router.AddPlugin(func(*message.Router) error {
			go l.Run(lctx) //nolint:errcheck // it logs and reconnects until cancelled
			return nil
		})
		stop = cancel
		open.Store(int32(len(consumers)))
		cfg.Listener = l
	}
	seen := map[string]bool{}
	for _, c := range consumers {
		if c.Name == "" || seen[c.Name] {
			stop()
			return nil, fmt.Errorf("messaging: consumer names must be unique and non-empty (%q)", c.Name)
		}
		seen[c.Name] = true
		closing := make(chan struct{})
		inner, err := newSubscriber(pool, cfg, c.Name, logger, closing)
		if err != nil {
			stop()
			return nil, err
		}
		// The last subscriber to close stops the router's own listener.
		sub := &subscriber{Subscriber: inner, closing: closing, onClose: func() {
			if open.Add(-1) <= 0 {
				stop()
			}
		}}
		router.AddConsumerHandler(c.Name, eventstore.Topic, sub, c.Handle)
	}
	return router, nil
}

// DecodeMessage turns a message of the event topic back into its stored record and event.
func DecodeMessage(msg *message.Message) (*eventstore.Record, error) {
	return eventstore.DecodeEnvelope(msg.Payload)
}
