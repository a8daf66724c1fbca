package secrets

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"testing"
)

func randomKey(t testing.TB) []byte {
	t.Helper()
	k := make([]byte, KeySize)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

func TestParseMasterKeysGood(t *testing.T) {
	k1, k2 := randomKey(t), randomKey(t)
	cases := map[string]string{
		"std":             "k1:" + base64.StdEncoding.EncodeToString(k1),
		"raw url":         "k1:" + base64.RawURLEncoding.EncodeToString(k1),
		"two keys":        "k1:" + base64.StdEncoding.EncodeToString(k1) + ",k-2_B:" + base64.RawURLEncoding.EncodeToString(k2),
		"spaces":          "  k1 : " + base64.StdEncoding.EncodeToString(k1) + " ,\tk-2_B:" + base64.StdEncoding.EncodeToString(k2) + " ",
		"max id length":   strings.Repeat("k", 32) + ":" + base64.StdEncoding.EncodeToString(k1),
		"key string form": MasterKey{ID: "k1", Key: k1}.String(),
	}
	for name, spec := range cases {
		ring, err := ParseMasterKeys(spec)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		wantPrimary := "k1"
		if name == "max id length" {
			wantPrimary = strings.Repeat("k", 32)
		}
		if ring.PrimaryID() != wantPrimary {
			t.Errorf("%s: primary %q, want %q", name, ring.PrimaryID(), wantPrimary)
		}
		// The decoded key is the one given: a value wrapped under k1 opens.
		ref, err := NewKeyring(MasterKey{ID: wantPrimary, Key: k1})
		if err != nil {
			t.Fatal(err)
		}
		if !sameKey(t, ring, ref, wantPrimary) {
			t.Errorf("%s: decoded key differs", name)
		}
		if strings.Contains(name, "two") || name == "spaces" {
			ref2, _ := NewKeyring(MasterKey{ID: "k-2_B", Key: k2})
			if !sameKey(t, ring, ref2, "k-2_B") {
				t.Errorf("%s: second key differs", name)
			}
		}
	}
}

// sameKey reports whether id holds the same key in both rings.
func sameKey(t *testing.T, a, b *Keyring, id string) bool {
	t.Helper()
	ea, ok1 := a.aead(id)
	eb, ok2 := b.aead(id)
	if !ok1 || !ok2 {
		return false
	}
	nonce := make([]byte, nonceSize)
	ct := ea.Seal(nil, nonce, []byte("probe"), nil)
	_, err := eb.Open(nil, nonce, ct, nil)
	return err == nil
}

func TestParseMasterKeysBad(t *testing.T) {
	good := base64.StdEncoding.EncodeToString(randomKey(t))
	cases := map[string]string{
		"empty":              "",
		"blank":              "  ",
		"short key":          "k1:" + base64.StdEncoding.EncodeToString(make([]byte, 31)),
		"long key":           "k1:" + base64.StdEncoding.EncodeToString(make([]byte, 33)),
		"16-byte key":        "k1:" + base64.StdEncoding.EncodeToString(make([]byte, 16)),
		"duplicate id":       "k1:" + good + ",k1:" + base64.StdEncoding.EncodeToString(randomKey(t)),
		"bad base64":         "k1:" + strings.Repeat("!", 44),
		"truncated base64":   "k1:" + good[:len(good)-5],
		"no colon":           "k1" + good,
		"empty id":           ":" + good,
		"id with dot":        "k.1:" + good,
		"id with space":      "k 1:" + good,
		"id too long":        strings.Repeat("k", 33) + ":" + good,
		"empty key":          "k1:",
		"empty entry":        "k1:" + good + ",,k2:" + good,
		"trailing comma":     "k1:" + good + ",",
		"non-ascii id":       "ké:" + good,
		"base64 inner space": "k1:" + good[:10] + " " + good[10:],
	}
	for name, spec := range cases {
		_, err := ParseMasterKeys(spec)
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if strings.Contains(err.Error(), good[:16]) {
			t.Errorf("%s: error repeats key material: %v", name, err)
		}
	}
}

func TestNewKeyring(t *testing.T) {
	if _, err := NewKeyring(); err == nil {
		t.Error("empty keyring accepted")
	}
	if _, err := NewKeyring(MasterKey{ID: "a", Key: randomKey(t)}, MasterKey{ID: "a", Key: randomKey(t)}); err == nil {
		t.Error("duplicate ids accepted")
	}
	if _, err := NewKeyring(MasterKey{ID: "a", Key: make([]byte, 24)}); err == nil {
		t.Error("24-byte key accepted")
	}
	if _, err := NewKeyring(MasterKey{ID: "", Key: randomKey(t)}); err == nil {
		t.Error("empty id accepted")
	}
	key := randomKey(t)
	orig := append([]byte(nil), key...)
	ring, err := NewKeyring(MasterKey{ID: "b", Key: key}, MasterKey{ID: "a", Key: randomKey(t)})
	if err != nil {
		t.Fatal(err)
	}
	if ring.PrimaryID() != "b" {
		t.Errorf("primary %q, want the first key", ring.PrimaryID())
	}
	clear(key) // the ring must have copied (expanded) the key, not aliased it
	ref, _ := NewKeyring(MasterKey{ID: "b", Key: orig})
	if !sameKey(t, ring, ref, "b") {
		t.Error("keyring aliases the caller's key slice")
	}
}

func TestGenerateMasterKey(t *testing.T) {
	k, err := GenerateMasterKey(rand.Reader, "dev")
	if err != nil {
		t.Fatal(err)
	}
	if k.ID != "dev" || len(k.Key) != KeySize {
		t.Fatalf("got id %q with %d bytes", k.ID, len(k.Key))
	}
	k2, err := GenerateMasterKey(rand.Reader, "dev")
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(k.Key, k2.Key) {
		t.Fatal("two generated keys are equal")
	}
	// Deterministic input shows the reader is the source; String round-trips.
	fixed, err := GenerateMasterKey(bytes.NewReader(bytes.Repeat([]byte{7}, 32)), "fixed")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(fixed.Key, bytes.Repeat([]byte{7}, 32)) {
		t.Fatal("key not read from the given reader")
	}
	if want := "fixed:" + base64.StdEncoding.EncodeToString(fixed.Key); fixed.String() != want {
		t.Fatalf("String() = %q, want %q", fixed.String(), want)
	}
	ring, err := ParseMasterKeys(fixed.String())
	if err != nil || ring.PrimaryID() != "fixed" {
		t.Fatalf("String form does not parse back: %v", err)
	}

	if _, err := GenerateMasterKey(bytes.NewReader(make([]byte, 10)), "short"); err == nil {
		t.Error("short random read accepted")
	}
	if _, err := GenerateMasterKey(failingReader{}, "x"); !errors.Is(err, errNoEntropy) {
		t.Errorf("reader error not returned: %v", err)
	}
	if _, err := GenerateMasterKey(rand.Reader, "bad id"); err == nil {
		t.Error("invalid id accepted")
	}
}

func TestKeyringDoesNotPrintKeys(t *testing.T) {
	key := bytes.Repeat([]byte{'K'}, KeySize)
	ring, err := NewKeyring(MasterKey{ID: "p", Key: key}, MasterKey{ID: "o", Key: randomKey(t)})
	if err != nil {
		t.Fatal(err)
	}
	for _, out := range []string{fmt.Sprint(ring), fmt.Sprintf("%+v", ring), fmt.Sprintf("%#v", ring), fmt.Sprintf("%+v", *ring)} {
		if !strings.Contains(out, `"p"`) || !strings.Contains(out, `"o"`) {
			t.Errorf("ids missing from %s", out)
		}
		if strings.Contains(out, "KKKK") || strings.Contains(out, base64.StdEncoding.EncodeToString(key)) {
			t.Errorf("key material printed: %s", out)
		}
	}
}

var errNoEntropy = errors.New("no entropy")

type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, errNoEntropy }
