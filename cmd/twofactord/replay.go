package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/twofactor/twofactor/eventstore"
	"github.com/twofactor/twofactor/migrations"
	"github.com/twofactor/twofactor/projections"
)

// replay rebuilds read models from the events table while the service keeps
// running, then swaps them in; the live consumer group continues after the last
// event the rebuild applied (see projections/rebuild.go and the README).
func replay(ctx context.Context, cfg Config, args []string, out io.Writer, log *slog.Logger) error {
	fs := flag.NewFlagSet("replay", flag.ContinueOnError)
	cfg.bindDatabase(fs)
	name := fs.String("read-model", "", "read model to rebuild: "+strings.Join(projections.ReadModels(), ", "))
	all := fs.Bool("all", false, "rebuild every read model")
	batch := fs.Int("batch-size", 10_000, "events read from the log per batch")
	asJSON := fs.Bool("json", false, "print JSON for scripts")
	if err := parse(fs, args, cfg); err != nil {
		return err
	}
	var names []string
	switch {
	case *all && *name != "":
		return errors.New("give --read-model NAME or --all, not both")
	case *all:
		names = projections.ReadModels()
	case *name != "":
		if !slices.Contains(projections.ReadModels(), *name) {
			return fmt.Errorf("unknown read model %q (known: %s)", *name, strings.Join(projections.ReadModels(), ", "))
		}
		names = []string{*name}
	default:
		return errors.New("--read-model NAME or --all is required")
	}
	if *batch < 1 {
		return errors.New("--batch-size must be positive")
	}
	pool, err := openDatabase(ctx, cfg.DatabaseURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	if _, err := migrations.Apply(ctx, pool); err != nil {
		return err
	}
	store := eventstore.New(pool, time.Now)
	done := map[string]bool{}
	for _, n := range names {
		// tenant_coverage is maintained (and so rebuilt) with user_status.
		projector := n
		if n == projections.CoverageModel {
			projector = projections.UserStatusModel
		}
		if done[projector] {
			continue
		}
		done[projector] = true
		last := time.Now()
		stats, err := projections.Rebuild(ctx, pool, store, n, projections.RebuildOptions{
			BatchSize: *batch,
			Logger:    log,
			Progress: func(p projections.RebuildProgress) {
				if time.Since(last) >= 5*time.Second {
					last = time.Now()
					log.Info("replay progress", "read_model", n, "phase", p.Phase, "events", p.Events, "position", p.Position)
				}
			},
		})
		var failure *projections.EventFailure
		if errors.As(err, &failure) {
			// Name the event in words an operator can act on, then fail.
			r := failure.Record
			log.Error("replay: an event cannot be projected", "read_model", n, "position", r.Position, "event_id", r.EventID,
				"event_type", r.Type, "tenant", r.TenantID, "stream", r.StreamID, "version", r.Version, "error", failure.Err.Error())
			return fmt.Errorf("replay %s failed; nothing was swapped in: the %w", n, err)
		}
		if err != nil {
			return fmt.Errorf("replay %s: %w", n, err)
		}
		if *asJSON {
			if err := json.NewEncoder(out).Encode(map[string]any{
				"read_model": projector, "events": stats.Events, "users": stats.Users, "tenants": stats.Tenants,
				"position": stats.Position, "generation": stats.Generation, "seconds": stats.Total.Seconds(),
				"events_per_second": stats.EventsPerSecond(), "group_offset_moved": stats.GroupOffsetMoved,
				"stalls_cleared": stats.StallsCleared,
			}); err != nil {
				return err
			}
			continue
		}
		fmt.Fprintf(out, "rebuilt %s (user_status, tenant_coverage, tenant_policies): %d events, %d users, %d tenants in %.1fs (%.0f events/s)\n",
			projector, stats.Events, stats.Users, stats.Tenants, stats.Total.Seconds(), stats.EventsPerSecond())
		fmt.Fprintf(out, "swapped in at position %d (generation %d); the live consumer group %s continues after it\n",
			stats.Position, stats.Generation, projections.UserStatusGroup)
		if stats.StallsCleared > 0 {
			fmt.Fprintf(out, "healed %d stalled tenant(s) of %s: their held-back events are in the new tables\n",
				stats.StallsCleared, projections.UserStatusGroup)
		}
	}
	return nil
}
