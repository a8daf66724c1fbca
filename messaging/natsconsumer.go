package messaging

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// lane is a message.Subscriber over one durable JetStream consumer of one
// consumer group. It hands the router one message at a time; for log-ordered
// groups inside a PostgreSQL transaction (TxFromMessage) that commits before
// the messages are acknowledged to JetStream, so their handlers run as on the
// PostgreSQL bus.
//
// Two kinds:
//
//   - Log-ordered (partition < 0): one consumer over every subject, so messages
//     come in the forwarder's order, which is the log's (transaction id,
//     position) order. One worker at a time owns it (a session advisory lock on
//     a connection of its own, on which it also runs its transactions: if the
//     lock is lost, so is the connection and with it any transaction in flight).
//     The owner applies up to BatchSize messages per transaction and acks the
//     last one (ack-all). Stream sequence numbers of the whole stream are
//     contiguous, so the owner checks each message follows the previous one; on
//     a gap, and on taking over a consumer with unacknowledged messages, it
//     recreates the consumer at the first message not acknowledged: JetStream's
//     redelivery can then never reorder the log.
//   - Partitioned (partition >= 0): one consumer per partition subject with at
//     most one message unacknowledged (MaxAckPending 1): JetStream delivers
//     the next message of the partition only once the previous one is
//     acknowledged, to whichever worker asks first. Order per partition (and so
//     per event stream) holds across workers and redeliveries; different
//     partitions run in parallel on every worker. The handler runs without a
//     transaction (TxFromMessage is false): a Parallel group's handler is
//     idempotent by itself, as the notifier's ledger is.
//
// Either way a message is acknowledged to JetStream only once its effects are
// done (the batch's transaction committed, or the Parallel handler returned); a
// crash in between delivers it again, and handlers are idempotent (the
// projector skips versions it has, the notifier's ledger is keyed by event id).
type lane struct {
	pool      *pgxpool.Pool
	js        jetstream.JetStream
	nc        *nats.Conn
	cfg       Config
	ncfg      NATSConfig
	logger    watermill.LoggerAdapter
	group     string
	partition int
	durable   string
	filter    string

	unmarshaler wmnats.NATSMarshaler

	once    sync.Once
	closing chan struct{}
	wg      sync.WaitGroup
}

func newLane(pool *pgxpool.Pool, js jetstream.JetStream, nc *nats.Conn, cfg Config, ncfg NATSConfig, logger watermill.LoggerAdapter, group string, partition int) *lane {
	l := &lane{pool: pool, js: js, nc: nc, cfg: cfg, ncfg: ncfg, group: group, partition: partition,
		durable: ncfg.ConsumerName(group, partition), closing: make(chan struct{})}
	if partition < 0 {
		l.filter = ncfg.allSubjects()
	} else {
		l.filter = ncfg.PartitionSubject(partition)
	}
	l.logger = logger.With(watermill.LogFields{"consumer_group": group, "nats_consumer": l.durable})
	return l
}

// Subscribe starts the lane; the topic is ignored (the lane knows its subject).
func (l *lane) Subscribe(ctx context.Context, _ string) (<-chan *message.Message, error) {
	out := make(chan *message.Message)
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		defer close(out)
		if l.partition < 0 {
			l.runOrdered(ctx, out)
		} else {
			l.runPartition(ctx, out)
		}
	}()
	return out, nil
}

// Close stops fetching, lets the message in flight finish (its transaction
// commits or rolls back) and returns once the lane has stopped.
func (l *lane) Close() error {
	l.once.Do(func() { close(l.closing) })
	l.wg.Wait()
	return nil
}

func (l *lane) closed(ctx context.Context) bool {
	select {
	case <-l.closing:
		return true
	case <-ctx.Done():
		return true
	default:
		return false
	}
}

// pause waits d, or less when the lane closes.
func (l *lane) pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-l.closing:
	case <-ctx.Done():
	}
}

func (l *lane) stream(ctx context.Context) (jetstream.Stream, error) {
	if err := waitConnected(ctx, l.nc, 0, l.closing); err != nil {
		return nil, err
	}
	return EnsureStream(ctx, l.js, l.ncfg)
}

// --- log-ordered ----------------------------------------------------------

func (l *lane) runOrdered(ctx context.Context, out chan<- *message.Message) {
	for !l.closed(ctx) {
		owned, err := l.own(ctx, out)
		switch {
		case l.closed(ctx):
			return
		case err != nil:
			l.logger.Error("log-ordered NATS consumer stopped; trying again", err, watermill.LogFields{"retry_in": l.ncfg.OwnerRetry})
		case owned:
			l.logger.Info("gave up the log-ordered NATS consumer", nil)
		}
		l.pause(ctx, l.ncfg.OwnerRetry)
	}
}

