// Package notifier tells users about every change to their two-factor setup and
// delivers the emailed and texted one-time codes.
//
// It works in two halves that share a ledger table (migrations/0004, 0011):
//
//   - Consumer() is a watermill handler in the consumer group ConsumerGroup. For
//     each event it records the notifications due (ledger rows keyed by event id
//     and kind, inserted with ON CONFLICT DO NOTHING), and nothing else: it opens
//     no secret and sends nothing, so a redelivered event changes nothing.
//   - Run() is the delivery loop. It claims due rows (FOR UPDATE SKIP LOCKED, so
//     any number of workers share the ledger), reads the event from the log, opens
//     the sealed address and code just before sending, sends, and marks the row
//     sent. Failures are retried with exponential backoff and jitter; after
//     MaxAttempts the row is dead (twofactord notifications failed, and a metric).
//
// Guarantee: at least once to the SMTP server or SMS provider. A duplicate is
// possible only when a worker dies (or loses the database) between a successful
// send and marking the row sent; the message then has the same Message-ID (and,
// for SMS, the same Idempotency-Key) as the first copy.
//
// Order: a user's notices are sent in the order of the user's events (a notice
// waits until every earlier one of its user is sent, skipped or dead), whatever
// the bus, the workers and the retries; users are independent, and one-time
// codes are outside the order (see claim).
package notifier

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/twofactor/twofactor/eventstore"
	"github.com/twofactor/twofactor/messaging"
	"github.com/twofactor/twofactor/secrets"
)

// ConsumerGroup is the notifier's watermill handler name and consumer group.
// WARNING: durable: renaming it replays the whole history into the notifier, which
// would record (and send) a notification for every event ever written.
const ConsumerGroup = "notifier"

// Loader reads a stream of the event log (*eventstore.Store).
type Loader interface {
	Load(ctx context.Context, streamID string) ([]*eventstore.Record, error)
}

// Opener opens sealed values (*secrets.Vault).
type Opener interface {
	Open(ctx context.Context, tenantID, userID string, purpose secrets.Purpose, sealed string) ([]byte, error)
}

// Config tunes delivery. Zero values are not meaningful: start from DefaultConfig.
type Config struct {
	// DefaultFrom is the sender address when the tenant's policy names none
	// (TWOFACTOR_MAIL_FROM).
	DefaultFrom string
	// PollInterval is how long the idle workers wait before one of them looks
	// for due rows again; rows recorded by this process wake one at once.
	PollInterval time.Duration
	// Concurrency is how many messages one process sends at the same time.
	Concurrency int
	// MaxAttempts: after this many failed attempts a notification is dead. Until
	// then a notice holds back its user's later notices, which are sent after it.
	MaxAttempts int
	// BackoffBase and BackoffMax bound the wait before a retry: base·2^(n-1),
	// capped, with jitter (a random value between half and all of it).
	BackoffBase time.Duration
	BackoffMax  time.Duration
	// SendTimeout bounds one send (connect, TLS, auth, transfer).
	SendTimeout time.Duration
	// Lease is how long a claimed row belongs to its worker. A worker that dies
	// mid-send leaves the row to others after it. It must exceed SendTimeout.
	Lease time.Duration
	// MetricsInterval is how often the ledger gauges are refreshed from the database.
	MetricsInterval time.Duration
}

// DefaultConfig: codes should arrive within seconds; a notification is dead after
// 16 attempts, up to about 18 hours after the first (5 s doubling, capped at 4 h).
func DefaultConfig() Config {
	return Config{
		DefaultFrom:     "twofactor@localhost",
		PollInterval:    time.Second,
		Concurrency:     4,
		MaxAttempts:     16,
		BackoffBase:     5 * time.Second,
		BackoffMax:      4 * time.Hour,
		SendTimeout:     30 * time.Second,
		Lease:           2 * time.Minute,
		MetricsInterval: 15 * time.Second,
	}
}

// Validate refuses settings that would spin, stall or send twice.
func (c Config) Validate() error {
	switch {
	case !plausibleAddress(c.DefaultFrom):
		return fmt.Errorf("notifier: default sender %q is not a plain email address", c.DefaultFrom)
	case c.PollInterval <= 0:
		return errors.New("notifier: poll interval must be positive")
	case c.Concurrency < 1 || c.Concurrency > 256:
		return errors.New("notifier: concurrency must be between 1 and 256")
	case c.MaxAttempts < 1:
		return errors.New("notifier: max attempts must be at least 1")
	case c.BackoffBase <= 0 || c.BackoffMax < c.BackoffBase:
		return errors.New("notifier: backoff must be positive, and max at least base")
	case c.SendTimeout <= 0:
		return errors.New("notifier: send timeout must be positive")
	case c.Lease <= c.SendTimeout:
		// A lease shorter than a send lets a second worker send the same message.
		return errors.New("notifier: lease must be longer than the send timeout")
	case c.MetricsInterval <= 0:
		return errors.New("notifier: metrics interval must be positive")
	}
	return nil
}

