package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/twofactor/twofactor/audit"
)

// errVerifyFailed makes `audit verify` exit non-zero after printing its report.
var errVerifyFailed = errors.New("the history does not verify")

// auditCommand runs `twofactord audit verify|history|state|export|checkpoint`.
func auditCommand(ctx context.Context, cfg Config, args []string, out io.Writer) error {
	if len(args) == 0 {
		return errors.New("audit: verify, history, state, export or checkpoint")
	}
	fs := flag.NewFlagSet("audit "+args[0], flag.ContinueOnError)
	cfg.bindDatabase(fs)
	tenant := fs.String("tenant", "", "tenant id")
	user := fs.String("user", "", "user id (history, state)")
	at := fs.String("at", "", "RFC 3339 time (state)")
	file := fs.String("file", "", "verify an export file offline instead of the database")
	checkpoint := fs.String("checkpoint", "", "verify against a checkpoint file taken earlier")
	if err := parse(fs, args[1:], cfg); err != nil {
		return err
	}
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")

	if args[0] == "verify" && *file != "" {
		f, err := os.Open(*file)
		if err != nil {
			return err
		}
		defer f.Close()
		rep, err := audit.VerifyExport(f)
		if err != nil {
			return err
		}
		return reportVerdict(enc, rep)
	}
	pool, err := openDatabase(ctx, cfg.DatabaseURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	a := audit.New(pool)
	needTenant := func() error {
		if *tenant == "" {
			return errors.New("--tenant is required")
		}
		return nil
	}

	switch args[0] {
	case "verify":
		var rep audit.Report
		if *checkpoint != "" {
			raw, err := os.ReadFile(*checkpoint)
			if err != nil {
				return err
			}
			var cp audit.Checkpoint
			if err := json.Unmarshal(raw, &cp); err != nil {
				return fmt.Errorf("checkpoint file: %w", err)
			}
			rep, err = a.VerifyCheckpoint(ctx, cp)
			if err != nil {
				return err
			}
		} else if rep, err = a.Verify(ctx, *tenant); err != nil {
			return err
		}
		return reportVerdict(enc, rep)
	case "checkpoint":
		cp, err := a.TakeCheckpoint(ctx, *tenant, time.Now())
		if err != nil {
			return err
		}
		return enc.Encode(cp)
	case "export":
		if err := needTenant(); err != nil {
			return err
		}
		_, err := a.Export(ctx, *tenant, out)
		return err
	case "history":
		if err := needTenant(); err != nil {
			return err
		}
		var all []audit.Entry
		for after := int64(0); ; {
			page, err := a.History(ctx, *tenant, *user, audit.Filter{AfterPosition: after, Limit: 1000})
			if err != nil {
				return err
			}
			all = append(all, page.Entries...)
			if page.Next == 0 {
				break
			}
			after = page.Next
		}
		return enc.Encode(all)
	case "state":
		if err := needTenant(); err != nil {
			return err
		}
		when := time.Now()
		if *at != "" {
			if when, err = time.Parse(time.RFC3339, *at); err != nil {
				return fmt.Errorf("--at: %w", err)
			}
		}
		snap, err := a.StateAt(ctx, *tenant, *user, when)
		if err != nil {
			return err
		}
		return enc.Encode(snap)
	}
	return fmt.Errorf("unknown audit command %q", args[0])
}

func reportVerdict(enc *json.Encoder, rep audit.Report) error {
	if err := enc.Encode(rep); err != nil {
		return err
	}
	if !rep.OK {
		return errVerifyFailed
	}
	return nil
}
