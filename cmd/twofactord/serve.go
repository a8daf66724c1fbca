package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/twofactor/twofactor/audit"
	"github.com/twofactor/twofactor/commands"
	"github.com/twofactor/twofactor/eventstore"
	"github.com/twofactor/twofactor/handlers"
	"github.com/twofactor/twofactor/messaging"
	"github.com/twofactor/twofactor/migrations"
	"github.com/twofactor/twofactor/notifier"
	"github.com/twofactor/twofactor/projections"
	"github.com/twofactor/twofactor/secrets"
)

// serve runs the whole service in one process: migrations at start, the HTTP
// API, and the consumers (projectors, notifier) when they are built in.
func serve(ctx context.Context, cfg Config, args []string, log *slog.Logger) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	cfg.bindServe(fs)
	if err := parse(fs, args, cfg); err != nil {
		return err
	}
	ring, hasher, err := cfg.keys(log)
	if err != nil {
		return err
	}
	if cfg.Dev {
		stopDB, err := maybeStartDevPostgres(ctx, cfg.DatabaseURL, cfg.DevDataDir, log)
		if err != nil {
			return err
		}
		if stopDB != nil {
			defer stopDB()
		}
	}
	pool, applied, err := openWithKeys(ctx, cfg, ring, hasher, log)
	if err != nil {
		return err
	}
	defer pool.Close()
	log.Info("migrations applied", "applied", len(applied))

	// Consumers get their own context: they stop after the HTTP server has drained.
	consumerCtx, stopConsumers := context.WithCancel(context.WithoutCancel(ctx))
	defer stopConsumers()
	cfg, err = prepareWebUI(cfg, log)
	if err != nil {
		return err
	}
	api, cons, err := newAPI(consumerCtx, cfg, pool, ring, hasher, log)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return err
	}
	handler, err := withWebUI(cfg, api.Handler(), ln.Addr(), log)
	if err != nil {
		ln.Close()
		return err
	}
	srv := handlers.NewServer(cfg.HTTPAddr, handler, handlers.DefaultConfig().RequestTimeout)
	srv.ErrorLog = slog.NewLogLogger(log.Handler(), slog.LevelWarn)
	errs := make(chan error, 1)
	go func() { errs <- srv.Serve(ln) }()
	go purgeIdempotency(ctx, api, log)
	log.Info("twofactord serving", "addr", ln.Addr().String(), "dev", cfg.Dev, "consumers", cfg.Consumers)

	select {
	case err := <-errs:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down: draining requests")
	shutdown, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	err = srv.Shutdown(shutdown)
	stopConsumers()
	cons.wait()
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	log.Info("stopped")
	return nil
}

// consumers are the projectors and the notifier running in this process (none in
// an API-only process), with the LISTEN connection that wakes them and the
// read-your-writes waits.
type consumers struct {
	router   *message.Router // nil: API only
	done     sync.WaitGroup
	listener *messaging.Listener
	// checks are further readiness conditions (NATS connected, with --bus nats).
	checks []func(context.Context) error
}

func (c *consumers) wait() { c.done.Wait() }

// running: the router is up (when this process runs one).
func (c *consumers) running(ctx context.Context) error {
	if c.router != nil && !c.router.IsRunning() {
		return errors.New("the event consumers are not running")
	}
	for _, check := range c.checks {
		if err := check(ctx); err != nil {
			return err
		}
	}
	return nil
}

