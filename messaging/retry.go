package messaging

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
)

// retry is the consumers' retry policy. watermill's middleware.Retry gives up
// after MaxRetries whatever the error, which parked valid events in the poison
// queue while PostgreSQL restarted; here only permanent errors are counted:
//
//   - transient errors (Transient) are retried for as long as they last, with a
//     backoff bounded by max. A message delivered in a subscriber transaction
//     is not retried in it (a transaction whose connection died never
//     recovers): the transaction is abandoned and its batch read again in a new
//     one once the database answers (the beginner backs off meanwhile);
//   - permanent errors are retried maxPermanent times (a bug may be racy), then
//     returned, for the poison queue.
//
// A message whose context ended (shutdown, ack deadline) returns at once, is
// not acknowledged, and is delivered again.
type retry struct {
	initial, max time.Duration
	maxPermanent int
	logger       watermill.LoggerAdapter
}

func (r retry) middleware(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		tx, inTx := TxFromMessage(msg)
		wait := r.initial
		permanent := 0
		for attempt := 1; ; attempt++ {
			if inTx && tx.Abandoned() != nil {
				// Acknowledged into a transaction that never commits: the whole
				// batch comes again.
				return nil, nil
			}
			out, err := h(msg)
			if err == nil {
				return out, nil
			}
			ctx := msg.Context()
			if errors.Is(err, ErrTxDone) {
				return nil, err
			}
			if ctx.Err() != nil {
				// Cut short, not judged: delivered again, never parked.
				return nil, fmt.Errorf("%w: %w", ctx.Err(), err)
			}
			if inTx && errors.Is(err, ErrTxAbandoned) {
				return nil, nil
			}
			fields := watermill.LogFields{"message_uuid": msg.UUID, "attempt": attempt}
			if Transient(err) {
				if inTx {
					r.logger.Info("transient error; the batch is read again in a new transaction", fields.Add(watermill.LogFields{"err": err.Error()}))
					tx.Abandon(err)
					return nil, nil
				}
				r.logger.Info("transient error; retrying", fields.Add(watermill.LogFields{"err": err.Error(), "retry_in": wait}))
			} else {
				permanent++
				if permanent > r.maxPermanent {
					return nil, err
				}
				r.logger.Error("handler failed; retrying", err, fields.Add(watermill.LogFields{"retry_in": wait}))
			}
			if !sleep(ctx, jitter(wait)) {
				return nil, fmt.Errorf("%w: %w", ctx.Err(), err)
			}
			wait = min(2*wait, r.max)
		}
	}
}

func jitter(d time.Duration) time.Duration {
	return d - time.Duration(rand.Int64N(int64(d)/3+1))
}

// sleep waits d; false when ctx ended first.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
