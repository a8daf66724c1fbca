package secrets

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twofactor/twofactor/internal/testdb"
)

// The tests in this file share one database and do not run in parallel: the
// rotation tests look at the whole user_data_keys table. Other tests keep to a
// tenant named after the test.

func testRing(t testing.TB, keys ...MasterKey) *Keyring {
	t.Helper()
	ring, err := NewKeyring(keys...)
	if err != nil {
		t.Fatal(err)
	}
	return ring
}

func newKey(t testing.TB, id string) MasterKey {
	t.Helper()
	k, err := GenerateMasterKey(rand.Reader, id)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func tenantOf(t testing.TB) string { return "tenant-" + t.Name() }

func keyRows(t testing.TB, pool *pgxpool.Pool, tenantID string) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM user_data_keys WHERE tenant_id = $1`, tenantID).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func mustSeal(t testing.TB, v *Vault, tenantID, userID string, p Purpose, plaintext string) string {
	t.Helper()
	s, err := v.Seal(context.Background(), tenantID, userID, p, []byte(plaintext))
	if err != nil {
		t.Fatalf("seal for %s/%s: %v", tenantID, userID, err)
	}
	return s
}

func mustOpen(t testing.TB, v *Vault, tenantID, userID string, p Purpose, sealed, want string) {
	t.Helper()
	got, err := v.Open(context.Background(), tenantID, userID, p, sealed)
	if err != nil {
		t.Fatalf("open for %s/%s: %v", tenantID, userID, err)
	}
	if string(got) != want {
		t.Fatalf("opened %q, want %q", got, want)
	}
}

func TestSealOpenRoundTrip(t *testing.T) {
	pool := testdb.Pool(t)
	ring := testRing(t, newKey(t, "k1"))
	v := NewVault(pool, ring, rand.Reader)
	tenant := tenantOf(t)

	binary := make([]byte, 300)
	if _, err := rand.Read(binary); err != nil {
		t.Fatal(err)
	}
	values := map[Purpose]string{
		PurposeTOTPSecret: "JBSWY3DPEHPK3PXP",
		PurposeOTPCode:    "123456",
		PurposeEmail:      "alice@example.com",
		PurposePhone:      "+14155550123",
		"binary":          string(binary),
		"empty":           "",
	}
	sealed := map[Purpose]string{}
	for p, plain := range values {
		s := mustSeal(t, v, tenant, "alice", p, plain)
		body, ok := strings.CutPrefix(s, "v1.")
		if !ok {
			t.Fatalf("sealed value %q lacks the v1. prefix", s)
		}
		raw, err := base64.RawURLEncoding.Strict().DecodeString(body)
		if err != nil {
			t.Fatalf("sealed value is not raw base64url: %v", err)
		}
		if want := 12 + len(plain) + 16; len(raw) != want {
			t.Fatalf("sealed %d bytes, want nonce+ciphertext+tag = %d", len(raw), want)
		}
		if len(plain) > 4 && bytes.Contains(raw, []byte(plain)) {
			t.Fatal("plaintext visible in the sealed value")
		}
		sealed[p] = s
	}
	for p, s := range sealed {
		mustOpen(t, v, tenant, "alice", p, s, values[p])
	}
	// A vault with a cold cache (another process) opens them too.
	other := NewVault(pool, ring, rand.Reader)
	for p, s := range sealed {
		mustOpen(t, other, tenant, "alice", p, s, values[p])
	}
	// Fresh nonces: sealing the same plaintext twice gives different values.
	if a, b := mustSeal(t, v, tenant, "alice", PurposeOTPCode, "123456"), mustSeal(t, v, tenant, "alice", PurposeOTPCode, "123456"); a == b {
		t.Fatal("two seals of one plaintext are equal")
	}
	// One data key per user, wrapped by the primary key.
	if n := keyRows(t, pool, tenant); n != 1 {
		t.Fatalf("%d key rows, want 1", n)
	}
	var keyID string
	var wrapped []byte
	if err := pool.QueryRow(context.Background(), `SELECT master_key_id, wrapped_key FROM user_data_keys WHERE tenant_id = $1`, tenant).Scan(&keyID, &wrapped); err != nil {
		t.Fatal(err)
	}
	if keyID != "k1" || len(wrapped) != 12+32+16 {
		t.Fatalf("key row: master key %q, wrapped %d bytes", keyID, len(wrapped))
	}
}

func TestSealedValueIsBoundToTenantUserAndPurpose(t *testing.T) {
	pool := testdb.Pool(t)
	v := NewVault(pool, testRing(t, newKey(t, "k1")), rand.Reader)
	ctx := context.Background()
	tenant, otherTenant := tenantOf(t), tenantOf(t)+"-other"

	sealed := mustSeal(t, v, tenant, "alice", PurposeEmail, "alice@example.com")
	// Give the other parties data keys, so the failure is authentication and not
	// a missing key.
	mustSeal(t, v, tenant, "bob", PurposeEmail, "bob@example.com")
	mustSeal(t, v, otherTenant, "alice", PurposeEmail, "alice@other.example")

	cases := []struct {
		name           string
		tenant, user   string
		purpose        Purpose
		sealed         string
		wantKeyErased  bool
		wantOpenFailed bool
	}{
		{"other user", tenant, "bob", PurposeEmail, sealed, false, true},
		{"other purpose", tenant, "alice", PurposePhone, sealed, false, true},
		{"totp purpose", tenant, "alice", PurposeTOTPSecret, sealed, false, true},
		{"other tenant", otherTenant, "alice", PurposeEmail, sealed, false, true},
		{"user without key", tenant, "carol", PurposeEmail, sealed, true, false},
	}
	for _, c := range cases {
		got, err := v.Open(ctx, c.tenant, c.user, c.purpose, c.sealed)
		if err == nil {
			t.Errorf("%s: opened to %q", c.name, got)
			continue
		}
		if errors.Is(err, ErrOpenFailed) != c.wantOpenFailed || errors.Is(err, ErrKeyErased) != c.wantKeyErased {
			t.Errorf("%s: unexpected error %v", c.name, err)
		}
	}
	// Opening never creates a key.
	if n := keyRows(t, pool, tenant); n != 2 {
		t.Fatalf("%d key rows, want 2 (alice, bob)", n)
	}
	mustOpen(t, v, tenant, "alice", PurposeEmail, sealed, "alice@example.com")
}

func TestSealAssociatedDataCannotShift(t *testing.T) {
	pairs := [][2][]byte{
		{sealAAD("ab", "c", "p"), sealAAD("a", "bc", "p")},
		{sealAAD("t", "ab", "c"), sealAAD("t", "a", "bc")},
		{sealAAD("t", "u", PurposeEmail), sealAAD("t", "u", PurposePhone)},
		{wrapAAD("ab", "c", "k"), wrapAAD("a", "bc", "k")},
		{wrapAAD("t", "u", "k1"), wrapAAD("t", "u", "k2")},
		{sealAAD("t", "u", "k"), wrapAAD("t", "u", "k")},
	}
	for i, p := range pairs {
		if bytes.Equal(p[0], p[1]) {
			t.Errorf("pair %d: associated data collide", i)
		}
	}
}

func TestTamperedSealedValueFails(t *testing.T) {
	pool := testdb.Pool(t)
	v := NewVault(pool, testRing(t, newKey(t, "k1")), rand.Reader)
	ctx := context.Background()
	tenant := tenantOf(t)
	sealed := mustSeal(t, v, tenant, "alice", PurposeTOTPSecret, "JBSWY3DPEHPK3PXP")
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(sealed, "v1."))
	if err != nil {
		t.Fatal(err)
	}
	// Flip one bit in every byte position: nonce, ciphertext and tag.
	for i := range raw {
		bad := append([]byte(nil), raw...)
		bad[i] ^= 0x01
		_, err := v.Open(ctx, tenant, "alice", PurposeTOTPSecret, "v1."+base64.RawURLEncoding.EncodeToString(bad))
		if !errors.Is(err, ErrOpenFailed) {
			t.Fatalf("byte %d flipped: got %v, want ErrOpenFailed", i, err)
		}
	}
	malformed := map[string]string{
		"empty":            "",
		"prefix only":      "v1.",
		"no prefix":        strings.TrimPrefix(sealed, "v1."),
		"other version":    "v2." + strings.TrimPrefix(sealed, "v1."),
		"padded":           sealed + "==",
		"std alphabet":     "v1." + strings.Repeat("+/", 20),
		"not base64":       "v1.!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
		"too short":        "v1." + base64.RawURLEncoding.EncodeToString(raw[:27]),
		"truncated":        sealed[:len(sealed)-4],
		"appended":         "v1." + base64.RawURLEncoding.EncodeToString(append(append([]byte(nil), raw...), 0)),
		"enormous":         "v1." + strings.Repeat("A", 200_000),
		"whitespace":       " " + sealed,
		"trailing newline": sealed + "\n",
		"inner newline":    sealed[:10] + "\r\n" + sealed[10:],
	}
	for name, s := range malformed {
		if _, err := v.Open(ctx, tenant, "alice", PurposeTOTPSecret, s); !errors.Is(err, ErrOpenFailed) {
			t.Errorf("%s: got %v, want ErrOpenFailed", name, err)
		}
	}
	mustOpen(t, v, tenant, "alice", PurposeTOTPSecret, sealed, "JBSWY3DPEHPK3PXP")
}

func TestForgetErasesEverywhere(t *testing.T) {
	pool := testdb.Pool(t)
	ring := testRing(t, newKey(t, "k1"))
	a := NewVault(pool, ring, rand.Reader)
	b := NewVault(pool, ring, rand.Reader) // another process, with its own cache
	ctx := context.Background()
	tenant := tenantOf(t)

	secret := mustSeal(t, a, tenant, "alice", PurposeTOTPSecret, "JBSWY3DPEHPK3PXP")
	email := mustSeal(t, a, tenant, "alice", PurposeEmail, "alice@example.com")
	bobs := mustSeal(t, a, tenant, "bob", PurposeEmail, "bob@example.com")
	mustOpen(t, b, tenant, "alice", PurposeTOTPSecret, secret, "JBSWY3DPEHPK3PXP") // warms b's cache
	if b.cache.size() == 0 {
		t.Fatal("cache unused")
	}

	if err := a.Forget(ctx, tenant, "alice"); err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]*Vault{"forgetting vault": a, "other vault": b} {
		for _, s := range []string{secret, email} {
			if _, err := v.Open(ctx, tenant, "alice", PurposeTOTPSecret, s); !errors.Is(err, ErrKeyErased) {
				t.Errorf("%s: got %v, want ErrKeyErased", name, err)
			}
		}
	}
	if n := keyRows(t, pool, tenant); n != 1 {
		t.Fatalf("%d key rows, want 1 (bob's)", n)
	}
	// Idempotent, also for users who never had a key.
	for _, user := range []string{"alice", "nobody"} {
		if err := b.Forget(ctx, tenant, user); err != nil {
			t.Fatalf("forget %s: %v", user, err)
		}
	}
	// Other users are untouched.
	mustOpen(t, b, tenant, "bob", PurposeEmail, bobs, "bob@example.com")

	// Sealing again creates a new key; erased values stay unreadable under it.
	fresh := mustSeal(t, b, tenant, "alice", PurposeTOTPSecret, "NEWSECRET")
	if _, err := a.Open(ctx, tenant, "alice", PurposeTOTPSecret, secret); !errors.Is(err, ErrOpenFailed) {
		t.Fatalf("old value under the new key: got %v, want ErrOpenFailed", err)
	}
	mustOpen(t, a, tenant, "alice", PurposeTOTPSecret, fresh, "NEWSECRET")
}

func TestConcurrentFirstSealCreatesOneKey(t *testing.T) {
	pool := testdb.Pool(t)
	ring := testRing(t, newKey(t, "k1"))
	tenant := tenantOf(t)
	const n = 20
	var (
		wg     sync.WaitGroup
		start  = make(chan struct{})
		sealed [n]string
		errs   [n]error
	)
	for i := range n {
		// One vault per goroutine: separate caches, like separate processes.
		v := NewVault(pool, ring, rand.Reader)
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			sealed[i], errs[i] = v.Seal(context.Background(), tenant, "alice", PurposeOTPCode, fmt.Appendf(nil, "%06d", i))
		}()
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("seal %d: %v", i, err)
		}
	}
	if got := keyRows(t, pool, tenant); got != 1 {
		t.Fatalf("%d key rows, want exactly 1", got)
	}
	v := NewVault(pool, ring, rand.Reader)
	for i, s := range sealed {
		mustOpen(t, v, tenant, "alice", PurposeOTPCode, s, fmt.Sprintf("%06d", i))
	}
}

// resetKeys empties user_data_keys: rotation works on the whole table.
func resetKeys(t testing.TB, pool *pgxpool.Pool) {
	t.Helper()
	if _, err := pool.Exec(context.Background(), `DELETE FROM user_data_keys`); err != nil {
		t.Fatal(err)
	}
}

// insertWrappedKeys adds n data keys wrapped by v's primary key, in bulk.
func insertWrappedKeys(t testing.TB, v *Vault, tenantID string, n int) {
	t.Helper()
	rows := make([][]any, n)
	for i := range rows {
		user := fmt.Sprintf("bulk-%05d", i)
		wrapped, err := v.wrap(tenantID, user, randomKey(t))
		if err != nil {
			t.Fatal(err)
		}
		rows[i] = []any{tenantID, user, v.ring.PrimaryID(), wrapped}
	}
	_, err := v.pool.CopyFrom(context.Background(), pgx.Identifier{"user_data_keys"},
		[]string{"tenant_id", "user_id", "master_key_id", "wrapped_key"}, pgx.CopyFromRows(rows))
	if err != nil {
		t.Fatal(err)
	}
}

func TestRotate(t *testing.T) {
	pool := testdb.Pool(t)
	resetKeys(t, pool)
	ctx := context.Background()
	tenant := tenantOf(t)
	oldKey, newKeyM, otherKey := newKey(t, "old"), newKey(t, "new"), newKey(t, "other")

	before := NewVault(pool, testRing(t, oldKey), rand.Reader)
	// Enough rows for several batches, a few of them with sealed values.
	const bulk = 2*RotateBatchSize + 3
	insertWrappedKeys(t, before, tenant, bulk)
	type value struct{ user, sealed, plain string }
	var values []value
	for i := range 5 {
		user, plain := fmt.Sprintf("user-%d", i), fmt.Sprintf("secret-%d", i)
		values = append(values, value{user, mustSeal(t, before, tenant, user, PurposeTOTPSecret, plain), plain})
	}
	// A key already under the new primary is left alone.
	current := NewVault(pool, testRing(t, newKeyM), rand.Reader)
	already := mustSeal(t, current, tenant, "already-new", PurposeEmail, "new@example.com")
	const total = bulk + 5

	// A keyring missing the old key refuses, and changes nothing.
	if _, err := NewVault(pool, testRing(t, newKeyM, otherKey), rand.Reader).Rotate(ctx); err == nil || !strings.Contains(err.Error(), `"old"`) {
		t.Fatalf("rotate without the old key: got %v, want an error naming key \"old\"", err)
	}
	var underOld int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM user_data_keys WHERE master_key_id = 'old' AND rewrapped_at IS NULL`).Scan(&underOld); err != nil {
		t.Fatal(err)
	}
	if underOld != total {
		t.Fatalf("%d rows still under old, want %d", underOld, total)
	}

	rotator := NewVault(pool, testRing(t, newKeyM, oldKey), rand.Reader)
	// The rotating vault has opened old values (and cached their keys) before.
	mustOpen(t, rotator, tenant, values[0].user, PurposeTOTPSecret, values[0].sealed, values[0].plain)
	n, err := rotator.Rotate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n != total {
		t.Fatalf("re-wrapped %d, want %d", n, total)
	}
	var rewrapped, untouched, notNew int
	err = pool.QueryRow(ctx, `SELECT
			count(*) FILTER (WHERE rewrapped_at IS NOT NULL),
			count(*) FILTER (WHERE rewrapped_at IS NULL AND user_id = 'already-new'),
			count(*) FILTER (WHERE master_key_id <> 'new')
		FROM user_data_keys`).Scan(&rewrapped, &untouched, &notNew)
	if err != nil {
		t.Fatal(err)
	}
	if rewrapped != total || untouched != 1 || notNew != 0 {
		t.Fatalf("after rotation: %d re-wrapped (want %d), %d untouched (want 1), %d not under new (want 0)", rewrapped, total, untouched, notNew)
	}
	if n, err := rotator.Rotate(ctx); err != nil || n != 0 {
		t.Fatalf("second rotation: %d, %v; want 0, nil", n, err)
	}

	// Only the new key is needed now.
	after := NewVault(pool, testRing(t, newKeyM), rand.Reader)
	for _, val := range values {
		mustOpen(t, after, tenant, val.user, PurposeTOTPSecret, val.sealed, val.plain)
		mustOpen(t, rotator, tenant, val.user, PurposeTOTPSecret, val.sealed, val.plain)
	}
	mustOpen(t, after, tenant, "already-new", PurposeEmail, already, "new@example.com")
	// The bulk keys unwrap under the new key as well.
	if _, err := after.dataKey(ctx, tenant, "bulk-00000", false); err != nil {
		t.Fatal(err)
	}
	if _, err := after.dataKey(ctx, tenant, fmt.Sprintf("bulk-%05d", bulk-1), false); err != nil {
		t.Fatal(err)
	}
	// A process still configured with only the old key fails loudly, and not as a
	// wrong code: it is a configuration fault.
	_, err = before.Open(ctx, tenant, values[1].user, PurposeTOTPSecret, values[1].sealed)
	if err == nil || errors.Is(err, ErrOpenFailed) || errors.Is(err, ErrKeyErased) || !strings.Contains(err.Error(), `"new"`) {
		t.Fatalf("old-only vault after rotation: got %v", err)
	}
}

