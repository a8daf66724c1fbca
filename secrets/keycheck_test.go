package secrets

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"reflect"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/twofactor/twofactor/internal/testdb"
)

// Key checks look at whole tables, so each test has a database of its own.
func freshPool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), testdb.Fresh(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func codeHasher(t *testing.T) *CodeHasher {
	t.Helper()
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	h, err := NewCodeHasher(key)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func keyCheckError(t *testing.T, err error) *KeyCheckError {
	t.Helper()
	var kerr *KeyCheckError
	if !errors.As(err, &kerr) {
		t.Fatalf("want a *KeyCheckError, got %v", err)
	}
	return kerr
}

func recordedChecks(t *testing.T, pool *pgxpool.Pool) (ids []string, fingerprints int) {
	t.Helper()
	ctx := context.Background()
	rows, err := pool.Query(ctx, `SELECT key_id FROM master_key_checks ORDER BY key_id`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM code_key_checks`).Scan(&fingerprints); err != nil {
		t.Fatal(err)
	}
	return ids, fingerprints
}

func TestKeysAreRecordedOnFirstUseAndAcceptedAfter(t *testing.T) {
	ctx := context.Background()
	pool := freshPool(t)
	k1, codes := newKey(t, "k1"), codeHasher(t)
	ring := testRing(t, k1)
	if err := VerifyKeys(ctx, pool, ring, codes, nil); err != nil {
		t.Fatal(err)
	}
	if ids, n := recordedChecks(t, pool); len(ids) != 0 || n != 0 {
		t.Fatalf("VerifyKeys recorded %v and %d fingerprints", ids, n)
	}
	recorded, err := RecordKeys(ctx, pool, ring, codes, nil, nil)
	if err != nil || !reflect.DeepEqual(recorded, []string{"k1"}) {
		t.Fatalf("first RecordKeys: %v, %v", recorded, err)
	}
	var value, fingerprint []byte
	if err := pool.QueryRow(ctx, `SELECT check_value FROM master_key_checks WHERE key_id = 'k1'`).Scan(&value); err != nil {
		t.Fatal(err)
	}
	if err := pool.QueryRow(ctx, `SELECT fingerprint FROM code_key_checks`).Scan(&fingerprint); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(value, k1.Key[:8]) || bytes.Contains(fingerprint, codes.key[:8]) {
		t.Fatal("a check value holds key material")
	}
	recorded, err = RecordKeys(ctx, pool, testRing(t, k1), codes, nil, nil)
	if err != nil || len(recorded) != 0 {
		t.Fatalf("second RecordKeys: %v, %v", recorded, err)
	}
}

func TestAnotherKeyUnderARecordedIDIsRefusedAndNothingRecorded(t *testing.T) {
	ctx := context.Background()
	pool := freshPool(t)
	codes := codeHasher(t)
	if _, err := RecordKeys(ctx, pool, testRing(t, newKey(t, "k1")), codes, nil, nil); err != nil {
		t.Fatal(err)
	}
	wrong := testRing(t, newKey(t, "k2"), newKey(t, "k1"))
	if kerr := keyCheckError(t, VerifyKeys(ctx, pool, wrong, codes, nil)); !reflect.DeepEqual(kerr.Mismatched, []string{"k1"}) || kerr.CodeKey {
		t.Fatalf("VerifyKeys: %+v", kerr)
	}
	_, err := RecordKeys(ctx, pool, wrong, codes, nil, nil)
	keyCheckError(t, err)
	if ids, _ := recordedChecks(t, pool); !reflect.DeepEqual(ids, []string{"k1"}) {
		t.Fatalf("a refused RecordKeys recorded: %v", ids)
	}
}

// A database from before check values: the key must unwrap a stored data key.
func TestAKeyWithoutCheckValueMustUnwrapTheDataKeysStoredUnderItsID(t *testing.T) {
	ctx := context.Background()
	pool := freshPool(t)
	k1, codes := newKey(t, "k1"), codeHasher(t)
	mustSeal(t, NewVault(pool, testRing(t, k1), nil), "t", "u", PurposeEmail, "u@example.test")

	wrong := testRing(t, newKey(t, "k1"))
	if kerr := keyCheckError(t, VerifyKeys(ctx, pool, wrong, codes, nil)); !reflect.DeepEqual(kerr.Mismatched, []string{"k1"}) {
		t.Fatalf("VerifyKeys: %+v", kerr)
	}
	if _, err := RecordKeys(ctx, pool, wrong, codes, nil, nil); err == nil {
		t.Fatal("RecordKeys accepted a key that does not unwrap the stored data keys")
	}
	if ids, n := recordedChecks(t, pool); len(ids) != 0 || n != 0 {
		t.Fatalf("a refused RecordKeys recorded %v and %d fingerprints", ids, n)
	}
	if recorded, err := RecordKeys(ctx, pool, testRing(t, k1), codes, nil, nil); err != nil || !reflect.DeepEqual(recorded, []string{"k1"}) {
		t.Fatalf("the right key: %v, %v", recorded, err)
	}
}

func TestAMasterKeyThatStoredDataKeysNeedMustBeConfigured(t *testing.T) {
	ctx := context.Background()
	pool := freshPool(t)
	k0, k1, codes := newKey(t, "k0"), newKey(t, "k1"), codeHasher(t)
	mustSeal(t, NewVault(pool, testRing(t, k0), nil), "t", "a", PurposeEmail, "a@example.test")
	mustSeal(t, NewVault(pool, testRing(t, k1), nil), "t", "b", PurposeEmail, "b@example.test")
	kerr := keyCheckError(t, VerifyKeys(ctx, pool, testRing(t, newKey(t, "k2")), codes, nil))
	if !reflect.DeepEqual(kerr.Missing, []string{"k0", "k1"}) || len(kerr.Mismatched) != 0 {
		t.Fatalf("VerifyKeys: %+v", kerr)
	}
	if err := VerifyKeys(ctx, pool, testRing(t, k1, k0), codes, nil); err != nil {
		t.Fatal(err)
	}
}

func TestAnotherBackupCodeKeyIsRefused(t *testing.T) {
	ctx := context.Background()
	pool := freshPool(t)
	ring := testRing(t, newKey(t, "k1"))
	if _, err := RecordKeys(ctx, pool, ring, codeHasher(t), nil, nil); err != nil {
		t.Fatal(err)
	}
	if kerr := keyCheckError(t, VerifyKeys(ctx, pool, ring, codeHasher(t), nil)); !kerr.CodeKey || len(kerr.Mismatched) != 0 {
		t.Fatalf("VerifyKeys: %+v", kerr)
	}
}

// Without a fingerprint, the witness decides; without stored evidence, the key is recorded.
func TestABackupCodeKeyWithoutFingerprintIsCheckedByTheWitness(t *testing.T) {
	ctx := context.Background()
	pool := freshPool(t)
	ring, codes := testRing(t, newKey(t, "k1")), codeHasher(t)
	witness := func(found, matches bool) CodeKeyWitness {
		return func(context.Context, Queryer, *CodeHasher) (bool, bool, error) { return found, matches, nil }
	}
	if kerr := keyCheckError(t, VerifyKeys(ctx, pool, ring, codes, witness(true, false))); !kerr.CodeKey {
		t.Fatalf("VerifyKeys: %+v", kerr)
	}
	if _, err := RecordKeys(ctx, pool, ring, codes, witness(true, false), nil); err == nil {
		t.Fatal("RecordKeys accepted a key the witness refutes")
	}
	if ids, n := recordedChecks(t, pool); len(ids) != 0 || n != 0 {
		t.Fatalf("a refused RecordKeys recorded %v and %d fingerprints", ids, n)
	}
	if _, err := RecordKeys(ctx, pool, ring, codes, witness(false, false), nil); err != nil {
		t.Fatal(err)
	}
	if _, n := recordedChecks(t, pool); n != 1 {
		t.Fatal("no fingerprint recorded")
	}
	// Once recorded, the fingerprint decides, whatever the witness says.
	if err := VerifyKeys(ctx, pool, ring, codes, witness(true, false)); err != nil {
		t.Fatal(err)
	}
}

func TestProcessesStartingTogetherWithDifferentKeysUnderOneIDOneWins(t *testing.T) {
	ctx := context.Background()
	pool := freshPool(t)
	codes := codeHasher(t)
	const racers = 4
	var wg sync.WaitGroup
	errs := make([]error, racers)
	for i := range racers {
		ring := testRing(t, newKey(t, "k1"))
		wg.Go(func() { _, errs[i] = RecordKeys(ctx, pool, ring, codes, nil, nil) })
	}
	wg.Wait()
	wins := 0
	for _, err := range errs {
		if err == nil {
			wins++
		} else {
			keyCheckError(t, err)
		}
	}
	if wins != 1 {
		t.Fatalf("%d processes with different keys under k1 started: %v", wins, errs)
	}
}

func TestRotationPassesTheChecksAtEveryStep(t *testing.T) {
	ctx := context.Background()
	pool := freshPool(t)
	k1, k2, codes := newKey(t, "k1"), newKey(t, "k2"), codeHasher(t)
	sealed := mustSeal(t, NewVault(pool, testRing(t, k1), nil), "t", "u", PurposeEmail, "u@example.test")
	if _, err := RecordKeys(ctx, pool, testRing(t, k1), codes, nil, nil); err != nil {
		t.Fatal(err)
	}
	both := testRing(t, k2, k1)
	if _, err := RecordKeys(ctx, pool, both, codes, nil, nil); err != nil {
		t.Fatal(err)
	}
	// k2 alone, before the rotation: k1 is still needed.
	if kerr := keyCheckError(t, VerifyKeys(ctx, pool, testRing(t, k2), codes, nil)); !reflect.DeepEqual(kerr.Missing, []string{"k1"}) {
		t.Fatalf("VerifyKeys: %+v", kerr)
	}
	if _, err := NewVault(pool, both, nil).Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if err := VerifyKeys(ctx, pool, testRing(t, k2), codes, nil); err != nil {
		t.Fatalf("after the rotation: %v", err)
	}
	if _, err := NewVault(pool, testRing(t, k2), nil).Open(ctx, "t", "u", PurposeEmail, sealed); err != nil {
		t.Fatal(err)
	}
}
