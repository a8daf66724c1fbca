package messaging

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// NATSConfig places the event fan-out on NATS JetStream (TWOFACTOR_BUS=nats).
// The event log stays in PostgreSQL: the forwarder (forwarder.go) copies it
// into one JetStream stream, and the consumer groups read it
// there (natsconsumer.go). See "Scale-out on NATS JetStream" in README.md.
type NATSConfig struct {
	URL string
	// Stream is the JetStream stream holding the events.
	// WARNING: durable name: a new stream starts empty; consumers start over.
	Stream string
	// Subject is the subject prefix: an event of stream S is published on
	// Subject.K.P with P = fnv1a(S) mod K (K = Partitions), so one stream's events
	// share one subject and stay in order on it.
	// WARNING: durable (with Partitions): consumers filter on these subjects.
	Subject string
	// Partitions (K) is how many per-stream lanes the parallel consumer groups
	// (Parallel) have. Change it only with the forwarders stopped and the
	// consumers caught up: until then one stream's events sit on two subjects.
	Partitions int
	// Parallel names the consumer groups that only need each stream's events in
	// order (the notifier): they run one ordered consumer per partition, shared
	// by every worker. Every other group (the user-status projector: its
	// checkpoint is a log position and it is the read model's only writer) reads
	// the whole stream in log order through one consumer owned by one worker at a
	// time.
	Parallel []string
	// BatchSize bounds how many messages a log-ordered consumer applies in one
	// PostgreSQL transaction.
	BatchSize int
	// AckWait is how long JetStream waits for a partition consumer's ack before
	// delivering the message again (to any worker). Workers report progress while
	// a handler runs, so it only delays recovery from a worker that died.
	AckWait time.Duration
	// PullWait bounds one long poll for new messages (and so how long closing waits).
	PullWait time.Duration
	// OwnerRetry is how often a standby worker tries to take over a log-ordered
	// consumer.
	OwnerRetry time.Duration
	// MaxAge is the stream's retention: a consumer that stays behind longer than
	// this loses events (it says so in the log; rebuild the read model).
	MaxAge time.Duration
	// Duplicates is JetStream's de-duplication window (Nats-Msg-Id is the event
	// id): a forwarder that crashed after publishing and before committing its
	// offset publishes again; within the window JetStream drops the copies, after
	// it the consumers' own idempotency does.
	Duplicates time.Duration
	// Replicas of the stream (1 on a single server; 3 on a cluster).
	Replicas int
	// ConnectTimeout bounds the first connection attempt.
	ConnectTimeout time.Duration
}

// DefaultNATSConfig: see BENCHMARKS.md ("Scale-out") for the measurements.
func DefaultNATSConfig() NATSConfig {
	return NATSConfig{
		URL:            nats.DefaultURL,
		Stream:         "TWOFACTOR_EVENTS",
		Subject:        "twofactor.events",
		Partitions:     8,
		BatchSize:      500,
		AckWait:        10 * time.Second,
		PullWait:       2 * time.Second,
		OwnerRetry:     time.Second,
		MaxAge:         7 * 24 * time.Hour,
		Duplicates:     2 * time.Minute,
		Replicas:       1,
		ConnectTimeout: 5 * time.Second,
	}
}

// Validate refuses settings that would stall, spin or mix up subjects.
func (c NATSConfig) Validate() error {
	switch {
	case c.URL == "":
		return errors.New("messaging: NATS URL is empty")
	case c.Stream == "" || strings.ContainsAny(c.Stream, ". *>\t\r\n"):
		return fmt.Errorf("messaging: %q is not a JetStream stream name", c.Stream)
	case c.Subject == "" || strings.ContainsAny(c.Subject, " *>\t\r\n") || strings.HasSuffix(c.Subject, ".") || strings.HasPrefix(c.Subject, "."):
		return fmt.Errorf("messaging: %q is not a NATS subject prefix", c.Subject)
	case c.Partitions < 1 || c.Partitions > 1024:
		return errors.New("messaging: NATS partitions must be between 1 and 1024")
	case c.BatchSize < 1:
		return errors.New("messaging: NATS batch size must be at least 1")
	case c.AckWait < time.Second:
		return errors.New("messaging: NATS ack wait must be at least 1 s")
	case c.PullWait < 100*time.Millisecond || c.PullWait > 10*time.Second:
		return errors.New("messaging: NATS pull wait must be between 100 ms and 10 s")
	case c.OwnerRetry <= 0 || c.MaxAge <= 0 || c.Duplicates <= 0 || c.Replicas < 1 || c.ConnectTimeout <= 0:
		return errors.New("messaging: NATS owner retry, max age, duplicates window, replicas and connect timeout must be positive")
	}
	return nil
}

// PartitionOf is the partition of an event stream: FNV-1a (32 bits) of its id
// modulo Partitions. Every event of a stream has the same partition.
func (c NATSConfig) PartitionOf(streamID string) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(streamID))
	return int(h.Sum32() % uint32(c.Partitions))
}

// PartitionSubject is the subject of partition p.
func (c NATSConfig) PartitionSubject(p int) string {
	return fmt.Sprintf("%s.%d.%d", c.Subject, c.Partitions, p)
}

