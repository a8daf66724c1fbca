package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/twofactor/twofactor/messaging"
	"github.com/twofactor/twofactor/migrations"
	"github.com/twofactor/twofactor/notifier"
)

// natsDefaults are the NATS settings' defaults (DefaultConfig).
var natsDefaults = messaging.DefaultNATSConfig()

// natsConfig is the bus configuration of --bus nats. The notifier only needs
// each user's events in order, so it runs one consumer per partition; the
// projector reads the whole log in order (see "Scale-out on NATS JetStream" in
// README.md).
func (c Config) natsConfig() messaging.NATSConfig {
	n := messaging.DefaultNATSConfig()
	n.URL = c.NATSURL
	n.Stream = c.NATSStream
	n.Subject = c.NATSSubject
	n.Partitions = c.NATSPartitions
	n.Parallel = []string{notifier.ConsumerGroup}
	return n
}

// newBusRouter builds the consumers' router on the configured bus. With NATS it
// also starts this process's forwarder (event log → JetStream): every process that
// runs consumers runs one, and the forwarders' consumer group lets one forward
// at a time while the others stand by. The forwarder and the NATS connection
// stop when ctx ends (with the router).
func newBusRouter(ctx context.Context, cfg Config, c *consumers, pool *pgxpool.Pool, mcfg messaging.Config, wlog watermill.LoggerAdapter,
	cs []messaging.Consumer, log *slog.Logger) (*message.Router, error) {
	if cfg.Bus != "nats" {
		return messaging.NewRouter(pool, mcfg, wlog, cs)
	}
	ncfg := cfg.natsConfig()
	nc, err := messaging.ConnectNATS(ncfg, "twofactord consumers", wlog)
	if err != nil {
		return nil, err
	}
	router, err := messaging.NewNATSRouter(pool, mcfg, ncfg, nc, wlog, cs)
	if err != nil {
		nc.Close()
		return nil, err
	}
	fcfg := messaging.ForwarderConfig()
	fcfg.Listener = mcfg.Listener
	fwd, err := messaging.NewForwarder(pool, fcfg, ncfg, wlog)
	if err != nil {
		nc.Close()
		return nil, err
	}
	c.done.Go(func() {
		if err := fwd.Run(ctx); err != nil && ctx.Err() == nil {
			log.Error("forwarder stopped", "error", err.Error())
		}
	})
	c.done.Go(func() {
		<-ctx.Done()
		// The lanes use the connection until the router has closed.
		for deadline := time.Now().Add(30 * time.Second); !router.IsClosed() && time.Now().Before(deadline); {
			time.Sleep(20 * time.Millisecond)
		}
		nc.Close()
	})
	c.checks = append(c.checks, func(context.Context) error {
		if !nc.IsConnected() || !fwd.Connected() {
			return errors.New("NATS is not connected")
		}
		return nil
	})
	log.Info("event bus: NATS JetStream", "url", ncfg.URL, "stream", ncfg.Stream, "subject", ncfg.Subject, "partitions", ncfg.Partitions)
	return router, nil
}

// forwarderCommand runs a forwarder alone (`twofactord forwarder`): the event log
// to NATS JetStream, nothing else. Workers run one each already; a dedicated
// one is for deployments that want it apart (or more standbys).
func forwarderCommand(ctx context.Context, cfg Config, args []string, log *slog.Logger) error {
	fs := flag.NewFlagSet("forwarder", flag.ContinueOnError)
	cfg.bindDatabase(fs)
	cfg.bindNATS(fs)
	cfg.Bus = "nats"
	if err := parse(fs, args, cfg); err != nil {
		return err
	}
	pool, err := openDatabase(ctx, cfg.DatabaseURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	if _, err := migrations.Apply(ctx, pool); err != nil {
		return err
	}
	wlog := watermill.NewSlogLogger(log.With("component", "messaging"))
	fwd, err := messaging.NewForwarder(pool, messaging.ForwarderConfig(), cfg.natsConfig(), wlog)
	if err != nil {
		return err
	}
	errs := make(chan error, 1)
	go func() { errs <- fwd.Run(context.WithoutCancel(ctx)) }()
	select {
	case <-fwd.Running():
	case err := <-errs:
		return err
	}
	log.Info("twofactord forwarder running", "group", messaging.ForwarderGroup, "nats_url", cfg.NATSURL, "stream", cfg.NATSStream)
	select {
	case err := <-errs:
		return err
	case <-ctx.Done():
	}
	if err := fwd.Close(); err != nil {
		return fmt.Errorf("forwarder: %w", err)
	}
	if err := <-errs; err != nil {
		return err
	}
	log.Info("forwarder stopped", "forwarded", fwd.Forwarded())
	return nil
}
