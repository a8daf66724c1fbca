package secrets

import (
	"bytes"
	"context"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/twofactor/twofactor/eventstore"
)

// Purpose binds a ciphertext to what it holds; it is part of the GCM associated
// data, so a value sealed for one purpose does not open as another.
// WARNING: the values are durable; renaming one makes existing ciphertexts unreadable.
type Purpose string

// WARNING: durable names, see Purpose.
const (
	PurposeTOTPSecret Purpose = "totp-secret"
	PurposeOTPCode    Purpose = "otp-code"
	PurposeEmail      Purpose = "email-address"
	PurposePhone      Purpose = "phone-number"
	// A security key's credential (id, public key, flags) and the name its
	// owner gave it: personal data, erased with the user's data key.
	PurposeSecurityKey     Purpose = "security-key"
	PurposeSecurityKeyName Purpose = "security-key-name"
)

var (
	// ErrKeyErased means the user has no data key: it was deleted (erasure), so
	// everything sealed for the user is gone for good.
	ErrKeyErased = errors.New("secrets: the user's data key has been erased")
	// ErrOpenFailed means a sealed value did not authenticate: malformed, tampered,
	// or sealed for another tenant, user or purpose.
	ErrOpenFailed = errors.New("secrets: sealed value failed to open")
)

const (
	// sealedPrefix versions the printable sealed form.
	// WARNING: durable; it is stored in events.
	sealedPrefix = "v1."
	// WARNING: durable labels of the associated data; changing one makes every
	// stored ciphertext or wrapped key unreadable.
	sealLabel = "twofactor/sealed/v1"
	wrapLabel = "twofactor/data-key/v1"

	nonceSize    = 12 // GCM standard nonce
	tagSize      = 16
	wrappedSize  = nonceSize + KeySize + tagSize
	maxPlaintext = 64 << 10 // secrets, codes, addresses: small by nature
	maxFieldLen  = 1 << 10  // tenant and user ids

	// DefaultCacheSize bounds the in-memory cache of unwrapped data keys.
	DefaultCacheSize = 10_000
	// RotateBatchSize is how many data keys Rotate re-wraps per transaction.
	RotateBatchSize = 500
)

// Vault seals values under per-user data keys, stored wrapped by a master key in
// the table user_data_keys. It is safe for concurrent use.
//
// Cache: every Seal and Open reads the user's row (one primary-key lookup; a
// command may read it in its own first batch instead, LookupKey and OpenWith), so a
// Forget by any process takes effect at once everywhere: no process keeps opening
// an erased user's data from memory, and none seals new data under a deleted key it
// still remembers. What is cached is only the unwrapped key (as a ready AEAD),
// valid for exactly the wrapped bytes it came from, which saves the unwrap and the
// key schedules; a re-wrapped or re-created row simply misses the cache.
type Vault struct {
	pool   *pgxpool.Pool
	ring   *Keyring
	random io.Reader
	cache  *keyCache
}

// NewVault returns a vault over pool. random must be a cryptographically secure
// reader (nil means crypto/rand); it provides data keys and nonces.
func NewVault(pool *pgxpool.Pool, ring *Keyring, random io.Reader) *Vault {
	if random == nil {
		random = rand.Reader
	}
	return &Vault{pool: pool, ring: ring, random: random, cache: newKeyCache(DefaultCacheSize)}
}

// Seal encrypts plaintext with the user's data key (created on first use) using
// AES-256-GCM with a random nonce and associated data binding tenant, user and
// purpose. The result is "v1." + base64url(nonce || ciphertext), without padding.
//
// A Seal racing with Forget for the same user may return a value under the key
// being deleted; that value is unreadable, like everything else of the user.
func (v *Vault) Seal(ctx context.Context, tenantID, userID string, purpose Purpose, plaintext []byte) (string, error) {
	if err := v.check(tenantID, userID, purpose); err != nil {
		return "", err
	}
	if len(plaintext) > maxPlaintext {
		return "", fmt.Errorf("secrets: seal: plaintext of %d bytes exceeds %d", len(plaintext), maxPlaintext)
	}
	aead, err := v.dataKey(ctx, tenantID, userID, true)
	if err != nil {
		return "", err
	}
	out := make([]byte, nonceSize, nonceSize+len(plaintext)+tagSize)
	if _, err := io.ReadFull(v.random, out); err != nil {
		return "", fmt.Errorf("secrets: seal: read nonce: %w", err)
	}
	out = aead.Seal(out, out[:nonceSize], plaintext, sealAAD(tenantID, userID, purpose))
	return sealedPrefix + base64.RawURLEncoding.EncodeToString(out), nil
}