// own takes the group's consumer if no other worker has it and applies messages
// until the lane closes or something fails.
func (l *lane) own(ctx context.Context, out chan<- *message.Message) (bool, error) {
	conn, err := tryAdvisoryLock(ctx, l.pool, "twofactor.nats:"+l.ncfg.Stream+":"+l.durable)
	if err != nil || conn == nil {
		return false, err // conn nil: another worker owns it, stand by
	}
	// The connection is ours alone: it holds the lock, and our transactions.
	defer conn.Close(context.WithoutCancel(ctx))
	l.logger.Info("took the log-ordered NATS consumer", nil)
	o := &owner{lane: l, conn: conn}
	for !l.closed(ctx) {
		if o.cons == nil {
			if err := o.position(ctx); err != nil {
				return true, err
			}
		}
		msgs, err := o.fetch(ctx)
		if err != nil {
			if l.closed(ctx) {
				return true, nil
			}
			// Whatever a failed pull delivered is unacknowledged: position again.
			l.logger.Error("fetching from NATS failed", err, nil)
			o.cons = nil
			l.pause(ctx, 250*time.Millisecond)
			continue
		}
		if len(msgs) == 0 {
			// Idle: make sure the lock (and its connection) still holds.
			if err := conn.Ping(ctx); err != nil {
				return true, err
			}
			continue
		}
		if err := o.apply(ctx, out, msgs); err != nil {
			if l.closed(ctx) {
				return true, nil
			}
			return true, err
		}
	}
	return true, nil
}

