package handlers_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/twofactor/twofactor/handlers"
	"github.com/twofactor/twofactor/internal/testdb"
	"github.com/twofactor/twofactor/messaging"
)

// startListener is serve's LISTEN connection, on the API keys' channel.
func startListener(t *testing.T, pool *pgxpool.Pool) *messaging.Listener {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	l := messaging.NewListener(pool, nil, handlers.APIKeysChannel)
	done := make(chan struct{})
	go func() { defer close(done); _ = l.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	deadline := time.Now().Add(10 * time.Second)
	for !l.Hears(handlers.APIKeysChannel) {
		if time.Now().After(deadline) {
			t.Fatal("the listener never connected")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return l
}

// revokeQuietly revokes a key behind every cache's back: the notifying trigger
// is off for the statement, so only the table knows.
func revokeQuietly(t *testing.T, pool *pgxpool.Pool, keyID string) {
	t.Helper()
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	must(t, err)
	defer tx.Rollback(ctx) //nolint:errcheck
	_, err = tx.Exec(ctx, `ALTER TABLE api_keys DISABLE TRIGGER api_keys_notify`)
	must(t, err)
	_, err = tx.Exec(ctx, `UPDATE api_keys SET revoked_at = now() WHERE key_id = $1`, keyID)
	must(t, err)
	_, err = tx.Exec(ctx, `ALTER TABLE api_keys ENABLE TRIGGER api_keys_notify`)
	must(t, err)
	must(t, tx.Commit(ctx))
}

func refusedWithin(t *testing.T, keys *handlers.KeyStore, token string, d time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		_, err := keys.Authenticate(context.Background(), token)
		if err != nil {
			return time.Since(start)
		}
		if time.Since(start) > d {
			t.Fatalf("the revoked key still authenticates after %v", d)
		}
		time.Sleep(time.Millisecond)
	}
}

// Two processes (two stores, each with its LISTEN connection) cache the keys
// they authenticated; a revocation in one reaches the other through the
// trigger's notification, and a change nobody was told of is what the cache
// answers until then (which shows the cache is used at all).
func TestAPIKeyCacheForgetsARevokedKeyInEveryProcess(t *testing.T) {
	pool := testdb.Pool(t)
	ctx := context.Background()
	a, b := handlers.NewKeyStore(pool, nil), handlers.NewKeyStore(pool, nil)
	la, lb := startListener(t, pool), startListener(t, pool)
	a.CacheWith(la)
	b.CacheWith(lb)
	_, aHeard := la.Wait(handlers.APIKeysChannel)
	_, bHeard := lb.Wait(handlers.APIKeysChannel)
	issued, err := a.Issue(ctx, "tenant-keycache", handlers.RoleApp, "app", "test")
	must(t, err)
	// The issue's own notification must be in before the caches fill, or it
	// would empty them after (as it should) and the test below would read the table.
	for _, heard := range []<-chan struct{}{aHeard, bHeard} {
		select {
		case <-heard:
		case <-time.After(10 * time.Second):
			t.Fatal("the new key's notification never came")
		}
	}

	for _, s := range []*handlers.KeyStore{a, b} {
		k, err := s.Authenticate(ctx, issued.Token)
		must(t, err)
		if k.KeyID != issued.KeyID || k.TenantID != "tenant-keycache" || k.Role != handlers.RoleApp {
			t.Fatalf("authenticated as %+v", k)
		}
	}
	// A wrong secret for a cached key id is refused (the cache compares the hash).
	if _, err := b.Authenticate(ctx, issued.Token[:len(issued.Token)-2]+"xx"); err == nil {
		t.Fatal("a wrong secret authenticated from the cache")
	}

	// Behind the caches' back: they still answer from memory.
	revokeQuietly(t, pool, issued.KeyID)
	if _, err := b.Authenticate(ctx, issued.Token); err != nil {
		t.Fatalf("the cache was not used: %v", err)
	}
	// Any change of the table is notified: every process forgets.
	_, err = pool.Exec(ctx, `UPDATE api_keys SET revoked_at = revoked_at WHERE key_id = $1`, issued.KeyID)
	must(t, err)
	t.Logf("refused by the other process %v after the notifying change", refusedWithin(t, b, issued.Token, 5*time.Second))

	// A revocation through the store: the revoking process refuses at once.
	second, err := a.Issue(ctx, "tenant-keycache", handlers.RoleAdmin, "admin", "test")
	must(t, err)
	for _, s := range []*handlers.KeyStore{a, b} {
		_, err := s.Authenticate(ctx, second.Token)
		must(t, err)
	}
	_, err = a.Revoke(ctx, "tenant-keycache", second.KeyID)
	must(t, err)
	if _, err := a.Authenticate(ctx, second.Token); err == nil {
		t.Fatal("the revoking process still accepts the key")
	}
	t.Logf("revocation seen by the other process after %v", refusedWithin(t, b, second.Token, 5*time.Second))
}

// hearsNothing is a LISTEN connection that is down.
type hearsNothing struct{}

func (hearsNothing) Wait(string) (uint64, <-chan struct{}) { return 0, make(chan struct{}) }
func (hearsNothing) Hears(string) bool                     { return false }

// Without notifications nothing is cached: every request reads the table.
func TestAPIKeyCacheIsOffWhileNotificationsAreNotHeard(t *testing.T) {
	pool := testdb.Pool(t)
	ctx := context.Background()
	keys := handlers.NewKeyStore(pool, nil)
	keys.CacheWith(hearsNothing{})
	issued, err := keys.Issue(ctx, "tenant-nocache", handlers.RoleApp, "app", "test")
	must(t, err)
	_, err = keys.Authenticate(ctx, issued.Token)
	must(t, err)
	revokeQuietly(t, pool, issued.KeyID)
	if _, err := keys.Authenticate(ctx, issued.Token); err == nil {
		t.Fatal("a key revoked in the table authenticated while notifications were not heard")
	}
}
