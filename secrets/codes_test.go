package secrets

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
)

func testCodeKey(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }

func mustHasher(t *testing.T, key []byte) *CodeHasher {
	t.Helper()
	h, err := NewCodeHasher(key)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestCodeHasherDeterministic(t *testing.T) {
	h := mustHasher(t, testCodeKey(0x42))
	a := h.Hash("user-stream-1", "abcdefghjk")
	b := h.Hash("user-stream-1", "abcdefghjk")
	if !hmac.Equal(a, b) {
		t.Fatal("same inputs gave different hashes")
	}
	if len(a) != 32 {
		t.Fatalf("hash length %d, want 32", len(a))
	}
	// Pinned vector: stored hashes depend on this exact construction; a change
	// here locks every user out of their backup codes.
	const want = "8707d4a3ccb7c5e6b458431cbaced9d32f9de0bae54f232e9872c272f9f4140a"
	if got := hex.EncodeToString(a); got != want {
		t.Fatalf("hash format changed: got %s, want %s", got, want)
	}
	// A second hasher over the same key agrees (no hidden per-instance state).
	if !hmac.Equal(a, mustHasher(t, testCodeKey(0x42)).Hash("user-stream-1", "abcdefghjk")) {
		t.Fatal("two hashers with one key disagree")
	}
}

func TestCodeHasherSeparatesInputs(t *testing.T) {
	h := mustHasher(t, testCodeKey(0x42))
	base := h.Hash("stream-1", "abcdefghjk")
	cases := map[string][]byte{
		"other stream":   h.Hash("stream-2", "abcdefghjk"),
		"other code":     h.Hash("stream-1", "abcdefghjm"),
		"other key":      mustHasher(t, testCodeKey(0x43)).Hash("stream-1", "abcdefghjk"),
		"longer key":     mustHasher(t, append(testCodeKey(0x42), 0x42)).Hash("stream-1", "abcdefghjk"),
		"fields shifted": h.Hash("stream-1a", "bcdefghjk"),
	}
	for name, got := range cases {
		if hmac.Equal(base, got) {
			t.Errorf("%s: hash did not change", name)
		}
	}
	if hmac.Equal(h.Hash("ab", "c"), h.Hash("a", "bc")) {
		t.Error(`("ab","c") and ("a","bc") collide`)
	}
	if hmac.Equal(h.Hash("", "abc"), h.Hash("abc", "")) {
		t.Error(`("","abc") and ("abc","") collide`)
	}
}

func TestCodeHasherCopiesKey(t *testing.T) {
	key := testCodeKey(0x42)
	h := mustHasher(t, key)
	before := h.Hash("s", "c")
	key[0] ^= 0xff
	if !hmac.Equal(before, h.Hash("s", "c")) {
		t.Fatal("hasher aliases the caller's key slice")
	}
}

func TestNewCodeHasherRejectsShortKey(t *testing.T) {
	for _, n := range []int{0, 16, 31} {
		if _, err := NewCodeHasher(make([]byte, n)); err == nil {
			t.Errorf("key of %d bytes accepted", n)
		}
	}
	if _, err := NewCodeHasher(make([]byte, 64)); err != nil {
		t.Errorf("64-byte key rejected: %v", err)
	}
}

func TestParseCodeKey(t *testing.T) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	want := mustHasher(t, key).Hash("s", "c")
	for name, spec := range map[string]string{
		"std":           base64.StdEncoding.EncodeToString(key),
		"raw url":       base64.RawURLEncoding.EncodeToString(key),
		"raw std":       base64.RawStdEncoding.EncodeToString(key),
		"url":           base64.URLEncoding.EncodeToString(key),
		"spaces around": "  " + base64.StdEncoding.EncodeToString(key) + "\n",
	} {
		h, err := ParseCodeKey(spec)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if !hmac.Equal(want, h.Hash("s", "c")) {
			t.Errorf("%s: decoded a different key", name)
		}
	}

	// The --dev path in cmd/twofactord derives the code key from MasterKey.String.
	mk, err := GenerateMasterKey(rand.Reader, "code")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseCodeKey(mk.String()[len("code:"):]); err != nil {
		t.Errorf("dev code key rejected: %v", err)
	}

	short := base64.StdEncoding.EncodeToString(make([]byte, 31))
	for name, spec := range map[string]string{
		"empty":      "",
		"blank":      "   ",
		"short":      short,
		"not base64": "this is not base64 at all!!",
		"bad char":   strings.Repeat("A", 42) + "*=",
	} {
		_, err := ParseCodeKey(spec)
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if spec != "" && strings.TrimSpace(spec) != "" && strings.Contains(err.Error(), spec) {
			t.Errorf("%s: error repeats the key text: %v", name, err)
		}
	}
}

func TestCodeHasherDoesNotPrintKey(t *testing.T) {
	key := testCodeKey('K') // printable, so a leak would show as text
	h := mustHasher(t, key)
	for _, out := range []string{fmt.Sprint(h), fmt.Sprintf("%+v", h), fmt.Sprintf("%#v", h), fmt.Sprintf("%v", *h)} {
		if strings.Contains(out, "KKKK") || strings.Contains(out, base64.StdEncoding.EncodeToString(key)) || strings.Contains(out, "75 75") {
			t.Errorf("key material printed: %s", out)
		}
	}
}

func TestLengthPrefixed(t *testing.T) {
	if bytes.Equal(lengthPrefixed("ab", "c"), lengthPrefixed("a", "bc")) {
		t.Fatal("field boundary can shift")
	}
	got := lengthPrefixed("ab", "")
	want := []byte{0, 0, 0, 2, 'a', 'b', 0, 0, 0, 0}
	if !bytes.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}
