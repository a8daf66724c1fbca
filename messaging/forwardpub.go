package messaging

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	wmnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// pipelinedPublisher is the forwarder's publisher to JetStream. Messages are
// marshalled as watermill-nats does (NATSMarshaler: the watermill UUID and the
// metadata in headers, the payload as is), with Nats-Msg-Id = the event id.
//
// watermill-nats' JetStream publisher waits for each message's acknowledgement
// before the next: one round trip per event (about 770 events/s here,
// BENCHMARKS.md). This one pipelines the messages of a batch (the forwarder's
// subscriber transaction, TxFromMessage) and waits for every acknowledgement just
// before the transaction commits the group's offset (a messaging.Tx hook): if
// any failed, the transaction rolls back and the batch is forwarded again.
//
// Order survives the pipelining: each message carries
// Nats-Expected-Last-Msg-Id = the id of the message published before it, so
// JetStream stores a message only right after its predecessor. If one fails
// (a timeout, a leader change in a cluster), every later one of the batch is
// refused, and what the stream holds is always a prefix of the log's delivery order.
// Forwarding the batch again, the messages already stored are dropped as
// duplicates (JetStream checks Nats-Msg-Id before the expectation) and the
// first one missing finds its predecessor last. The first message after a
// rollback or a new start carries no expectation: its predecessor was stored
// (its batch committed) and it is itself either stored (a duplicate) or not.
type pipelinedPublisher struct {
	f         *Forwarder
	js        nats.JetStreamContext
	marshaler wmnats.NATSMarshaler
	timeout   time.Duration

	mu      sync.Mutex
	prev    string // Nats-Msg-Id of the last message published in this chain ("" unknown)
	ensured bool
}

func newPipelinedPublisher(f *Forwarder) (*pipelinedPublisher, error) {
	js, err := f.nc.JetStream(nats.PublishAsyncMaxPending(4096))
	if err != nil {
		return nil, err
	}
	return &pipelinedPublisher{f: f, js: js, timeout: 10 * time.Second}, nil
}

// Publish sends the messages; with a forwarder transaction it only queues them
// and the transaction's commit waits for JetStream (see pubBatch).
func (p *pipelinedPublisher) Publish(subject string, msgs ...*message.Message) error {
	if err := p.ensureStream(); err != nil {
		return err
	}
	for _, msg := range msgs {
		nm, err := p.marshaler.Marshal(subject, msg)
		if err != nil {
			return err
		}
		tx, inTx := TxFromMessage(msg)
		var batch *pubBatch
		if inTx {
			batch = tx.Hook(p, func() TxHook { return &pubBatch{p: p} }).(*pubBatch)
			// The subscriber commits without waiting for a handler at shutdown
			// or at the ack deadline; a message published after that is not
			// acknowledged and is forwarded again (JetStream drops the copy).
			batch.mu.Lock()
			if batch.sealed {
				batch.mu.Unlock()
				return ErrTxDone
			}
		}
		p.mu.Lock()
		opts := []nats.PubOpt{nats.MsgId(msg.UUID), nats.ExpectStream(p.f.ncfg.Stream)}
		if p.prev != "" {
			opts = append(opts, nats.ExpectLastMsgId(p.prev))
		}
		if !inTx {
			_, err := p.js.PublishMsg(nm, opts...)
			if err == nil {
				p.prev = msg.UUID
			}
			p.mu.Unlock()
			if err != nil {
				return p.failed(err)
			}
			p.f.forwarded.Add(1)
			continue
		}
		fut, err := p.js.PublishMsgAsync(nm, opts...)
		if err != nil {
			// The chain stays: the handler's retry publishes this message again
			// after the same predecessor.
			p.mu.Unlock()
			batch.mu.Unlock()
			return p.failed(err)
		}
		p.prev = msg.UUID
		p.mu.Unlock()
		batch.futures = append(batch.futures, fut)
		batch.mu.Unlock()
	}
	return nil
}

func (p *pipelinedPublisher) Close() error { return nil }

func (p *pipelinedPublisher) ensureStream() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ensured {
		return nil
	}
	js, err := jetstream.New(p.f.nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := EnsureStream(ctx, js, p.f.ncfg); err != nil {
		return err
	}
	p.ensured = true
	return nil
}

// failed forgets the stream when it is gone (the chain is forgotten when the
// batch rolls back: pubBatch.AfterRollback).
func (p *pipelinedPublisher) failed(err error) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if errors.Is(err, nats.ErrNoStreamResponse) || errors.Is(err, nats.ErrStreamNotFound) {
		p.ensured = false
	}
	return fmt.Errorf("messaging: publish to NATS: %w", err)
}

// pubBatch is the publisher's part of one forwarder transaction: the
// acknowledgements the commit waits for.
type pubBatch struct {
	p *pipelinedPublisher

	mu      sync.Mutex
	futures []nats.PubAckFuture
	sealed  bool // the commit began: no more messages join this batch
}

func (b *pubBatch) BeforeCommit(ctx context.Context, _ pgx.Tx) error {
	b.mu.Lock()
	b.sealed = true
	futures := b.futures
	b.mu.Unlock()
	deadline := time.NewTimer(b.p.timeout)
	defer deadline.Stop()
	var first error
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			if first == nil {
				first = err
			}
		case <-deadline.C:
			if first == nil {
				first = errors.New("no acknowledgement from JetStream in time")
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if first != nil {
		return b.p.failed(first)
	}
	return nil
}

func (b *pubBatch) AfterCommit() {
	b.mu.Lock()
	n := len(b.futures)
	b.mu.Unlock()
	b.p.f.forwarded.Add(int64(n))
}

func (b *pubBatch) AfterRollback() {
	b.p.mu.Lock()
	b.p.prev = ""
	b.p.mu.Unlock()
}
