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
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/twofactor/twofactor/eventstore"
	"github.com/twofactor/twofactor/migrations"
	"github.com/twofactor/twofactor/projections"
	"github.com/twofactor/twofactor/secrets"
)

// worker runs the projectors and the notifier without the HTTP API, so they scale
// apart from it; several workers share the consumer groups (watermill-sql locks a
// group's offset row, the notifier claims ledger rows with SKIP LOCKED).
func worker(ctx context.Context, cfg Config, args []string, log *slog.Logger) error {
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	cfg.bindConsumers(fs)
	fs.StringVar(&cfg.WorkerAddr, "worker-addr", cfg.WorkerAddr, "address of /healthz, /readyz and /metrics (TWOFACTOR_WORKER_ADDR)")
	if err := parse(fs, args, cfg); err != nil {
		return err
	}
	if cfg.Dev && (cfg.MasterKeys == "" || cfg.CodeKey == "") {
		return errors.New("a worker does not run in development mode: set TWOFACTOR_MASTER_KEYS and TWOFACTOR_CODE_KEY, the keys of the serve processes")
	}
	ring, hasher, err := cfg.keys(log)
	if err != nil {
		return err
	}
	// The worker seals nothing; the backup-code key is still required and
	// checked, so that a misconfigured worker fails at start.
	pool, _, err := openWithKeys(ctx, cfg, ring, hasher, log)
	if err != nil {
		return err
	}
	defer pool.Close()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	consumerCtx, stopConsumers := context.WithCancel(context.WithoutCancel(ctx))
	defer stopConsumers()
	store := eventstore.New(pool, time.Now)
	cons, _, err := startConsumers(consumerCtx, cfg, true, pool, store, secrets.NewVault(pool, ring, rand.Reader), reg, log)
	if err != nil {
		return err
	}

	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		pending, err := migrations.Pending(r.Context(), pool)
		if err == nil && len(pending) > 0 {
			err = fmt.Errorf("%d migrations pending", len(pending))
		}
		if err == nil {
			err = cons.running(r.Context())
		}
		if err == nil {
			err = projections.CheckStalls(r.Context(), pool)
		}
		if err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	ln, err := net.Listen("tcp", cfg.WorkerAddr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	errs := make(chan error, 1)
	go func() { errs <- srv.Serve(ln) }()
	log.Info("twofactord worker running", "addr", ln.Addr().String())

	select {
	case err = <-errs:
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = srv.Shutdown(shutdown)
	stopConsumers()
	cons.wait()
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	log.Info("worker stopped")
	return nil
}
