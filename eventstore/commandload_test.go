package eventstore_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/eventstore"
)

// LoadForCommand reads in one round trip exactly what Load(tenant) and
// LoadSince(user) read, with or without a snapshot.
func TestLoadForCommandMatchesLoadAndLoadSince(t *testing.T) {
	ctx := context.Background()
	store, _ := newStore(t)
	tenant, user := eventstore.TenantStream("tenant-l"), eventstore.UserStream("tenant-l", "carol")
	if _, err := store.Append(ctx, "tenant-l", tenant, 0, []domain.Event{&domain.TwoFactorUnlocked{}}, meta); err != nil {
		t.Fatal(err)
	}
	same := func(t *testing.T, what string, got, want []*eventstore.Record) {
		t.Helper()
		if len(got) != len(want) {
			t.Fatalf("%s: %d records, want %d", what, len(got), len(want))
		}
		for i := range want {
			g, w := got[i], want[i]
			if g.Position != w.Position || g.EventID != w.EventID || g.Version != w.Version || g.Type != w.Type ||
				g.TenantID != w.TenantID || g.StreamID != w.StreamID || !g.RecordedAt.Equal(w.RecordedAt) ||
				g.TransactionID != w.TransactionID || !bytes.Equal(g.Hash, w.Hash) || !bytes.Equal(g.PrevHash, w.PrevHash) ||
				!bytes.Equal(g.Payload, w.Payload) || !bytes.Equal(g.RawMetadata, w.RawMetadata) || g.Event == nil {
				t.Fatalf("%s: record %d differs:\n got %+v\nwant %+v", what, i, g, w)
			}
		}
	}
	check := func(t *testing.T) {
		t.Helper()
		load, err := store.LoadForCommand(ctx, tenant, user, nil)
		if err != nil {
			t.Fatal(err)
		}
		tenantRecs, err := store.Load(ctx, tenant)
		if err != nil {
			t.Fatal(err)
		}
		if len(load.Tenant) != len(tenantRecs) {
			t.Fatalf("tenant: %d records, want %d", len(load.Tenant), len(tenantRecs))
		}
		for i, w := range tenantRecs {
			g := load.Tenant[i]
			if g.Version != w.Version || g.Type != w.Type || g.SchemaVersion != w.SchemaVersion ||
				!bytes.Equal(g.Payload, w.Payload) || !bytes.Equal(g.Hash, w.Hash) || g.Event != nil {
				t.Fatalf("tenant record %d: %+v, want %+v", i, g, w)
			}
			if err := g.DecodeEvent(); err != nil || g.Event == nil {
				t.Fatalf("tenant record %d: %v", i, err)
			}
		}
		snap, after, err := store.LoadSince(ctx, user)
		if err != nil {
			t.Fatal(err)
		}
		same(t, "user", load.User, after)
		switch {
		case (snap == nil) != (load.Snapshot == nil):
			t.Fatalf("snapshot %+v, want %+v", load.Snapshot, snap)
		case snap != nil && (snap.Version != load.Snapshot.Version || snap.Schema != load.Snapshot.Schema ||
			!bytes.Equal(snap.State, load.Snapshot.State) || !bytes.Equal(snap.MAC, load.Snapshot.MAC) ||
			snap.TenantID != load.Snapshot.TenantID || snap.StreamID != load.Snapshot.StreamID):
			t.Fatalf("snapshot %+v, want %+v", load.Snapshot, snap)
		}
	}
	check(t) // an empty stream
	for v := int64(0); v < 4; v++ {
		if _, err := store.Append(ctx, "tenant-l", user, v, []domain.Event{&domain.TwoFactorRequirementChanged{Required: v%2 == 0}}, meta); err != nil {
			t.Fatal(err)
		}
	}
	check(t) // no snapshot: the whole stream
	if err := store.SaveSnapshot(ctx, eventstore.Snapshot{StreamID: user, TenantID: "tenant-l", Version: 3, Schema: 7,
		State: []byte(`{"x":1}`), MAC: []byte{1, 2, 3}}); err != nil {
		t.Fatal(err)
	}
	check(t) // the snapshot and the one event after it
	if err := store.SaveSnapshot(ctx, eventstore.Snapshot{StreamID: user, TenantID: "tenant-l", Version: 4, Schema: 7,
		State: []byte(`{"x":2}`), MAC: []byte{4}}); err != nil {
		t.Fatal(err)
	}
	check(t) // a snapshot at the head: no events
}

// AppendAfter with the head's hash writes the same chain as Append, and a
// writer behind the stream still gets a concurrency conflict.
func TestAppendAfterAKnownHead(t *testing.T) {
	ctx := context.Background()
	store, pool := newStore(t)
	stream := eventstore.UserStream("tenant-h", "dave")
	a, err := store.AppendAfter(ctx, "tenant-h", stream, 0, nil, []domain.Event{&domain.TwoFactorUnlocked{}}, meta)
	if err != nil {
		t.Fatal(err)
	}
	head := a.Records[0].Hash
	b, err := store.AppendAfter(ctx, "tenant-h", stream, 1, head, []domain.Event{&domain.TwoFactorUnlocked{}, &domain.TwoFactorUnlocked{}}, meta)
	if err != nil {
		t.Fatal(err)
	}
	records, err := store.Load(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	prev := eventstore.GenesisHash
	for i, r := range records {
		if !bytes.Equal(r.PrevHash, prev) || !bytes.Equal(r.Hash, eventstore.Hash(prev, r)) {
			t.Fatalf("record %d breaks the chain", i)
		}
		prev = r.Hash
	}
	if b.Version != 3 || !bytes.Equal(records[1].PrevHash, head) {
		t.Fatalf("appended at %d; prev %x", b.Version, records[1].PrevHash)
	}
	// A writer that decided at version 1 lost the race, known head or not.
	_, err = store.AppendAfter(ctx, "tenant-h", stream, 1, head, []domain.Event{&domain.TwoFactorUnlocked{}}, meta)
	if !errors.Is(err, eventstore.ErrConcurrency) {
		t.Fatalf("err = %v, want a concurrency conflict", err)
	}
	if n := count(t, pool, `SELECT count(*) FROM events WHERE stream_id = $1`, stream); n != 3 {
		t.Fatalf("%d events, want 3", n)
	}
}
