// Package secrets seals personal data and secrets under per-user data keys, wraps
// those data keys under identified master keys (so master keys rotate), and computes
// keyed hashes of backup codes.
//
// Key material never appears in errors or in the String form of a Keyring or a
// CodeHasher; only MasterKey.String prints a key, for the explicit --dev output.
package secrets

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strings"
)

// KeySize is the length in bytes of master keys and data keys (AES-256).
const KeySize = 32

const maxKeyIDLen = 32

// MasterKey is a 32-byte AES-256 key with a short id ([A-Za-z0-9_-]{1,32}). The id is
// stored next to every data key it wraps, so it must stay stable for the key's life.
type MasterKey struct {
	ID  string
	Key []byte
}

// String returns "id:base64(key)". It prints the key: use it only to show a freshly
// generated development key, never to log.
func (m MasterKey) String() string {
	return m.ID + ":" + base64.StdEncoding.EncodeToString(m.Key)
}

// GenerateMasterKey draws a new master key from random (which must be a
// cryptographically secure reader).
func GenerateMasterKey(random io.Reader, id string) (MasterKey, error) {
	if err := validateKeyID(id); err != nil {
		return MasterKey{}, err
	}
	if random == nil {
		return MasterKey{}, errors.New("secrets: no random source")
	}
	key := make([]byte, KeySize)
	if _, err := io.ReadFull(random, key); err != nil {
		return MasterKey{}, fmt.Errorf("secrets: generate master key: %w", err)
	}
	return MasterKey{ID: id, Key: key}, nil
}

func validateKeyID(id string) error {
	if id == "" || len(id) > maxKeyIDLen {
		return fmt.Errorf("secrets: master key id must have 1 to %d characters, got %d", maxKeyIDLen, len(id))
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return fmt.Errorf("secrets: master key id %q: only letters, digits, '_' and '-' are allowed", id)
		}
	}
	return nil
}

// Keyring holds the master keys. The first one (the primary) wraps new data keys;
// every one of them can unwrap. It is immutable and safe for concurrent use.
type Keyring struct {
	primary string
	ids     []string               // in the configured order
	aeads   map[string]cipher.AEAD // by id; GCM holds no mutable state
}

// NewKeyring checks that there is at least one key, that ids are valid and unique
// and that every key is 32 bytes. The key bytes are copied.
func NewKeyring(keys ...MasterKey) (*Keyring, error) {
	if len(keys) == 0 {
		return nil, errors.New("secrets: at least one master key is required")
	}
	ring := &Keyring{primary: keys[0].ID, aeads: make(map[string]cipher.AEAD, len(keys))}
	for i, k := range keys {
		if err := validateKeyID(k.ID); err != nil {
			return nil, fmt.Errorf("master key #%d: %w", i+1, err)
		}
		if _, dup := ring.aeads[k.ID]; dup {
			return nil, fmt.Errorf("secrets: master key id %q appears twice", k.ID)
		}
		if len(k.Key) != KeySize {
			return nil, fmt.Errorf("secrets: master key %q must be %d bytes, got %d", k.ID, KeySize, len(k.Key))
		}
		aead, err := newAEAD(k.Key)
		if err != nil {
			return nil, fmt.Errorf("secrets: master key %q: %w", k.ID, err)
		}
		ring.aeads[k.ID] = aead
		ring.ids = append(ring.ids, k.ID)
	}
	return ring, nil
}

// ParseMasterKeys reads "id1:base64key,id2:base64key" (standard or URL-safe base64,
// padded or not; spaces around entries are trimmed). The first key is the primary.
// Errors name the entry and the id, never the key text.
func ParseMasterKeys(spec string) (*Keyring, error) {
	if strings.TrimSpace(spec) == "" {
		return nil, errors.New("secrets: no master keys given (expected id:base64key[,id:base64key...])")
	}
	var keys []MasterKey
	for i, entry := range strings.Split(spec, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			return nil, fmt.Errorf("secrets: master key entry #%d is empty", i+1)
		}
		id, encoded, ok := strings.Cut(entry, ":")
		if !ok {
			return nil, fmt.Errorf("secrets: master key entry #%d: expected id:base64key", i+1)
		}
		id, encoded = strings.TrimSpace(id), strings.TrimSpace(encoded)
		if err := validateKeyID(id); err != nil {
			return nil, fmt.Errorf("master key entry #%d: %w", i+1, err)
		}
		key, err := decodeBase64(encoded)
		if err != nil {
			return nil, fmt.Errorf("secrets: master key %q: not valid base64", id)
		}
		keys = append(keys, MasterKey{ID: id, Key: key})
	}
	return NewKeyring(keys...)
}

// PrimaryID is the id of the key that wraps new data keys.
func (k *Keyring) PrimaryID() string { return k.primary }

// String lists the key ids only, so a Keyring is safe to print or log (value
// receiver: a dereferenced Keyring is covered too).
func (k Keyring) String() string {
	return fmt.Sprintf("secrets.Keyring{primary: %q, ids: %q}", k.primary, k.ids)
}

// GoString keeps %#v from printing key material.
func (k Keyring) GoString() string { return k.String() }

func (k *Keyring) aead(id string) (cipher.AEAD, bool) {
	a, ok := k.aeads[id]
	return a, ok
}

func newAEAD(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// decodeBase64 accepts standard and URL-safe alphabets, with or without padding.
func decodeBase64(s string) ([]byte, error) {
	var firstErr error
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		b, err := enc.Strict().DecodeString(s)
		if err == nil {
			return b, nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	return nil, firstErr
}