// Deps are the notifier's collaborators.
type Deps struct {
	Pool   *pgxpool.Pool
	Store  Loader
	Vault  Opener
	Mail   Mailer
	SMS    SMSSender
	Logger *slog.Logger
	// Clock stamps ledger rows and decides when a row is due; nil means time.Now.
	Clock func() time.Time
	// Metrics receives the notifier's collectors; nil registers them nowhere.
	Metrics prometheus.Registerer
}

// Notifier records and delivers notifications.
type Notifier struct {
	pool    *pgxpool.Pool
	store   Loader
	vault   Opener
	mail    Mailer
	sms     SMSSender
	log     *slog.Logger
	clock   func() time.Time
	cfg     Config
	tmpl    *templates
	metrics *metrics
	// wake nudges an idle delivery worker when this process recorded a row.
	wake chan struct{}
	// poller is held by the one idle worker that polls (see idle).
	poller chan struct{}
}

// New wires a notifier. Deps.Pool, Store, Vault, Mail and SMS are required.
func New(d Deps, cfg Config) (*Notifier, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if d.Pool == nil || d.Store == nil || d.Vault == nil || d.Mail == nil || d.SMS == nil {
		return nil, errors.New("notifier: pool, store, vault, mailer and SMS sender are required")
	}
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	if d.Clock == nil {
		d.Clock = time.Now
	}
	tmpl, err := parseTemplates()
	if err != nil {
		return nil, err
	}
	m, err := newMetrics(d.Metrics)
	if err != nil {
		return nil, err
	}
	return &Notifier{
		pool: d.Pool, store: d.Store, vault: d.Vault, mail: d.Mail, sms: d.SMS,
		log: d.Logger.With("component", "notifier"), clock: d.Clock, cfg: cfg, tmpl: tmpl, metrics: m,
		wake: make(chan struct{}, 1), poller: make(chan struct{}, 1),
	}, nil
}

// Consumer is the watermill handler that records the notifications each event calls for.
func (n *Notifier) Consumer() messaging.Consumer {
	return messaging.Consumer{Name: ConsumerGroup, Handle: n.handleMessage}
}

func (n *Notifier) handleMessage(msg *message.Message) error {
	// Most events call for no notification (every TOTP login is one): those
	// are recognised by the type the message carries, without decoding it.
	if t := msg.Metadata.Get("event_type"); t != "" && !notifyingTypes[t] {
		return nil
	}
	rec, err := messaging.DecodeMessage(msg)
	if err != nil {
		return err
	}
	return n.Record(msg.Context(), rec)
}

// Record inserts the ledger rows an event calls for. It is idempotent, and is
// what the consumer runs for each event (exported for replays and tests).
func (n *Notifier) Record(ctx context.Context, rec *eventstore.Record) error {
	userID, ok := userOfStream(rec.TenantID, rec.StreamID)
	if !ok {
		return nil // tenant streams notify nobody
	}
	kinds, err := n.reactions(ctx, rec)
	if err != nil {
		return err
	}
	if len(kinds) == 0 {
		return nil
	}
	now := n.clock().UTC()
	inserted := 0
	// The ordinal orders the notices of one event after the event's stream
	// version: each row is committed before the next, so a worker never sees a
	// later notice without the earlier ones.
	for i, k := range kinds {
		tag, err := n.pool.Exec(ctx, `
			INSERT INTO notifications (event_id, kind, tenant_id, user_id, stream_id, stream_version, ordinal,
				event_type, priority, next_attempt_at, created_at, updated_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, $10)
			ON CONFLICT (event_id, kind) DO NOTHING`,
			rec.EventID, string(k), rec.TenantID, userID, rec.StreamID, rec.Version, i, rec.Type, k.priority(), now)
		if err != nil {
			return fmt.Errorf("notifier: record %s for event %s: %w", k, rec.EventID, err)
		}
		inserted += int(tag.RowsAffected())
	}
	if inserted > 0 {
		select {
		case n.wake <- struct{}{}:
		default:
		}
	}
	return nil
}

// userOfStream returns the user id of a user stream of the tenant. Tenant ids
// carry no ':', user ids may.
func userOfStream(tenantID, streamID string) (string, bool) {
	prefix := eventstore.UserStream(tenantID, "")
	if !strings.HasPrefix(streamID, prefix) || len(streamID) == len(prefix) {
		return "", false
	}
	return streamID[len(prefix):], true
}

// plausibleAddress is a shape check of a plain address (no display name).
func plausibleAddress(a string) bool {
	at := strings.IndexByte(a, '@')
	return len(a) <= 254 && at > 0 && at == strings.LastIndexByte(a, '@') && at < len(a)-1 &&
		!strings.ContainsAny(a, " <>\t\r\n,;\"")
}