// Open reverses Seal. It returns ErrKeyErased if the user has no data key (erased,
// or never had one) and an error wrapping ErrOpenFailed if sealed is malformed or
// does not authenticate for this tenant, user and purpose.
func (v *Vault) Open(ctx context.Context, tenantID, userID string, purpose Purpose, sealed string) ([]byte, error) {
	if err := v.check(tenantID, userID, purpose); err != nil {
		return nil, err
	}
	raw, err := decodeSealed(sealed)
	if err != nil {
		return nil, err
	}
	aead, err := v.dataKey(ctx, tenantID, userID, false)
	if err != nil {
		return nil, err
	}
	return open(aead, raw, tenantID, userID, purpose)
}

func open(aead cipher.AEAD, raw []byte, tenantID, userID string, purpose Purpose) ([]byte, error) {
	plaintext, err := aead.Open(nil, raw[:nonceSize], raw[nonceSize:], sealAAD(tenantID, userID, purpose))
	if err != nil {
		return nil, fmt.Errorf("%w: authentication failed", ErrOpenFailed)
	}
	return plaintext, nil
}

// Forget deletes the user's data key, making everything sealed for the user
// unreadable, and evicts it from this process's cache. Idempotent.
func (v *Vault) Forget(ctx context.Context, tenantID, userID string) error {
	if err := v.checkUser(tenantID, userID); err != nil {
		return err
	}
	defer v.cache.evict(cacheKey{tenantID, userID})
	// Within a request's unit the key goes when the erasure event commits, not before.
	err := eventstore.InOpenTx(ctx, v.pool, func(q eventstore.Querier) error {
		_, err := q.Exec(ctx, `DELETE FROM user_data_keys WHERE tenant_id = $1 AND user_id = $2`, tenantID, userID)
		return err
	})
	if err != nil {
		return fmt.Errorf("secrets: forget data key: %w", err)
	}
	return nil
}

// Rotate re-wraps under the primary master key every data key wrapped by another
// one, RotateBatchSize rows per transaction, and returns how many it re-wrapped.
// Before changing anything it checks that every master key id in use is in the
// keyring, and fails naming the missing ones; a row that does not unwrap fails its
// batch (earlier batches stay done). Rows locked by a concurrent Rotate are
// skipped and left to it; running Rotate again is harmless.
func (v *Vault) Rotate(ctx context.Context) (int, error) {
	if v.ring == nil || v.pool == nil {
		return 0, errors.New("secrets: vault has no keyring or no database")
	}
	primary := v.ring.PrimaryID()
	if err := v.checkRotatable(ctx, primary); err != nil {
		return 0, err
	}
	total := 0
	for {
		n, err := v.rotateBatch(ctx, primary)
		total += n
		if err != nil {
			return total, err
		}
		if n < RotateBatchSize {
			return total, nil
		}
	}
}