func TestCorruptedKeyRowIsAServerFault(t *testing.T) {
	pool := testdb.Pool(t)
	ctx := context.Background()
	tenant := tenantOf(t)
	v := NewVault(pool, testRing(t, newKey(t, "k1")), rand.Reader)
	sealed := mustSeal(t, v, tenant, "alice", PurposeOTPCode, "123456")
	bobs := mustSeal(t, v, tenant, "bob", PurposeOTPCode, "654321")
	if _, err := pool.Exec(ctx, `UPDATE user_data_keys SET wrapped_key = set_byte(wrapped_key, 20, get_byte(wrapped_key, 20) # 1) WHERE tenant_id = $1 AND user_id = 'alice'`, tenant); err != nil {
		t.Fatal(err)
	}
	_, err := v.Open(ctx, tenant, "alice", PurposeOTPCode, sealed)
	if err == nil || errors.Is(err, ErrOpenFailed) || errors.Is(err, ErrKeyErased) {
		t.Fatalf("tampered key row: got %v, want a distinct error", err)
	}
	// A key row moved to another user does not unwrap there either.
	if _, err := pool.Exec(ctx, `UPDATE user_data_keys SET user_id = 'mallory' WHERE tenant_id = $1 AND user_id = 'bob'`, tenant); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Seal(ctx, tenant, "mallory", PurposeOTPCode, []byte("x")); err == nil || errors.Is(err, ErrOpenFailed) {
		t.Fatalf("a key row moved to another user: got %v, want a distinct error", err)
	}
	if _, err := v.Open(ctx, tenant, "mallory", PurposeOTPCode, bobs); err == nil || errors.Is(err, ErrOpenFailed) {
		t.Fatalf("a key row moved to another user: got %v, want a distinct error", err)
	}
}

