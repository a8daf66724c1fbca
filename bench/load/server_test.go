package load_test

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime/pprof"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/gin-gonic/gin"

	"github.com/twofactor/twofactor/audit"
	"github.com/twofactor/twofactor/bench/load"
	"github.com/twofactor/twofactor/commands"
	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/eventstore"
	"github.com/twofactor/twofactor/handlers"
	"github.com/twofactor/twofactor/internal/testdb"
	"github.com/twofactor/twofactor/messaging"
	"github.com/twofactor/twofactor/notifier"
	"github.com/twofactor/twofactor/projections"
	"github.com/twofactor/twofactor/secrets"
)

func TestMain(m *testing.M) {
	gin.SetMode(gin.ReleaseMode)
	os.Exit(testdb.Main(m))
}

// server is the whole service in this process, wired as `twofactord serve`
// wires it (cmd/twofactord/serve.go: newAPI and startConsumers): the API, the
// user-status projector and the notifier in one watermill router, the
// notifier's delivery workers and the LISTEN connection, with the rate limits
// off as bench/run.sh starts the real binary.
type server struct {
	URL    string
	DBURL  string
	Tenant load.Tenant
	stop   func()
}

func startServer(t testing.TB, smtpURL string) *server {
	t.Helper()
	pool := testdb.Pool(t)
	dbURL := testdb.URL(t)
	log := slog.New(slog.NewJSONHandler(io.Discard, nil))
	ring, err := secrets.ParseMasterKeys(mustKey(t, "k1"))
	if err != nil {
		t.Fatal(err)
	}
	codeKey := mustKey(t, "code")
	hasher, err := secrets.ParseCodeKey(codeKey[len("code:"):])
	if err != nil {
		t.Fatal(err)
	}
	store := eventstore.New(pool, time.Now)
	vault := secrets.NewVault(pool, ring, rand.Reader)
	svc := commands.New(store, vault, hasher, time.Now, rand.Reader)
	metrics := handlers.NewMetrics()
	svc.OnConflictRetry(metrics.ConflictRetried)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wlog := watermill.NewSlogLogger(log)
	listener := messaging.NewListener(pool, wlog, messaging.EventsChannel, projections.ReadModelsChannel)
	pmetrics, err := projections.NewMetrics(pool, metrics.Registry)
	if err != nil {
		t.Fatal(err)
	}
	projector := projections.NewProjector(pool, store, projections.ProjectorOptions{Logger: log, Metrics: pmetrics})
	senders, err := notifier.SenderConfig{SMTPURL: smtpURL, MailDir: t.TempDir()}.Build(log)
	if err != nil {
		t.Fatal(err)
	}
	n, err := notifier.New(notifier.Deps{Pool: pool, Store: store, Vault: vault, Mail: senders.Mail, SMS: senders.SMS,
		Logger: log, Metrics: metrics.Registry}, notifier.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	mcfg := messaging.DefaultConfig()
	mcfg.Listener = listener
	router, err := messaging.NewRouter(pool, mcfg, wlog, []messaging.Consumer{projector.Consumer(), n.Consumer()})
	if err != nil {
		t.Fatal(err)
	}
	// Labels for BenchmarkVerifyHTTP's profile; goroutines inherit them.
	pprof.Do(ctx, pprof.Labels("side", "consumers"), func(ctx context.Context) {
		wg.Go(func() { _ = listener.Run(ctx) })
		wg.Go(func() { _ = router.Run(ctx) })
		wg.Go(func() { _ = n.Run(ctx) })
	})
	select {
	case <-router.Running():
	case <-time.After(30 * time.Second):
		t.Fatal("the consumers did not start")
	}

	hcfg := handlers.DefaultConfig()
	hcfg.KeyRate, hcfg.IPRate = -1, -1
	keys := handlers.NewKeyStore(pool, rand.Reader)
	api, err := handlers.New(hcfg, handlers.Deps{
		Commands: svc, Pool: pool, Keys: keys, Audit: audit.New(pool),
		Reads:   handlers.ProjectionReads(projections.NewQueries(pool, projections.QueryOptions{Listener: listener})),
		Secrets: hasher, Metrics: metrics, Log: log,
		Ready: []handlers.ReadyCheck{{Name: "consumers", Check: func(context.Context) error {
			if !router.IsRunning() {
				return errors.New("consumers not running")
			}
			return nil
		}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := handlers.NewServer(ln.Addr().String(), api.Handler(), hcfg.RequestTimeout)
	pprof.Do(ctx, pprof.Labels("side", "api"), func(context.Context) {
		wg.Go(func() { _ = srv.Serve(ln) })
	})

	created, err := handlers.CreateTenantWithKeys(ctx, svc, keys,
		commands.Meta{Actor: domain.Actor{Kind: domain.ActorSystem, ID: "bench"}}, "Bench", nil)
	if err != nil {
		t.Fatal(err)
	}
	tenant := load.Tenant{TenantID: created.TenantID, Name: "Bench", APIKeys: map[string]struct {
		KeyID string `json:"key_id"`
		Token string `json:"token"`
	}{}}
	for _, k := range created.APIKeys {
		tenant.APIKeys[string(k.Role)] = struct {
			KeyID string `json:"key_id"`
			Token string `json:"token"`
		}{k.KeyID, k.Token}
	}
	s := &server{URL: "http://" + ln.Addr().String(), DBURL: dbURL, Tenant: tenant}
	var once sync.Once
	s.stop = func() {
		once.Do(func() {
			sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer scancel()
			_ = srv.Shutdown(sctx)
			cancel()
			_ = router.Close()
			wg.Wait()
		})
	}
	t.Cleanup(s.stop)
	return s
}

func mustKey(t testing.TB, id string) string {
	t.Helper()
	k, err := secrets.GenerateMasterKey(rand.Reader, id)
	if err != nil {
		t.Fatal(err)
	}
	return k.String()
}
