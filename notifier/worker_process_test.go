package notifier_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/twofactor/twofactor/eventstore"
	"github.com/twofactor/twofactor/messaging"
	"github.com/twofactor/twofactor/notifier"
	"github.com/twofactor/twofactor/secrets"
)

// The environment of a worker process started by a test: the test binary runs
// itself, and TestMain runs runWorkerProcess instead of the tests.
const (
	workerEnv      = "NOTIFIER_TEST_WORKER"
	workerDBEnv    = "NOTIFIER_TEST_DATABASE_URL"
	workerKeysEnv  = "NOTIFIER_TEST_MASTER_KEYS"
	workerSMTPEnv  = "NOTIFIER_TEST_SMTP_URL"
	workerLease    = 2 * time.Second
	workerSendTime = time.Second
)

// runWorkerProcess is a notifier worker as `twofactord worker` runs it: the
// consumer in a watermill router and the delivery loop, until it is killed.
func runWorkerProcess() int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "worker:", err)
		return 1
	}
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv(workerDBEnv))
	if err != nil {
		return fail(err)
	}
	ring, err := secrets.ParseMasterKeys(os.Getenv(workerKeysEnv))
	if err != nil {
		return fail(err)
	}
	mailer, err := notifier.NewSMTPMailer(os.Getenv(workerSMTPEnv), notifier.SMTPOptions{Timeout: workerSendTime})
	if err != nil {
		return fail(err)
	}
	dir, err := os.MkdirTemp("", "notifier-worker-")
	if err != nil {
		return fail(err)
	}
	defer os.RemoveAll(dir)
	logger := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	sink, err := notifier.NewFileSink(dir, false, logger)
	if err != nil {
		return fail(err)
	}
	cfg := testConfig()
	cfg.Concurrency = 1
	cfg.SendTimeout = workerSendTime
	cfg.Lease = workerLease
	n, err := notifier.New(notifier.Deps{
		Pool: pool, Store: eventstore.New(pool, time.Now), Vault: secrets.NewVault(pool, ring, rand.Reader),
		Mail: mailer, SMS: sink, Logger: logger,
	}, cfg)
	if err != nil {
		return fail(err)
	}
	router, err := messaging.NewRouter(pool, routerConfig(), watermill.NewSlogLogger(logger), []messaging.Consumer{n.Consumer()})
	if err != nil {
		return fail(err)
	}
	go func() {
		if err := router.Run(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "worker: router:", err)
			os.Exit(1)
		}
	}()
	<-router.Running()
	fmt.Fprintln(os.Stderr, "worker: running")
	_ = n.Run(ctx)
	return 0
}