func TestSealReadsTheInjectedRandom(t *testing.T) {
	pool := testdb.Pool(t)
	ctx := context.Background()
	tenant := tenantOf(t)
	ring := testRing(t, newKey(t, "k1"))

	if _, err := NewVault(pool, ring, failingReader{}).Seal(ctx, tenant, "alice", PurposeOTPCode, []byte("1")); !errors.Is(err, errNoEntropy) {
		t.Fatalf("got %v, want the reader's error", err)
	}
	if n := keyRows(t, pool, tenant); n != 0 {
		t.Fatalf("%d key rows after a failed seal, want 0", n)
	}
	// With the key in place, the nonce is the next 12 bytes of the reader.
	fixed := bytes.Repeat([]byte{0xAB}, 12)
	v := NewVault(pool, ring, &scriptedReader{chunks: [][]byte{randomKey(t), randomKey(t)[:12], fixed}})
	s := mustSeal(t, v, tenant, "alice", PurposeOTPCode, "654321")
	raw, _ := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(s, "v1."))
	if !bytes.Equal(raw[:12], fixed) {
		t.Fatalf("nonce %x, want %x from the injected reader", raw[:12], fixed)
	}
	mustOpen(t, NewVault(pool, ring, rand.Reader), tenant, "alice", PurposeOTPCode, s, "654321")
}