// startConsumers holds the LISTEN connection and, when run is set, runs the
// user-status projector and the notifier in one watermill router (one consumer
// group each) and the notifier's delivery workers.
func startConsumers(ctx context.Context, cfg Config, run bool, pool *pgxpool.Pool, store *eventstore.Store, vault *secrets.Vault,
	reg prometheus.Registerer, log *slog.Logger) (*consumers, *projections.Queries, error) {
	wlog := watermill.NewSlogLogger(log.With("component", "messaging"))
	listener := messaging.NewListener(pool, wlog, messaging.EventsChannel, projections.ReadModelsChannel, handlers.APIKeysChannel)
	c := &consumers{listener: listener}
	c.done.Go(func() {
		if err := listener.Run(ctx); err != nil && ctx.Err() == nil {
			log.Error("listener stopped", "error", err.Error())
		}
	})
	queries := projections.NewQueries(pool, projections.QueryOptions{Listener: listener})
	if !run {
		return c, queries, nil
	}
	pmetrics, err := projections.NewMetrics(pool, reg)
	if err != nil {
		return nil, nil, err
	}
	projector := projections.NewProjector(pool, store, projections.ProjectorOptions{Logger: log, Metrics: pmetrics})
	senders, err := notifier.SenderConfig{SMTPURL: cfg.SMTPURL, SMSProvider: cfg.SMSProvider, SMSURL: cfg.SMSURL,
		SMSAuth: cfg.SMSAuth, SMSFrom: cfg.SMSFrom, MailDir: cfg.MailDir, Dev: cfg.Dev}.Build(log)
	if err != nil {
		return nil, nil, err
	}
	ncfg := notifier.DefaultConfig()
	ncfg.DefaultFrom = cfg.MailFrom
	ncfg.SendTimeout, ncfg.Lease = cfg.SendTimeout, cfg.NotifyLease
	n, err := notifier.New(notifier.Deps{Pool: pool, Store: store, Vault: vault, Mail: senders.Mail, SMS: senders.SMS,
		Logger: log, Metrics: reg}, ncfg)
	if err != nil {
		return nil, nil, err
	}
	mcfg := messaging.DefaultConfig()
	mcfg.Listener = listener
	// On the configured bus (forwarder.go): the PostgreSQL event log, or NATS JetStream.
	router, err := newBusRouter(ctx, cfg, c, pool, mcfg, wlog, []messaging.Consumer{projector.Consumer(), n.Consumer()}, log)
	if err != nil {
		return nil, nil, err
	}
	c.router = router
	c.done.Go(func() {
		if err := router.Run(ctx); err != nil {
			log.Error("consumers stopped", "error", err.Error())
		}
	})
	c.done.Go(func() { _ = n.Run(ctx) })
	select {
	case <-router.Running():
	case <-time.After(30 * time.Second):
		return nil, nil, errors.New("the event consumers did not start within 30 s")
	}
	return c, queries, nil
}

func newAPI(ctx context.Context, cfg Config, pool *pgxpool.Pool, ring *secrets.Keyring, hasher *secrets.CodeHasher, log *slog.Logger) (*handlers.API, *consumers, error) {
	gin.SetMode(gin.ReleaseMode)
	store := eventstore.New(pool, time.Now)
	vault := secrets.NewVault(pool, ring, rand.Reader)
	svc := commands.New(store, vault, hasher, time.Now, rand.Reader)
	metrics := handlers.NewMetrics()
	svc.OnConflictRetry(metrics.ConflictRetried)
	cons, queries, err := startConsumers(ctx, cfg, cfg.Consumers, pool, store, vault, metrics.Registry, log)
	if err != nil {
		return nil, nil, err
	}
	hcfg := handlers.DefaultConfig()
	if cfg.TrustedProxies != "" {
		for _, p := range strings.Split(cfg.TrustedProxies, ",") {
			hcfg.TrustedProxies = append(hcfg.TrustedProxies, strings.TrimSpace(p))
		}
	}
	if cfg.KeyRate != 0 {
		hcfg.KeyRate, hcfg.KeyBurst = cfg.KeyRate, int(2*cfg.KeyRate)
	}
	if cfg.IPRate != 0 {
		hcfg.IPRate, hcfg.IPBurst = cfg.IPRate, int(3*cfg.IPRate)
	}
	keys := handlers.NewKeyStore(pool, rand.Reader)
	keys.CacheWith(cons.listener)
	api, err := handlers.New(hcfg, handlers.Deps{
		Commands:    svc,
		Pool:        pool,
		Keys:        keys,
		Audit:       audit.New(pool),
		Reads:       handlers.ProjectionReads(queries),
		Secrets:     hasher,
		Metrics:     metrics,
		Log:         log,
		OperatorKey: cfg.OperatorKey,
		Ready: []handlers.ReadyCheck{{Name: "migrations", Check: func(ctx context.Context) error {
			pending, err := migrations.Pending(ctx, pool)
			if err == nil && len(pending) > 0 {
				err = fmt.Errorf("%d migrations pending", len(pending))
			}
			return err
		}}, {Name: "consumers", Check: cons.running},
			{Name: "consumer_stalls", Explain: true, Degrades: true, Check: func(ctx context.Context) error { return projections.CheckStalls(ctx, pool) }}},
	})
	return api, cons, err
}

// purgeIdempotency drops expired idempotency records every hour.
func purgeIdempotency(ctx context.Context, api *handlers.API, log *slog.Logger) {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if n, err := api.PurgeIdempotency(ctx); err != nil {
				log.Warn("idempotency purge failed", "error", err.Error())
			} else if n > 0 {
				log.Info("idempotency records purged", "count", n)
			}
		}
	}
}
