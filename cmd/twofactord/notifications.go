package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/twofactor/twofactor/migrations"
	"github.com/twofactor/twofactor/notifier"
)

const notificationsUsage = `usage:
  twofactord notifications failed [--tenant ID] [--limit N] [--json]
      list the notifications that gave up after their last attempt (status dead), newest first
  twofactord notifications retry (--event ID [--kind KIND] | --tenant ID)
      queue dead notifications again with a fresh count of attempts
`

// notifications is the operators' view of the notifier's delivery ledger.
func notifications(ctx context.Context, cfg Config, args []string, out io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(out, notificationsUsage)
		return flag.ErrHelp
	}
	switch args[0] {
	case "failed":
		return notificationsFailed(ctx, cfg, args[1:], out)
	case "retry":
		return notificationsRetry(ctx, cfg, args[1:], out)
	}
	fmt.Fprint(out, notificationsUsage)
	return fmt.Errorf("unknown command %q", "notifications "+strings.Join(args, " "))
}

func notificationsFailed(ctx context.Context, cfg Config, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("notifications failed", flag.ContinueOnError)
	cfg.bindDatabase(fs)
	tenant := fs.String("tenant", "", "only this tenant")
	limit := fs.Int("limit", 100, "at most this many")
	asJSON := fs.Bool("json", false, "print JSON lines for scripts")
	if err := parse(fs, args, cfg); err != nil {
		return err
	}
	if *limit < 1 {
		return errors.New("--limit must be at least 1")
	}
	pool, err := openDatabase(ctx, cfg.DatabaseURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := upToDate(ctx, pool); err != nil {
		return err
	}
	dead, err := notifier.ListDead(ctx, pool, notifier.Filter{TenantID: *tenant, Limit: *limit})
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(out)
		for _, e := range dead {
			if err := enc.Encode(e); err != nil {
				return err
			}
		}
		return nil
	}
	if len(dead) == 0 {
		fmt.Fprintln(out, "no failed notifications")
		return nil
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "UPDATED\tTENANT\tUSER\tKIND\tEVENT\tATTEMPTS\tLAST ERROR")
	for _, e := range dead {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", e.UpdatedAt.Format(time.RFC3339), e.TenantID, e.UserID,
			e.Kind, e.EventID, e.Attempts, strings.ReplaceAll(e.LastError, "\t", " "))
	}
	return w.Flush()
}

func notificationsRetry(ctx context.Context, cfg Config, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("notifications retry", flag.ContinueOnError)
	cfg.bindDatabase(fs)
	event := fs.String("event", "", "event id of the notification")
	kind := fs.String("kind", "", "only this kind of notification of the event")
	tenant := fs.String("tenant", "", "every dead notification of this tenant (or narrow --event to it)")
	if err := parse(fs, args, cfg); err != nil {
		return err
	}
	if *event == "" && *tenant == "" {
		return errors.New("--event or --tenant is required")
	}
	if *kind != "" && *event == "" {
		return errors.New("--kind needs --event")
	}
	pool, err := openDatabase(ctx, cfg.DatabaseURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := upToDate(ctx, pool); err != nil {
		return err
	}
	n, err := notifier.Retry(ctx, pool, *tenant, *event, notifier.Kind(*kind), time.Now())
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "queued %d notifications again\n", n)
	return nil
}

// upToDate refuses to read a database the notifier's migration has not reached.
func upToDate(ctx context.Context, pool *pgxpool.Pool) error {
	pending, err := migrations.Pending(ctx, pool)
	if err != nil {
		return err
	}
	for _, name := range pending {
		if name <= "0004_notifications.sql" {
			return fmt.Errorf("the database lacks migration %s: run twofactord migrate", name)
		}
	}
	return nil
}