// SubjectOf is the subject an event of streamID is published on.
func (c NATSConfig) SubjectOf(streamID string) string {
	return c.PartitionSubject(c.PartitionOf(streamID))
}

// allSubjects matches every partition subject, whatever K.
func (c NATSConfig) allSubjects() string { return c.Subject + ".>" }

func (c NATSConfig) parallel(group string) bool {
	for _, g := range c.Parallel {
		if g == group {
			return true
		}
	}
	return false
}

// ConnectNATS opens a connection that reconnects forever. The first attempt
// must succeed within ConnectTimeout, unless retryOnFailed (the connection then
// keeps trying in the background, so a process can start while NATS is down).
func ConnectNATS(cfg NATSConfig, name string, logger watermill.LoggerAdapter, extra ...nats.Option) (*nats.Conn, error) {
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	opts := append([]nats.Option{
		nats.Name(name),
		nats.Timeout(cfg.ConnectTimeout),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectJitter(100*time.Millisecond, time.Second),
		nats.RetryOnFailedConnect(true),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			logger.Error("NATS connection lost; reconnecting", err, watermill.LogFields{"connection": name})
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			logger.Info("NATS connection back", watermill.LogFields{"connection": name, "url": c.ConnectedUrlRedacted()})
		}),
	}, extra...)
	nc, err := nats.Connect(cfg.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("messaging: connect to NATS at %s: %w", cfg.URL, err)
	}
	return nc, nil
}

// waitConnected waits until nc is connected, ctx ends or done closes.
func waitConnected(ctx context.Context, nc *nats.Conn, timeout time.Duration, done <-chan struct{}) error {
	deadline := time.Now().Add(timeout)
	for !nc.IsConnected() {
		if nc.IsClosed() {
			return nats.ErrConnectionClosed
		}
		if timeout > 0 && time.Now().After(deadline) {
			return fmt.Errorf("messaging: NATS at %s not reachable within %v", nc.Opts.Url, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-done:
			return errClosing
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

var errClosing = errors.New("messaging: closing")

// EnsureStream creates the event stream, or brings an existing one to the
// configuration (subjects, retention, de-duplication window).
func EnsureStream(ctx context.Context, js jetstream.JetStream, cfg NATSConfig) (jetstream.Stream, error) {
	s, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        cfg.Stream,
		Description: "twofactor events, forwarded from the PostgreSQL event log (which stays the source of truth)",
		Subjects:    []string{cfg.allSubjects()},
		// Limits, not interest or work-queue: consumer groups come and go, and a
		// group restarting from an old position must find its messages.
		Retention:  jetstream.LimitsPolicy,
		Storage:    jetstream.FileStorage,
		MaxAge:     cfg.MaxAge,
		Duplicates: cfg.Duplicates,
		Replicas:   cfg.Replicas,
		Discard:    jetstream.DiscardOld,
	})
	if err != nil {
		return nil, fmt.Errorf("messaging: JetStream stream %s: %w", cfg.Stream, err)
	}
	return s, nil
}

// NewNATSRouter is NewRouter with the consumers reading the events from NATS
// JetStream instead of the PostgreSQL event log: the same handlers, middlewares
// (retry, recoverer, poison queue in PostgreSQL) and TxFromMessage
// transactions. Run a Forwarder somewhere to fill the stream.
//
// A group named in ncfg.Parallel gets one handler per partition, named
// "GROUP.pN"; any other group one handler named after it.
func NewNATSRouter(pool *pgxpool.Pool, cfg Config, ncfg NATSConfig, nc *nats.Conn, logger watermill.LoggerAdapter, consumers []Consumer, extra ...message.HandlerMiddleware) (*message.Router, error) {
	if err := ncfg.Validate(); err != nil {
		return nil, err
	}
	if nc == nil {
		return nil, errors.New("messaging: NewNATSRouter needs a NATS connection")
	}
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	// The router, its middlewares and its poison queue, without PostgreSQL
	// subscribers (and so without a LISTEN connection of its own).
	router, err := NewRouter(pool, cfg, logger, nil, extra...)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, c := range consumers {
		if c.Name == "" || seen[c.Name] {
			return nil, fmt.Errorf("messaging: consumer names must be unique and non-empty (%q)", c.Name)
		}
		seen[c.Name] = true
		if ncfg.parallel(c.Name) {
			for p := 0; p < ncfg.Partitions; p++ {
				l := newLane(pool, js, nc, cfg, ncfg, logger, c.Name, p)
				router.AddConsumerHandler(fmt.Sprintf("%s.p%d", c.Name, p), l.filter, l, c.Handle)
			}
			continue
		}
		l := newLane(pool, js, nc, cfg, ncfg, logger, c.Name, -1)
		router.AddConsumerHandler(c.Name, l.filter, l, c.Handle)
	}
	return router, nil
}

// ConsumerName is the JetStream durable consumer of a group (partition -1: the
// log-ordered consumer of a group that is not Parallel).
// WARNING: durable: it holds the group's position in the stream.
func (c NATSConfig) ConsumerName(group string, partition int) string {
	r := strings.NewReplacer(".", "_", "*", "_", ">", "_", " ", "_", "/", "_", "\\", "_")
	name := r.Replace(group)
	if partition >= 0 {
		name = fmt.Sprintf("%s_k%d_p%d", name, c.Partitions, partition)
	}
	return name
}
