package secrets

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// MinCodeKeySize is the shortest accepted backup-code key.
const MinCodeKeySize = 32

// codeHashLabel separates these MACs from any other use of the same key.
// WARNING: durable; changing it invalidates every stored backup-code hash.
const codeHashLabel = "twofactor/backup-code/v1"

// CodeHasher computes keyed hashes of backup codes: HMAC-SHA256 over the user's
// stream id and the normalised code, under a server key that never enters the
// database, so a stolen database alone does not allow an offline brute force of the
// roughly 50-bit codes. Compare results with hmac.Equal. Safe for concurrent use.
type CodeHasher struct {
	key []byte
}

// NewCodeHasher copies key, which must be at least 32 bytes.
func NewCodeHasher(key []byte) (*CodeHasher, error) {
	if len(key) < MinCodeKeySize {
		return nil, fmt.Errorf("secrets: backup-code key must be at least %d bytes, got %d", MinCodeKeySize, len(key))
	}
	return &CodeHasher{key: append([]byte(nil), key...)}, nil
}

// ParseCodeKey decodes a base64 key (standard or URL-safe, padded or not) of at least
// 32 bytes.
func ParseCodeKey(spec string) (*CodeHasher, error) {
	spec = strings.TrimSpace(spec)
	if spec == "" {
		return nil, errors.New("secrets: no backup-code key given")
	}
	key, err := decodeBase64(spec)
	if err != nil {
		return nil, errors.New("secrets: backup-code key is not valid base64")
	}
	return NewCodeHasher(key)
}

// Hash returns HMAC-SHA256(key, label || len(streamID) || streamID || len(code) || code),
// lengths as 4-byte big-endian integers, so ("ab","c") and ("a","bc") differ.
func (h *CodeHasher) Hash(streamID, normalisedCode string) []byte {
	mac := hmac.New(sha256.New, h.key)
	mac.Write(lengthPrefixed(codeHashLabel, streamID, normalisedCode))
	return mac.Sum(nil)
}

// String keeps the key out of logs.
func (h CodeHasher) String() string { return "secrets.CodeHasher{key: redacted}" }

// GoString keeps %#v from printing the key.
func (h CodeHasher) GoString() string { return h.String() }

// lengthPrefixed encodes each field as a 4-byte big-endian length and its bytes, so
// no field boundary can be shifted.
func lengthPrefixed(fields ...string) []byte {
	n := 0
	for _, f := range fields {
		n += 4 + len(f)
	}
	out := make([]byte, 0, n)
	for _, f := range fields {
		out = binary.BigEndian.AppendUint32(out, uint32(len(f)))
		out = append(out, f...)
	}
	return out
}
