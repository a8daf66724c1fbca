package secrets

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/twofactor/twofactor/internal/testdb"
)

// lookup reads a user's data-key row in a batch, as a command's first batch does.
func lookup(t *testing.T, v *Vault, tenantID, userID string) *KeyLookup {
	t.Helper()
	k, queue := v.LookupKey(tenantID, userID)
	b := &pgx.Batch{}
	queue(b)
	if err := v.pool.SendBatch(context.Background(), b).Close(); err != nil {
		t.Fatal(err)
	}
	return k
}

// OpenWith opens with the row read in the caller's batch, and leaves every case
// it cannot decide from that row to Open: another user, a batch never sent, no
// key (erased, or created since).
func TestOpenWithAKeyReadInTheCallersBatch(t *testing.T) {
	ctx := context.Background()
	pool := testdb.Pool(t)
	v := NewVault(pool, testRing(t, newKey(t, "k1")), nil)
	tenant := tenantOf(t)
	sealed := mustSeal(t, v, tenant, "alice", PurposeTOTPSecret, "seed")

	k := lookup(t, v, tenant, "alice")
	got, ok, err := v.OpenWith(k, tenant, "alice", PurposeTOTPSecret, sealed)
	if !ok || err != nil || string(got) != "seed" {
		t.Fatalf("OpenWith = %q, %v, %v", got, ok, err)
	}
	if _, ok, err := v.OpenWith(k, tenant, "alice", PurposeOTPCode, sealed); !ok || !errors.Is(err, ErrOpenFailed) {
		t.Fatalf("another purpose: ok %v, err %v", ok, err)
	}
	if _, ok, _ := v.OpenWith(k, tenant, "bob", PurposeTOTPSecret, sealed); ok {
		t.Fatal("a lookup of alice opened for bob")
	}
	unsent, _ := v.LookupKey(tenant, "alice")
	if _, ok, _ := v.OpenWith(unsent, tenant, "alice", PurposeTOTPSecret, sealed); ok {
		t.Fatal("a lookup that was never sent opened")
	}

	// Forget before the lookup: no row, so Open decides (the key is erased).
	if err := v.Forget(ctx, tenant, "alice"); err != nil {
		t.Fatal(err)
	}
	k = lookup(t, v, tenant, "alice")
	if _, ok, _ := v.OpenWith(k, tenant, "alice", PurposeTOTPSecret, sealed); ok {
		t.Fatal("opened with no key row")
	}
	if _, err := v.Open(ctx, tenant, "alice", PurposeTOTPSecret, sealed); !errors.Is(err, ErrKeyErased) {
		t.Fatalf("Open after Forget: %v", err)
	}
}
