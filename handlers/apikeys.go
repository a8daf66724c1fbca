package handlers

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/eventstore"
)

// Role is what an API key may do in its tenant.
type Role string

const (
	// RoleApp is the host product's backend acting for its users: the actor is the user in the path.
	RoleApp        Role = "app"
	RoleAdmin      Role = "admin"
	RoleSuperAdmin Role = "superadmin"
	// RoleAuditor reads; every mutating route answers 403.
	RoleAuditor Role = "auditor"
)

// Roles lists every role, in the order `tenant create --json` prints them.
var Roles = []Role{RoleApp, RoleAdmin, RoleSuperAdmin, RoleAuditor}

// ParseRole accepts one of Roles.
func ParseRole(s string) (Role, error) {
	for _, r := range Roles {
		if string(r) == s {
			return r, nil
		}
	}
	return "", domain.Invalid("invalid_role", "role must be app, admin, superadmin or auditor")
}

// TokenPrefix makes a leaked key recognisable to secret scanners and people.
const TokenPrefix = "tfk_"

// APIKey is a stored key; the token itself is never stored.
type APIKey struct {
	KeyID     string     `json:"key_id"`
	TenantID  string     `json:"-"`
	Role      Role       `json:"role"`
	Name      string     `json:"name"`
	CreatedBy string     `json:"created_by"`
	CreatedAt time.Time  `json:"created_at"`
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
}

// IssuedKey is a new key with its token, shown exactly once.
type IssuedKey struct {
	APIKey
	Token string `json:"token"`
}

// KeyStore issues, authenticates and revokes tenant API keys.
//
// With a ChangeSignal (CacheWith), it remembers the keys it authenticated, so
// that a request costs no query of its own: every change of the api_keys table
// notifies APIKeysChannel (a trigger, migrations/0008) and every process then
// forgets what it cached. A revoked key is refused by the revoking process at
// once and by the others as soon as the notification reaches them (milliseconds).
// While the LISTEN connection is down nothing is cached: every request reads
// the table, as without a signal.
type KeyStore struct {
	pool   *pgxpool.Pool
	random io.Reader

	signal ChangeSignal
	mu     sync.RWMutex
	cache  map[string]cachedKey
}

// APIKeysChannel is notified whenever a row of api_keys changes.
// WARNING: durable name, shared with migrations/0008.
const APIKeysChannel = "twofactor_api_keys"

// ChangeSignal says when cached rows may be stale (messaging.Listener is one):
// Wait returns a channel's generation, which changes with every notification on
// it and whenever the connection is lost or regained; Hears reports whether
// notifications on the channel are being received now.
type ChangeSignal interface {
	Wait(channel string) (uint64, <-chan struct{})
	Hears(channel string) bool
}

type cachedKey struct {
	key     APIKey
	hash    []byte
	gen     uint64
	fetched time.Time
}

const (
	// keyCacheTTL bounds how long a cached key is believed even if every
	// notification were lost without the connection dropping.
	keyCacheTTL = 5 * time.Minute
	// keyCacheSize bounds the memory: past it the cache starts over.
	keyCacheSize = 10_000
)

// CacheWith turns the cache on (see KeyStore); serve passes its LISTEN
// connection, which must listen on APIKeysChannel.
func (s *KeyStore) CacheWith(signal ChangeSignal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.signal = signal
	s.cache = map[string]cachedKey{}
}

// NewKeyStore returns a store over the api_keys table. random must be a CSPRNG
// (nil means crypto/rand).
func NewKeyStore(pool *pgxpool.Pool, random io.Reader) *KeyStore {
	if random == nil {
		random = rand.Reader
	}
	return &KeyStore{pool: pool, random: random}
}

var keyIDEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// Issue creates a key for a tenant and returns its token once.
func (s *KeyStore) Issue(ctx context.Context, tenantID string, role Role, name, createdBy string) (IssuedKey, error) {
	if _, err := ParseRole(string(role)); err != nil {
		return IssuedKey{}, err
	}
	if err := domain.ValidateIdentifier("tenant id", tenantID); err != nil {
		return IssuedKey{}, err
	}
	if err := domain.CheckText("name", name); err != nil {
		return IssuedKey{}, err
	}
	// Characters, as the contract's maxLength counts them.
	if utf8.RuneCountInString(name) > 200 {
		return IssuedKey{}, domain.Invalid(domain.CodeInvalidArgument, "name must be at most 200 characters")
	}
	if err := domain.CheckText("created_by", createdBy); err != nil {
		return IssuedKey{}, err
	}
	var idRaw [10]byte
	var secret [32]byte
	if _, err := io.ReadFull(s.random, idRaw[:]); err != nil {
		return IssuedKey{}, fmt.Errorf("api keys: random: %w", err)
	}
	if _, err := io.ReadFull(s.random, secret[:]); err != nil {
		return IssuedKey{}, fmt.Errorf("api keys: random: %w", err)
	}
	keyID := keyIDEncoding.EncodeToString(idRaw[:])
	token := TokenPrefix + keyID + "_" + base64.RawURLEncoding.EncodeToString(secret[:])
	hash := sha256.Sum256([]byte(token))
	k := IssuedKey{APIKey: APIKey{KeyID: keyID, TenantID: tenantID, Role: role, Name: name, CreatedBy: createdBy}, Token: token}
	// In a request's unit the key exists only if the request's answer is recorded.
	err := eventstore.InTx(ctx, s.pool, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, `INSERT INTO api_keys (key_id, tenant_id, role, name, token_hash, created_by)
		VALUES ($1, $2, $3, $4, $5, $6) RETURNING created_at`,
			keyID, tenantID, string(role), name, hash[:], createdBy).Scan(&k.CreatedAt)
	})
	if err != nil {
		return IssuedKey{}, fmt.Errorf("api keys: insert: %w", err)
	}
	return k, nil
}

