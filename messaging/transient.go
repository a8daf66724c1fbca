package messaging

import (
	"context"
	"errors"

	"github.com/twofactor/twofactor/eventstore"
)

// Transient reports whether err says nothing about the message being handled:
// the database or the network failed (eventstore.Transient), the handler ran
// out of time or was stopped, or its transaction was abandoned; the same
// message succeeds once they are back. Consumers retry such errors for as long
// as it takes and never park the message in the poison queue or isolate it;
// every other error is permanent. This is the one place consumers decide.
func Transient(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrTxAbandoned) {
		return true
	}
	return eventstore.Transient(err)
}
