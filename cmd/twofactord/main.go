// Command twofactord runs the twofactor service and its operator tools.
package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/twofactor/twofactor/commands"
	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/eventstore"
	"github.com/twofactor/twofactor/handlers"
	"github.com/twofactor/twofactor/secrets"
)

const usage = `twofactord: two-factor authentication backend

usage:
  twofactord serve [flags]                 open the database, migrate, and serve
  twofactord worker [flags]                run the projectors and the notifier without the API (scale-out)
  twofactord forwarder [flags]             only forward the event log to NATS JetStream (--bus nats; workers run one too)
  twofactord migrate [flags]               apply the database migrations
  twofactord tenant create --name NAME     create a tenant and print its id (--json for scripts)
  twofactord keys rotate [flags]           re-wrap every user data key under the first master key
  twofactord audit verify [--tenant T] [--file EXPORT] [--checkpoint FILE]
                                           recompute the hash chains; exit 1 naming the first broken event
  twofactord audit checkpoint [--tenant T] print the stream heads to keep outside the database
  twofactord audit export --tenant T       JSON lines an auditor verifies offline (audit verify --file)
  twofactord audit history --tenant T --user U
  twofactord audit state --tenant T --user U --at RFC3339
  twofactord notifications failed [--tenant T] [--json]
                                           list notifications that gave up (also: notifications retry)
  twofactord replay --read-model NAME|--all  rebuild read models from the log while the service runs
  twofactord consumers stalled [--json]    list the events consumers isolated, stalling a tenant (heal: replay)

Run "twofactord COMMAND -h" for a command's flags. Every flag also reads a TWOFACTOR_* variable.
`

func main() {
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, log); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "twofactord:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, out io.Writer, log *slog.Logger) error {
	if len(args) == 0 {
		fmt.Fprint(out, usage)
		return flag.ErrHelp
	}
	cfg := fromEnv(DefaultConfig())
	switch {
	case args[0] == "serve":
		return serve(ctx, cfg, args[1:], log)
	case args[0] == "worker":
		return worker(ctx, cfg, args[1:], log)
	case args[0] == "forwarder":
		return forwarderCommand(ctx, cfg, args[1:], log)
	case args[0] == "migrate":
		return migrate(ctx, cfg, args[1:], out)
	case args[0] == "tenant" && len(args) > 1 && args[1] == "create":
		return createTenant(ctx, cfg, args[2:], out)
	case args[0] == "keys" && len(args) > 1 && args[1] == "rotate":
		return rotateKeys(ctx, cfg, args[2:], out, log)
	case args[0] == "audit":
		return auditCommand(ctx, cfg, args[1:], out)
	case args[0] == "notifications":
		return notifications(ctx, cfg, args[1:], out)
	case args[0] == "replay":
		return replay(ctx, cfg, args[1:], out, log)
	case args[0] == "consumers" && len(args) > 1 && args[1] == "stalled":
		return consumersStalled(ctx, cfg, args[2:], out)
	case args[0] == "help" || args[0] == "-h" || args[0] == "--help":
		fmt.Fprint(out, usage)
		return nil
	}
	fmt.Fprint(out, usage)
	return fmt.Errorf("unknown command %q", strings.Join(args, " "))
}

func parse(fs *flag.FlagSet, args []string, cfg Config) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	return cfg.Validate()
}

// openDatabase connects, creating the database first when it does not exist.
func openDatabase(ctx context.Context, databaseURL string) (*pgxpool.Pool, error) {
	if err := ensureDatabase(ctx, databaseURL); err != nil {
		return nil, err
	}
	pcfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		return nil, fmt.Errorf("database: %w", err)
	}
	// pgxpool's default (4 on two cores) is shared by the API's commands, the
	// consumers' open batch transactions and the notifier's claims: requests
	// queued for a connection while PostgreSQL had cores to spare.
	// pool_max_conns in the URL still decides.
	if !strings.Contains(databaseURL, "pool_max_conns") {
		pcfg.MaxConns = int32(max(16, 4*runtime.NumCPU()))
	}
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("database: %w", err)
	}
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := pool.Ping(pingCtx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("database: %w", err)
	}
	return pool, nil
}