// errBadToken is every authentication failure: the caller learns nothing more.
var errBadToken = errors.New("invalid API key")

// Authenticate returns the live key a token belongs to.
func (s *KeyStore) Authenticate(ctx context.Context, token string) (APIKey, error) {
	rest, ok := strings.CutPrefix(token, TokenPrefix)
	if !ok || len(token) > 200 {
		return APIKey{}, errBadToken
	}
	keyID, _, ok := strings.Cut(rest, "_")
	if !ok || !validKeyID(keyID) {
		return APIKey{}, errBadToken
	}
	hash := sha256.Sum256([]byte(token))
	// The generation is taken before the read: a change committed after it
	// makes what this read returns stale at once.
	gen, live := s.generation()
	if k, ok := s.cached(keyID, hash[:], gen, live); ok {
		return k, nil
	}
	var k APIKey
	var role string
	var stored []byte
	err := s.pool.QueryRow(ctx, `SELECT key_id, tenant_id, role, name, created_by, created_at, revoked_at, token_hash
		FROM api_keys WHERE key_id = $1`, keyID).Scan(&k.KeyID, &k.TenantID, &role, &k.Name, &k.CreatedBy, &k.CreatedAt, &k.RevokedAt, &stored)
	if errors.Is(err, pgx.ErrNoRows) {
		return APIKey{}, errBadToken
	}
	if err != nil {
		return APIKey{}, fmt.Errorf("api keys: lookup: %w", err)
	}
	if subtle.ConstantTimeCompare(hash[:], stored) != 1 || k.RevokedAt != nil {
		return APIKey{}, errBadToken
	}
	k.Role = Role(role)
	if live {
		s.remember(keyID, cachedKey{key: k, hash: stored, gen: gen, fetched: time.Now()})
	}
	return k, nil
}

func (s *KeyStore) generation() (gen uint64, live bool) {
	s.mu.RLock()
	signal := s.signal
	s.mu.RUnlock()
	if signal == nil {
		return 0, false
	}
	gen, _ = signal.Wait(APIKeysChannel)
	return gen, signal.Hears(APIKeysChannel)
}

// cached returns the key of a token from the cache when it is still current
// (cached at generation gen, notifications heard); a token that does not match
// is left to the table to refuse.
func (s *KeyStore) cached(keyID string, hash []byte, gen uint64, live bool) (APIKey, bool) {
	if !live {
		return APIKey{}, false
	}
	s.mu.RLock()
	e, ok := s.cache[keyID]
	s.mu.RUnlock()
	if !ok || e.gen != gen || time.Since(e.fetched) > keyCacheTTL || subtle.ConstantTimeCompare(hash, e.hash) != 1 {
		return APIKey{}, false
	}
	return e.key, true
}

func (s *KeyStore) remember(keyID string, e cachedKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cache == nil {
		return
	}
	if len(s.cache) >= keyCacheSize {
		s.cache = map[string]cachedKey{}
	}
	s.cache[keyID] = e
}

func (s *KeyStore) forget(keyID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.cache, keyID)
}

// List returns a tenant's keys, newest first, revoked ones included.
func (s *KeyStore) List(ctx context.Context, tenantID string) ([]APIKey, error) {
	rows, err := s.pool.Query(ctx, `SELECT key_id, tenant_id, role, name, created_by, created_at, revoked_at
		FROM api_keys WHERE tenant_id = $1 ORDER BY created_at DESC, key_id`, tenantID)
	if err != nil {
		return nil, fmt.Errorf("api keys: list: %w", err)
	}
	defer rows.Close()
	out := []APIKey{}
	for rows.Next() {
		var k APIKey
		var role string
		if err := rows.Scan(&k.KeyID, &k.TenantID, &role, &k.Name, &k.CreatedBy, &k.CreatedAt, &k.RevokedAt); err != nil {
			return nil, err
		}
		k.Role = Role(role)
		out = append(out, k)
	}
	return out, rows.Err()
}

// validKeyID: what Issue makes. Anything else is no key, and is not sent to
// the database, which refuses bytes that are not UTF-8 with an error.
func validKeyID(id string) bool {
	if len(id) != 16 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if !(id[i] >= 'a' && id[i] <= 'z') && !(id[i] >= '2' && id[i] <= '7') {
			return false
		}
	}
	return true
}

// Revoke disables a key of a tenant at once. A key of another tenant is not found.
func (s *KeyStore) Revoke(ctx context.Context, tenantID, keyID string) (APIKey, error) {
	if !validKeyID(keyID) {
		return APIKey{}, domain.NotFound("api_key_not_found", "API key not found")
	}
	var k APIKey
	var role string
	err := eventstore.InTx(ctx, s.pool, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, `UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now())
		WHERE tenant_id = $1 AND key_id = $2
		RETURNING key_id, tenant_id, role, name, created_by, created_at, revoked_at`, tenantID, keyID).
			Scan(&k.KeyID, &k.TenantID, &role, &k.Name, &k.CreatedBy, &k.CreatedAt, &k.RevokedAt)
	})
	// Refused by this process from now on, before the notification comes back.
	s.forget(keyID)
	if errors.Is(err, pgx.ErrNoRows) {
		return APIKey{}, domain.NotFound("api_key_not_found", "API key not found")
	}
	if err != nil {
		return APIKey{}, fmt.Errorf("api keys: revoke: %w", err)
	}
	k.Role = Role(role)
	return k, nil
}
