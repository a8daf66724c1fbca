package messaging

import (
	"context"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// EventsChannel is notified (by a trigger on the events table,
// migrations/0013) whenever a transaction that appended events commits.
// WARNING: durable name, shared with the migration.
const EventsChannel = "twofactor_events"

// Listener holds one connection that LISTENs on a few PostgreSQL channels and
// wakes whoever waits on them. One per process is enough: every subscriber and
// every read-your-writes wait shares it.
//
// A notification only says "something committed": waiters always re-read the
// database, so a lost notification costs at most a poll interval, never data.
// While the connection is down (and once after every reconnect) waiters are woken
// so they fall back to polling.
type Listener struct {
	connConfig *pgx.ConnConfig
	channels   []string
	logger     watermill.LoggerAdapter

	mu        sync.Mutex
	signals   map[string]*signal
	connected bool
}

type signal struct {
	gen uint64
	ch  chan struct{}
}

// NewListener returns a listener on channels over a dedicated connection made
// with the pool's settings. Start it with Run.
func NewListener(pool *pgxpool.Pool, logger watermill.LoggerAdapter, channels ...string) *Listener {
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	l := &Listener{connConfig: pool.Config().ConnConfig.Copy(), channels: channels, logger: logger, signals: map[string]*signal{}}
	for _, c := range channels {
		l.signals[c] = &signal{ch: make(chan struct{})}
	}
	return l
}

// Wait returns the channel's generation (incremented by every notification) and a
// channel closed at the next notification.
func (l *Listener) Wait(channel string) (uint64, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, ok := l.signals[channel]
	if !ok {
		s = &signal{ch: make(chan struct{})}
		l.signals[channel] = s
	}
	return s.gen, s.ch
}

// Hears reports whether notifications on channel are being received now.
func (l *Listener) Hears(channel string) bool {
	if !slices.Contains(l.channels, channel) {
		return false
	}
	return l.Connected()
}

// Connected reports whether notifications are being received.
func (l *Listener) Connected() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.connected
}

func (l *Listener) wake(channel string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, ok := l.signals[channel]
	if !ok {
		return
	}
	s.gen++
	close(s.ch)
	s.ch = make(chan struct{})
}

func (l *Listener) setConnected(v bool) {
	l.mu.Lock()
	l.connected = v
	l.mu.Unlock()
	for _, c := range l.channels {
		l.wake(c)
	}
}

// Run listens until ctx ends, reconnecting with a growing delay (up to 5 s).
func (l *Listener) Run(ctx context.Context) error {
	delay := 50 * time.Millisecond
	for {
		err := l.listen(ctx)
		l.setConnected(false)
		if ctx.Err() != nil {
			return nil
		}
		l.logger.Error("LISTEN connection lost; subscribers poll until it is back", err, watermill.LogFields{"retry_in": delay})
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
		delay = min(delay*2, 5*time.Second)
	}
}

func (l *Listener) listen(ctx context.Context) error {
	conn, err := pgx.ConnectConfig(ctx, l.connConfig)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for _, c := range l.channels {
		if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{c}.Sanitize()); err != nil {
			return err
		}
	}
	// Whatever committed while we were not listening is found by the first poll.
	l.setConnected(true)
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		l.wake(n.Channel)
	}
}

// wakeBackoff is a watermill-sql BackoffManager that, after an empty poll, blocks
// until the events channel is notified or the poll interval passes, and then asks
// for the next poll at once (it returns 0). One per subscriber: it remembers the
// generation it last saw.
//
// A notification can arrive before the committed rows are visible to the
// subscriber: its query reads only transactions older than every running one
// (pg_snapshot_xmin), and some other transaction (another consumer's ack, an API
// write) may still hold the horizon back. So after a wake-up that found nothing
// it polls again after 1, 2, 4 … 512 ms before going back to sleep.
//
// The fallback poll is a transaction per consumer group, the whole cost of an
// idle consumer. So once nothing has happened for quiet (no message, no
// notification) and the listener hears the channel, an empty poll waits quiet
// instead of poll: every commit still wakes the subscriber at once, and only a
// lost notification waits longer (quiet, instead of poll). Within quiet of any
// activity, and whenever the LISTEN connection is down, poll applies as before,
// so the catch-up of rows that a notification announced before they were
// visible is unchanged.
type wakeBackoff struct {
	l         *Listener
	channel   string
	poll      time.Duration
	quiet     time.Duration
	retry     time.Duration
	chaseFrom time.Duration
	chaseMax  time.Duration
	closing   <-chan struct{}

	lastGen    uint64
	step       time.Duration
	lastActive time.Time
}

func newWakeBackoff(l *Listener, channel string, poll, quiet, retry time.Duration, closing <-chan struct{}) *wakeBackoff {
	return &wakeBackoff{l: l, channel: channel, poll: poll, quiet: max(quiet, poll), retry: retry,
		chaseFrom: time.Millisecond, chaseMax: 512 * time.Millisecond, closing: closing, lastActive: time.Now()}
}

// idlePoll is the wait after an empty poll that no notification preceded.
func (b *wakeBackoff) idlePoll() time.Duration {
	if b.quiet > b.poll && time.Now().Sub(b.lastActive) >= b.quiet && b.l.Hears(b.channel) {
		return b.quiet
	}
	return b.poll
}

func (b *wakeBackoff) HandleError(logger watermill.LoggerAdapter, noMsg bool, err error) time.Duration {
	if err != nil {
		msg := strings.ToLower(err.Error())
		// Two subscribers of one group racing for its offset row: try again at once.
		if strings.Contains(msg, "deadlock") || strings.Contains(msg, "concurrent update") {
			return 0
		}
		logger.Error("Error querying for message", err, watermill.LogFields{"wait_time": b.retry})
		return b.retry
	}
	if !noMsg {
		b.step = 0
		b.lastActive = time.Now()
		b.lastGen, _ = b.l.Wait(b.channel)
		return 0
	}
	gen, ch := b.l.Wait(b.channel)
	if gen != b.lastGen {
		// Notified while the last query ran: it may not have seen the new rows.
		b.lastGen = gen
		b.step = b.chaseFrom
		b.lastActive = time.Now()
		return 0
	}
	d := b.idlePoll()
	if b.step > 0 && b.step <= b.chaseMax {
		d = min(b.step, b.poll)
		b.step *= 2
	} else {
		b.step = 0
	}
	t := time.NewTimer(d)
	select {
	case <-ch:
		b.step = b.chaseFrom
		b.lastActive = time.Now()
	case <-t.C:
	case <-b.closing:
	}
	t.Stop()
	b.lastGen, _ = b.l.Wait(b.channel)
	return 0
}
