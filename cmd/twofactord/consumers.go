package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/twofactor/twofactor/projections"
)

// consumersStalled lists the events consumers isolated (README "Stalled
// consumers"); they are healed by `twofactord replay` once they can be applied.
func consumersStalled(ctx context.Context, cfg Config, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("consumers stalled", flag.ContinueOnError)
	cfg.bindDatabase(fs)
	consumer := fs.String("consumer", "", "only this consumer group")
	asJSON := fs.Bool("json", false, "print JSON lines for scripts")
	if err := parse(fs, args, cfg); err != nil {
		return err
	}
	pool, err := openDatabase(ctx, cfg.DatabaseURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	stalls, err := projections.Stalls(ctx, pool, *consumer)
	if err != nil {
		if strings.Contains(err.Error(), "consumer_stalls") {
			return fmt.Errorf("%w (run twofactord migrate)", err)
		}
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(out)
		for _, s := range stalls {
			if err := enc.Encode(s); err != nil {
				return err
			}
		}
		return nil
	}
	if len(stalls) == 0 {
		fmt.Fprintln(out, "no consumer is stalled")
		return nil
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CONSUMER\tTENANT\tPOSITION\tEVENT\tTYPE\tSTREAM\tHELD BACK\tSINCE\tREASON")
	for _, s := range stalls {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%d\t%s\t%s\n", s.Consumer, s.TenantID, s.Position, s.EventID, s.EventType,
			s.StreamID, s.HeldBack, s.StalledAt.Format("2006-01-02T15:04:05Z"), s.Reason)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(out, "\nheal: fix the cause, then twofactord replay --read-model user_status")
	return nil
}
