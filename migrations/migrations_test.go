package migrations_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/twofactor/twofactor/internal/testdb"
	"github.com/twofactor/twofactor/migrations"
)

func TestMain(m *testing.M) { os.Exit(testdb.Main(m)) }

func TestADatabaseMigratedByANewerBinaryIsRefused(t *testing.T) {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testdb.Fresh(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	all, err := migrations.All()
	if err != nil {
		t.Fatal(err)
	}
	latest := all[len(all)-1]
	if err := migrations.CheckNotNewer(ctx, pool); err != nil {
		t.Fatalf("a database at this binary's version: %v", err)
	}
	newer := latest.Version + 1
	if _, err := pool.Exec(ctx, `INSERT INTO schema_migrations (version, name) VALUES ($1, 'from_the_future.sql')`, newer); err != nil {
		t.Fatal(err)
	}
	versions := func() string {
		var s string
		if err := pool.QueryRow(ctx, `SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_migrations`).Scan(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	before := versions()
	_, applyErr := migrations.Apply(ctx, pool)
	_, pendingErr := migrations.Pending(ctx, pool)
	for name, err := range map[string]error{"CheckNotNewer": migrations.CheckNotNewer(ctx, pool), "Apply": applyErr, "Pending": pendingErr} {
		var newerErr *migrations.NewerSchemaError
		if !errors.As(err, &newerErr) || newerErr.Database != newer || newerErr.Binary != latest.Version {
			t.Fatalf("%s: %v", name, err)
		}
		if msg := err.Error(); !strings.Contains(msg, fmt.Sprint(newer)) || !strings.Contains(msg, latest.Name) {
			t.Fatalf("%s does not name both versions: %s", name, msg)
		}
	}
	if after := versions(); after != before {
		t.Fatalf("schema_migrations changed from %s to %s", before, after)
	}
}
