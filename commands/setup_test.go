package commands_test

import (
	"context"
	"os"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/internal/testdb"
	"github.com/twofactor/twofactor/internal/testkit"
)

func TestMain(m *testing.M) { os.Exit(testdb.Main(m)) }

var (
	ctx     = context.Background()
	system  = testkit.System
	admin   = testkit.Admin
	as      = testkit.As
	mustKey = testkit.MustKey
	wantErr = testkit.WantErr
)

func newFixture(t *testing.T, policy *domain.Policy) *testkit.Fixture {
	t.Helper()
	return testkit.New(t, testdb.Pool(t), policy)
}

// newFixtureOn uses the given database; tests that change every row of a table
// (key rotation) take a fresh one.
func newFixtureOn(t *testing.T, pool *pgxpool.Pool, policy *domain.Policy) *testkit.Fixture {
	t.Helper()
	return testkit.New(t, pool, policy)
}

func testdbPool(b *testing.B) *pgxpool.Pool { return testdb.Pool(b) }