// scriptedReader returns its chunks in order, then fails.
type scriptedReader struct {
	mu     sync.Mutex
	chunks [][]byte
}

func (r *scriptedReader) Read(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.chunks) == 0 {
		return 0, errNoEntropy
	}
	n := copy(p, r.chunks[0])
	r.chunks[0] = r.chunks[0][n:]
	if len(r.chunks[0]) == 0 {
		r.chunks = r.chunks[1:]
	}
	return n, nil
}

func TestVaultRejectsBadArguments(t *testing.T) {
	pool := testdb.Pool(t)
	ctx := context.Background()
	v := NewVault(pool, testRing(t, newKey(t, "k1")), rand.Reader)
	if _, err := v.Seal(ctx, "", "u", PurposeEmail, []byte("x")); err == nil {
		t.Error("empty tenant accepted")
	}
	if _, err := v.Seal(ctx, "t", "", PurposeEmail, []byte("x")); err == nil {
		t.Error("empty user accepted")
	}
	if _, err := v.Seal(ctx, "t", "u", "", []byte("x")); err == nil {
		t.Error("empty purpose accepted")
	}
	if _, err := v.Seal(ctx, "t", "u", PurposeEmail, make([]byte, maxPlaintext+1)); err == nil {
		t.Error("oversized plaintext accepted")
	}
	if err := v.Forget(ctx, "t", ""); err == nil {
		t.Error("forget without user accepted")
	}
	if _, err := NewVault(nil, nil, nil).Seal(ctx, "t", "u", PurposeEmail, nil); err == nil {
		t.Error("vault without database or keyring sealed")
	}
	if _, err := NewVault(nil, nil, nil).Rotate(ctx); err == nil {
		t.Error("vault without database or keyring rotated")
	}
}

func TestKeyCacheIsBounded(t *testing.T) {
	c := newKeyCache(3)
	aead, err := newAEAD(randomKey(t))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		c.put(cacheKey{"t", fmt.Sprint(i)}, cacheEntry{masterKeyID: "k", wrapped: []byte{byte(i)}, aead: aead})
		if c.size() > 3 {
			t.Fatalf("cache grew to %d entries", c.size())
		}
	}
	c.put(cacheKey{"t", "x"}, cacheEntry{masterKeyID: "k", wrapped: []byte{1}, aead: aead})
	if _, ok := c.get(cacheKey{"t", "x"}, "k", []byte{1}); !ok {
		t.Fatal("fresh entry missing")
	}
	if _, ok := c.get(cacheKey{"t", "x"}, "k", []byte{2}); ok {
		t.Fatal("entry used for other wrapped bytes")
	}
	if _, ok := c.get(cacheKey{"t", "x"}, "k2", []byte{1}); ok {
		t.Fatal("entry used for another master key id")
	}
	c.evict(cacheKey{"t", "x"})
	if _, ok := c.get(cacheKey{"t", "x"}, "k", []byte{1}); ok {
		t.Fatal("evicted entry still served")
	}
}