func ensureDatabase(ctx context.Context, databaseURL string) error {
	cfg, err := pgx.ParseConfig(databaseURL)
	if err != nil {
		return fmt.Errorf("database url: %w", err)
	}
	name := cfg.Database
	u, err := url.Parse(databaseURL)
	if err != nil || name == "" || name == "postgres" {
		return nil // a keyword/value DSN or the maintenance database: nothing to create
	}
	u.Path = "/postgres"
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, u.String())
	if err != nil {
		// The target database may exist while "postgres" is not reachable to us.
		return nil
	}
	defer conn.Close(ctx)
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return fmt.Errorf("database: %w", err)
	}
	if exists {
		return nil
	}
	_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	var pgErr interface{ SQLState() string }
	if errors.As(err, &pgErr) && pgErr.SQLState() == "42P04" {
		return nil // created concurrently by another process
	}
	return err
}

func migrate(ctx context.Context, cfg Config, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("migrate", flag.ContinueOnError)
	cfg.bindDatabase(fs)
	if err := parse(fs, args, cfg); err != nil {
		return err
	}
	pool, err := openDatabase(ctx, cfg.DatabaseURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	applied, err := applyMigrations(ctx, cfg, pool)
	if err != nil {
		return err
	}
	if len(applied) == 0 {
		fmt.Fprintln(out, "database is up to date")
	}
	for _, name := range applied {
		fmt.Fprintln(out, "applied", name)
	}
	return nil
}

func createTenant(ctx context.Context, cfg Config, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("tenant create", flag.ContinueOnError)
	cfg.bindDatabase(fs)
	name := fs.String("name", "", "tenant name (required)")
	asJSON := fs.Bool("json", false, "print JSON for scripts")
	if err := parse(fs, args, cfg); err != nil {
		return err
	}
	if *name == "" {
		return errors.New("--name is required")
	}
	pool, err := openDatabase(ctx, cfg.DatabaseURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	if _, err := applyMigrations(ctx, cfg, pool); err != nil {
		return err
	}
	// Creating a tenant seals nothing, so it needs no keys.
	svc := commands.New(eventstore.New(pool, time.Now), nil, nil, time.Now, rand.Reader)
	meta := commands.Meta{Actor: domain.Actor{Kind: domain.ActorSystem, ID: "cli"}, Reason: "twofactord tenant create"}
	created, err := handlers.CreateTenantWithKeys(ctx, svc, handlers.NewKeyStore(pool, rand.Reader), meta, *name, nil)
	if err != nil {
		return err
	}
	if *asJSON {
		// One key per role, by role name: what scripts pick from.
		keys := map[string]any{}
		for _, k := range created.APIKeys {
			keys[string(k.Role)] = map[string]string{"key_id": k.KeyID, "token": k.Token}
		}
		return json.NewEncoder(out).Encode(map[string]any{"tenant_id": created.TenantID, "name": *name, "api_keys": keys})
	}
	fmt.Fprintln(out, created.TenantID)
	fmt.Fprintln(out, "API keys (shown once; only their hashes are stored):")
	for _, k := range created.APIKeys {
		fmt.Fprintf(out, "  %-10s %s\n", k.Role, k.Token)
	}
	return nil
}

func rotateKeys(ctx context.Context, cfg Config, args []string, out io.Writer, log *slog.Logger) error {
	fs := flag.NewFlagSet("keys rotate", flag.ContinueOnError)
	cfg.bindDatabase(fs)
	cfg.bindKeys(fs)
	if err := parse(fs, args, cfg); err != nil {
		return err
	}
	if cfg.Dev {
		return errors.New("keys rotate does not run in development mode")
	}
	ring, hasher, err := cfg.keys(log)
	if err != nil {
		return err
	}
	// Checked like serve: a wrong old key re-wraps nothing, and the new first
	// key is recorded before it wraps anything.
	pool, _, err := openWithKeys(ctx, cfg, ring, hasher, log)
	if err != nil {
		return err
	}
	defer pool.Close()
	n, err := secrets.NewVault(pool, ring, rand.Reader).Rotate(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "re-wrapped %d data keys under master key %q\n", n, ring.PrimaryID())
	return nil
}