// tryAdvisoryLock takes a session advisory lock on a connection of the pool;
// if it gets the lock, the connection leaves the pool and is the caller's to
// close (closing it releases the lock), otherwise it goes back (nil).
func tryAdvisoryLock(ctx context.Context, pool *pgxpool.Pool, key string) (*pgx.Conn, error) {
	pc, err := pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	var locked bool
	if err := pc.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtextextended($1, 0))`, key).Scan(&locked); err != nil {
		pc.Release()
		return nil, err
	}
	if !locked {
		pc.Release()
		return nil, nil
	}
	return pc.Hijack(), nil
}

// owner is the state of a worker owning a log-ordered consumer.
type owner struct {
	*lane
	conn *pgx.Conn
	cons jetstream.Consumer
	// last is the stream sequence of the last message applied (0: unknown).
	last uint64
}

// position gets the consumer ready to deliver the first message not yet
// acknowledged: as it is when nothing is outstanding, recreated at that message
// when a previous owner (or a failed pull) left messages unacknowledged.
func (o *owner) position(ctx context.Context) error {
	s, err := o.stream(ctx)
	if err != nil {
		return err
	}
	c, err := s.Consumer(ctx, o.durable)
	switch {
	case errors.Is(err, jetstream.ErrConsumerNotFound):
		// A new consumer (or a new stream, whose sequence numbers start over):
		// from the beginning; the handlers skip what they have.
		o.last = 0
		return o.recreate(ctx, s, 0)
	case err != nil:
		return err
	}
	info := c.CachedInfo()
	if info.NumAckPending > 0 || info.NumRedelivered > 0 || info.Delivered.Stream != info.AckFloor.Stream {
		o.logger.Info("log-ordered NATS consumer has unacknowledged messages; restarting it at the first one", watermill.LogFields{
			"ack_floor": info.AckFloor.Stream, "delivered": info.Delivered.Stream, "ack_pending": info.NumAckPending})
		return o.recreate(ctx, s, max(o.last, info.AckFloor.Stream))
	}
	o.cons, o.last = c, max(o.last, info.AckFloor.Stream)
	return nil
}

// recreate makes the consumer deliver from the message after ackFloor.
func (o *owner) recreate(ctx context.Context, s jetstream.Stream, ackFloor uint64) error {
	if err := s.DeleteConsumer(ctx, o.durable); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return err
	}
	cc := jetstream.ConsumerConfig{
		Durable:       o.durable,
		Description:   "log-ordered consumer of group " + o.group,
		FilterSubject: o.filter,
		AckPolicy:     jetstream.AckAllPolicy,
		// The owner acks each batch at once; a redelivery only happens after a
		// lost ack, and is recognised by its sequence number.
		AckWait:       time.Minute + 2*o.cfg.AckDeadline,
		MaxAckPending: 4 * o.ncfg.BatchSize,
		MaxDeliver:    -1,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	}
	if ackFloor > 0 {
		cc.DeliverPolicy = jetstream.DeliverByStartSequencePolicy
		cc.OptStartSeq = ackFloor + 1
	}
	c, err := s.CreateConsumer(ctx, cc)
	if err != nil {
		return err
	}
	// Within one ownership, what this owner committed past the ack floor (an
	// ack lost) is known: it is skipped, not applied again.
	o.cons, o.last = c, max(o.last, ackFloor)
	return nil
}

// fetch waits up to PullWait for a message, then takes what else is there, up
// to BatchSize. Every pull is read to its end, so none is left on the server to
// deliver to nobody.
func (o *owner) fetch(ctx context.Context) ([]jetstream.Msg, error) {
	if err := waitConnected(ctx, o.nc, 0, o.closing); err != nil {
		return nil, err
	}
	first, err := o.cons.Next(jetstream.FetchMaxWait(o.ncfg.PullWait))
	if errors.Is(err, nats.ErrTimeout) || errors.Is(err, context.DeadlineExceeded) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	msgs := []jetstream.Msg{first}
	if o.ncfg.BatchSize > 1 {
		batch, err := o.cons.FetchNoWait(o.ncfg.BatchSize - 1)
		if err != nil {
			return msgs, nil // the first one is enough to go on with
		}
		for m := range batch.Messages() {
			msgs = append(msgs, m)
		}
	}
	return msgs, nil
}

// apply hands a batch to the handler in one transaction, commits the messages
// it acknowledged, and acks the last of them to JetStream.
func (o *owner) apply(ctx context.Context, out chan<- *message.Message, msgs []jetstream.Msg) error {
	var t *Tx
	var lastAcked jetstream.Msg
	var lastSeq uint64
	complete := true
	// next becomes o.last once the transaction committed.
	next := o.last
	for _, m := range msgs {
		meta, err := m.Metadata()
		if err != nil {
			complete = false
			o.logger.Error("JetStream message without metadata", err, nil)
			break
		}
		seq := meta.Sequence.Stream
		if next > 0 && seq <= next {
			// Delivered again after a lost ack: applied already.
			lastAcked, lastSeq = m, max(lastSeq, seq)
			continue
		}
		if next > 0 && seq != next+1 && !o.expired(ctx, next, seq) {
			o.logger.Info("gap in the log-ordered NATS consumer; restarting it after the last message applied",
				watermill.LogFields{"expected": next + 1, "got": seq})
			complete = false
			break
		}
		if t == nil {
			// Not cancelled with the router: a batch under way at shutdown
			// commits what its handler acknowledged (a COMMIT cut short by a
			// cancellation may still have committed, unknown to the hooks).
			tctx := context.WithoutCancel(ctx)
			tx, err := o.conn.BeginTx(tctx, pgx.TxOptions{})
			if err != nil {
				return err
			}
			t = &Tx{tx: tx, ctx: tctx}
		}
		if !o.deliver(ctx, out, t, m) {
			complete = false
			break
		}
		next, lastAcked, lastSeq = seq, m, seq
	}
	if t != nil {
		if err := t.Commit(); err != nil {
			// The owner gives up (and its connection with the lock): the next one
			// starts from the ack floor.
			return fmt.Errorf("messaging: commit a batch from NATS: %w", err)
		}
	}
	o.last = next
	if lastAcked != nil {
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		err := lastAcked.DoubleAck(actx)
		cancel()
		if err != nil {
			// Committed but not acknowledged: delivered again, recognised by sequence.
			o.logger.Error("ack to NATS failed", err, watermill.LogFields{"stream_seq": lastSeq})
			complete = false
		}
	}
	if !complete {
		// What was fetched and not applied is outstanding: position again.
		o.cons = nil
	}
	return nil
}

// expired reports that the messages between the last applied one and seq are
// gone from the stream (retention), which is loud but not fixable here.
func (o *owner) expired(ctx context.Context, last, seq uint64) bool {
	s, err := o.js.Stream(ctx, o.ncfg.Stream)
	if err != nil {
		return false
	}
	first := s.CachedInfo().State.FirstSeq
	if first > last+1 && seq <= first {
		o.logger.Error("events expired from the NATS stream before this consumer group read them: rebuild its read model",
			errors.New("messages lost to retention"), watermill.LogFields{"from_seq": last + 1, "to_seq": first - 1})
		return true
	}
	return false
}

// --- partitioned ----------------------------------------------------------

func (l *lane) runPartition(ctx context.Context, out chan<- *message.Message) {
	var cons jetstream.Consumer
	for !l.closed(ctx) {
		if cons == nil {
			c, err := l.partitionConsumer(ctx)
			if err != nil {
				if !l.closed(ctx) {
					l.logger.Error("NATS partition consumer unavailable; trying again", err, nil)
					l.pause(ctx, l.ncfg.OwnerRetry)
				}
				continue
			}
			cons = c
		}
		if err := waitConnected(ctx, l.nc, 0, l.closing); err != nil {
			continue
		}
		// Closing waits for this pull to end (PullWait at most), so a message it
		// brings is handed back at once instead of after AckWait.
		m, err := cons.Next(jetstream.FetchMaxWait(l.ncfg.PullWait))
		if errors.Is(err, nats.ErrTimeout) || errors.Is(err, context.DeadlineExceeded) {
			continue
		}
		if err != nil {
			l.logger.Error("fetching from NATS failed", err, nil)
			cons = nil
			l.pause(ctx, 250*time.Millisecond)
			continue
		}
		if l.closed(ctx) {
			_ = m.Nak()
			return
		}
		if err := l.applyOne(ctx, out, m); err != nil && !l.closed(ctx) {
			l.logger.Error("applying a message from NATS failed; it is delivered again", err, nil)
			l.pause(ctx, l.cfg.ResendInterval)
		}
	}
}

func (l *lane) partitionConsumer(ctx context.Context) (jetstream.Consumer, error) {
	s, err := l.stream(ctx)
	if err != nil {
		return nil, err
	}
	return s.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:       l.durable,
		Description:   fmt.Sprintf("partition %d of %d of group %s", l.partition, l.ncfg.Partitions, l.group),
		FilterSubject: l.filter,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       l.ncfg.AckWait,
		// One message in flight per partition: the order of a stream's events
		// holds whichever worker takes them.
		MaxAckPending: 1,
		MaxDeliver:    -1,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	})
}

// applyOne hands one message to the handler; acked to JetStream once the
// handler acked it, handed back (nak) otherwise. There is no transaction: the
// handler of a Parallel group is idempotent on its own (the notifier's ledger),
// and a transaction held per partition while the handler takes a second
// connection for its own writes would exhaust a small pool (one per partition).
func (l *lane) applyOne(ctx context.Context, out chan<- *message.Message, m jetstream.Msg) error {
	if !l.deliver(ctx, out, nil, m) {
		_ = m.Nak()
		return nil
	}
	// Not waiting for the server's confirmation: the next pull goes out on the
	// same connection after the ack, so JetStream sees the ack first; an ack
	// lost with the connection means a redelivery the handler recognises.
	if err := m.Ack(); err != nil {
		l.logger.Error("ack to NATS failed", err, nil)
	}
	return nil
}

// --- delivery to the router ------------------------------------------------

// deliver hands one message to the router inside t (nil: none) and waits until the handler
// acks it (true), or it was nacked until the ack deadline, or the lane closes
// (false). It returns only once the handler is done with the message, so the
// transaction is never used by two goroutines at once.
func (l *lane) deliver(ctx context.Context, out chan<- *message.Message, t *Tx, jm jetstream.Msg) bool {
	wm, err := l.unmarshaler.Unmarshal(&nats.Msg{Subject: jm.Subject(), Data: jm.Data(), Header: jm.Headers()})
	if err != nil {
		// Cannot happen with our forwarder; a message we cannot read is poison:
		// hand the router an empty one with the raw payload, so the poison
		// middleware records it.
		wm = message.NewMessage(watermill.NewUUID(), jm.Data())
		wm.Metadata.Set("nats_unmarshal_error", err.Error())
	}
	// The handler finishes its message when the lane closes (l.closing stops the
	// next one); only the ack deadline cuts it short.
	base := context.WithoutCancel(ctx)
	if t != nil {
		base = withTx(base, t)
	}
	mctx, cancel := context.WithTimeout(base, l.cfg.AckDeadline)
	defer cancel()
	// Keep JetStream from handing a slow message to another worker.
	beat := time.NewTicker(max(l.ncfg.AckWait/3, 100*time.Millisecond))
	defer beat.Stop()
	for {
		msg := wm.Copy()
		msg.SetContext(mctx)
		select {
		case out <- msg:
		case <-l.closing:
			return false
		case <-mctx.Done():
			return false
		}
		for waiting := true; waiting; {
			select {
			case <-msg.Acked():
				return true
			case <-msg.Nacked():
				waiting = false
			case <-beat.C:
				_ = jm.InProgress()
			case <-mctx.Done():
				// Ack deadline, or shutdown: the handler sees its context end and
				// returns; wait for it before the transaction goes.
				l.settle(msg)
				return false
			}
		}
		select {
		case <-time.After(l.cfg.ResendInterval):
		case <-l.closing:
			return false
		case <-mctx.Done():
			return false
		}
	}
}

// settle waits (boundedly) for a handler whose context ended to finish.
func (l *lane) settle(msg *message.Message) {
	select {
	case <-msg.Acked():
	case <-msg.Nacked():
	case <-time.After(30 * time.Second):
		l.logger.Error("handler ignores its context; abandoning its message", errors.New("handler did not return"), watermill.LogFields{"uuid": msg.UUID})
	}
}