// checkRotatable fails before any change if a data key's master key is unknown.
func (v *Vault) checkRotatable(ctx context.Context, primary string) error {
	rows, err := v.pool.Query(ctx, `SELECT DISTINCT master_key_id FROM user_data_keys WHERE master_key_id <> $1`, primary)
	if err != nil {
		return fmt.Errorf("secrets: rotate: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("secrets: rotate: %w", err)
	}
	var unknown []string
	for _, id := range ids {
		if _, ok := v.ring.aead(id); !ok {
			unknown = append(unknown, id)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return fmt.Errorf("secrets: rotate: data keys are wrapped by master keys not in the keyring: %q; add them after the primary key and run again", unknown)
	}
	return nil
}

type keyRow struct {
	tenantID, userID, masterKeyID string
	wrapped                       []byte
}

func (v *Vault) rotateBatch(ctx context.Context, primary string) (int, error) {
	n := 0
	err := pgx.BeginFunc(ctx, v.pool, func(tx pgx.Tx) error {
		n = 0
		rows, err := tx.Query(ctx, `
			SELECT tenant_id, user_id, master_key_id, wrapped_key FROM user_data_keys
			WHERE master_key_id <> $1
			ORDER BY tenant_id, user_id
			LIMIT $2
			FOR UPDATE SKIP LOCKED`, primary, RotateBatchSize)
		if err != nil {
			return err
		}
		batch, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (keyRow, error) {
			var k keyRow
			err := r.Scan(&k.tenantID, &k.userID, &k.masterKeyID, &k.wrapped)
			return k, err
		})
		if err != nil {
			return err
		}
		if len(batch) == 0 {
			return nil
		}
		var updates pgx.Batch
		for _, row := range batch {
			key, err := v.unwrap(row)
			if err != nil {
				return err
			}
			wrapped, err := v.wrap(row.tenantID, row.userID, key)
			clear(key)
			if err != nil {
				return err
			}
			updates.Queue(`
				UPDATE user_data_keys SET master_key_id = $3, wrapped_key = $4, rewrapped_at = now()
				WHERE tenant_id = $1 AND user_id = $2 AND master_key_id = $5`,
				row.tenantID, row.userID, primary, wrapped, row.masterKeyID)
		}
		results := tx.SendBatch(ctx, &updates)
		for range batch {
			tag, err := results.Exec()
			if err != nil {
				results.Close()
				return err
			}
			n += int(tag.RowsAffected())
		}
		return results.Close()
	})
	if err != nil {
		return 0, fmt.Errorf("secrets: rotate: %w", err)
	}
	return n, nil
}

// dataKey returns the user's data key as an AEAD, creating the key if create is set.
func (v *Vault) dataKey(ctx context.Context, tenantID, userID string, create bool) (cipher.AEAD, error) {
	row, found, err := v.loadKey(ctx, tenantID, userID)
	if err != nil {
		return nil, err
	}
	// Creation is race-safe: every racer inserts its own candidate, the first one
	// wins, and all of them then read the winner. A concurrent Forget between the
	// two statements sends us round again.
	for attempt := 0; !found && create && attempt < 3; attempt++ {
		if err := v.insertKey(ctx, tenantID, userID); err != nil {
			return nil, err
		}
		if row, found, err = v.loadKey(ctx, tenantID, userID); err != nil {
			return nil, err
		}
	}
	if !found && create {
		v.cache.evict(cacheKey{tenantID, userID})
		return nil, errors.New("secrets: could not create the user's data key (deleted concurrently)")
	}
	return v.aeadOf(tenantID, userID, row, found)
}

// aeadOf turns a data-key row just read into an AEAD (through the cache).
func (v *Vault) aeadOf(tenantID, userID string, row keyRow, found bool) (cipher.AEAD, error) {
	ck := cacheKey{tenantID, userID}
	if !found {
		v.cache.evict(ck)
		return nil, ErrKeyErased
	}
	if aead, ok := v.cache.get(ck, row.masterKeyID, row.wrapped); ok {
		return aead, nil
	}
	key, err := v.unwrap(row)
	if err != nil {
		return nil, err
	}
	aead, err := newAEAD(key)
	clear(key)
	if err != nil {
		return nil, err
	}
	v.cache.put(ck, cacheEntry{masterKeyID: row.masterKeyID, wrapped: row.wrapped, aead: aead})
	return aead, nil
}

// KeyLookup is a user's data-key row read in a caller's batch of queries (see
// LookupKey), so that opening a value needs no round trip of its own.
type KeyLookup struct {
	row   keyRow
	found bool
	done  bool
	err   error
}

const selectKey = `SELECT master_key_id, wrapped_key FROM user_data_keys WHERE tenant_id = $1 AND user_id = $2`

// LookupKey prepares the read of the user's data-key row in a caller's batch:
// queue adds it to the batch, and once the batch has been sent, OpenWith opens
// the user's values with it. It is the same read Open makes, made earlier in
// the same command: a Forget that committed before it is seen, as by Open.
func (v *Vault) LookupKey(tenantID, userID string) (k *KeyLookup, queue func(*pgx.Batch)) {
	k = &KeyLookup{row: keyRow{tenantID: tenantID, userID: userID}}
	return k, func(b *pgx.Batch) {
		b.Queue(selectKey, tenantID, userID).Query(func(rows pgx.Rows) error {
			defer rows.Close()
			k.done = true
			if rows.Next() {
				k.found = true
				k.err = rows.Scan(&k.row.masterKeyID, &k.row.wrapped)
			}
			if err := rows.Err(); err != nil && k.err == nil {
				k.err = err
			}
			return k.err
		})
	}
}

// OpenWith is Open with the row of a lookup that has been read. ok is false,
// and the caller should call Open, when the lookup is not for this user, was
// never read, or found no key (Open then reads the row again and decides
// between an erased user and a key created since).
func (v *Vault) OpenWith(k *KeyLookup, tenantID, userID string, purpose Purpose, sealed string) (plaintext []byte, ok bool, err error) {
	if k == nil || !k.done || k.err != nil || !k.found || k.row.tenantID != tenantID || k.row.userID != userID {
		return nil, false, nil
	}
	if err := v.check(tenantID, userID, purpose); err != nil {
		return nil, true, err
	}
	raw, err := decodeSealed(sealed)
	if err != nil {
		return nil, true, err
	}
	aead, err := v.aeadOf(tenantID, userID, k.row, true)
	if err != nil {
		return nil, true, err
	}
	plaintext, err = open(aead, raw, tenantID, userID, purpose)
	return plaintext, true, err
}

func (v *Vault) loadKey(ctx context.Context, tenantID, userID string) (keyRow, bool, error) {
	row := keyRow{tenantID: tenantID, userID: userID}
	err := v.pool.QueryRow(ctx, selectKey, tenantID, userID).Scan(&row.masterKeyID, &row.wrapped)
	if errors.Is(err, pgx.ErrNoRows) {
		return keyRow{}, false, nil
	}
	if err != nil {
		return keyRow{}, false, fmt.Errorf("secrets: load data key: %w", err)
	}
	return row, true, nil
}

func (v *Vault) insertKey(ctx context.Context, tenantID, userID string) error {
	key := make([]byte, KeySize)
	defer clear(key)
	if _, err := io.ReadFull(v.random, key); err != nil {
		return fmt.Errorf("secrets: generate data key: %w", err)
	}
	wrapped, err := v.wrap(tenantID, userID, key)
	if err != nil {
		return err
	}
	_, err = v.pool.Exec(ctx, `
		INSERT INTO user_data_keys (tenant_id, user_id, master_key_id, wrapped_key)
		VALUES ($1, $2, $3, $4)
		ON CONFLICT (tenant_id, user_id) DO NOTHING`,
		tenantID, userID, v.ring.PrimaryID(), wrapped)
	if err != nil {
		return fmt.Errorf("secrets: store data key: %w", err)
	}
	return nil
}

// wrap encrypts a data key under the primary master key; the associated data binds
// tenant, user and master key id. Output: nonce || ciphertext.
func (v *Vault) wrap(tenantID, userID string, key []byte) ([]byte, error) {
	id := v.ring.PrimaryID()
	aead, _ := v.ring.aead(id)
	out := make([]byte, nonceSize, wrappedSize)
	if _, err := io.ReadFull(v.random, out); err != nil {
		return nil, fmt.Errorf("secrets: wrap data key: read nonce: %w", err)
	}
	return aead.Seal(out, out[:nonceSize], key, wrapAAD(tenantID, userID, id)), nil
}

// unwrap returns the plain data key of a row. Failures here are server faults
// (missing master key, corrupted row), not ErrOpenFailed.
func (v *Vault) unwrap(row keyRow) ([]byte, error) {
	aead, ok := v.ring.aead(row.masterKeyID)
	if !ok {
		return nil, fmt.Errorf("secrets: a data key of tenant %q is wrapped by master key %q, which is not in the keyring", row.tenantID, row.masterKeyID)
	}
	if len(row.wrapped) != wrappedSize {
		return nil, fmt.Errorf("secrets: a data key of tenant %q has a malformed wrapped key", row.tenantID)
	}
	key, err := aead.Open(nil, row.wrapped[:nonceSize], row.wrapped[nonceSize:], wrapAAD(row.tenantID, row.userID, row.masterKeyID))
	if err != nil {
		return nil, fmt.Errorf("secrets: a data key of tenant %q does not unwrap under master key %q (wrong key or tampered row)", row.tenantID, row.masterKeyID)
	}
	return key, nil
}

func (v *Vault) check(tenantID, userID string, purpose Purpose) error {
	if purpose == "" || len(purpose) > maxFieldLen {
		return errors.New("secrets: a purpose of at most 1 KiB is required")
	}
	return v.checkUser(tenantID, userID)
}

func (v *Vault) checkUser(tenantID, userID string) error {
	switch {
	case v.pool == nil || v.ring == nil:
		return errors.New("secrets: vault has no keyring or no database")
	case tenantID == "" || userID == "":
		return errors.New("secrets: tenant id and user id are required")
	case len(tenantID) > maxFieldLen || len(userID) > maxFieldLen:
		return errors.New("secrets: tenant id or user id longer than 1 KiB")
	}
	return nil
}

func decodeSealed(sealed string) ([]byte, error) {
	body, ok := strings.CutPrefix(sealed, sealedPrefix)
	if !ok {
		return nil, fmt.Errorf("%w: unknown format", ErrOpenFailed)
	}
	if len(body) > base64.RawURLEncoding.EncodedLen(nonceSize+maxPlaintext+tagSize) {
		return nil, fmt.Errorf("%w: too long", ErrOpenFailed)
	}
	// The decoder skips '\r' and '\n'; accept only the one canonical spelling.
	if strings.ContainsAny(body, "\r\n") {
		return nil, fmt.Errorf("%w: malformed encoding", ErrOpenFailed)
	}
	raw, err := base64.RawURLEncoding.Strict().DecodeString(body)
	if err != nil {
		return nil, fmt.Errorf("%w: malformed encoding", ErrOpenFailed)
	}
	if len(raw) < nonceSize+tagSize {
		return nil, fmt.Errorf("%w: too short", ErrOpenFailed)
	}
	return raw, nil
}

func sealAAD(tenantID, userID string, purpose Purpose) []byte {
	return lengthPrefixed(sealLabel, tenantID, userID, string(purpose))
}

func wrapAAD(tenantID, userID, masterKeyID string) []byte {
	return lengthPrefixed(wrapLabel, tenantID, userID, masterKeyID)
}

// keyCache is a bounded map of unwrapped data keys. An entry is only used for the
// exact wrapped bytes it was unwrapped from (see Vault).
type keyCache struct {
	mu      sync.Mutex
	max     int
	entries map[cacheKey]cacheEntry
}

type cacheKey struct{ tenantID, userID string }

type cacheEntry struct {
	masterKeyID string
	wrapped     []byte
	aead        cipher.AEAD
}

func newKeyCache(max int) *keyCache {
	return &keyCache{max: max, entries: make(map[cacheKey]cacheEntry)}
}

func (c *keyCache) get(k cacheKey, masterKeyID string, wrapped []byte) (cipher.AEAD, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[k]
	if !ok || e.masterKeyID != masterKeyID || !bytes.Equal(e.wrapped, wrapped) {
		return nil, false
	}
	return e.aead, true
}

func (c *keyCache) put(k cacheKey, e cacheEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.entries[k]; !ok && len(c.entries) >= c.max {
		// Evict an arbitrary entry: misses only cost an unwrap.
		for old := range c.entries {
			delete(c.entries, old)
			break
		}
	}
	c.entries[k] = e
}

func (c *keyCache) evict(k cacheKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.entries, k)
}

func (c *keyCache) size() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}
