// Package softkey is a software security key for tests: it answers the
// WebAuthn options the service issues with real attestation and assertion
// objects (CBOR, COSE keys, signatures over authenticator data and the client
// data hash), as a browser and an authenticator would together, so the
// service's verification runs unchanged.
package softkey

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/go-webauthn/webauthn/protocol/webauthncbor"
	"github.com/go-webauthn/webauthn/protocol/webauthncose"
)

// Algorithm is a COSE signature algorithm the key signs with.
type Algorithm int64

const (
	ES256 = Algorithm(webauthncose.AlgES256) // ECDSA P-256 with SHA-256
	EdDSA = Algorithm(webauthncose.AlgEdDSA) // Ed25519
)

// Attestation formats the key produces: "none", or "packed" self-attestation
// (signed with the credential's own key, no certificate).
const (
	FormatNone   = "none"
	FormatPacked = "packed"
)

// Key is one credential on a software authenticator.
type Key struct {
	alg    Algorithm
	signer crypto.Signer
	// ID is the credential id.
	ID []byte
	// Counter is the signature counter; each assertion increments it first.
	// Set it back to play a clone.
	Counter uint32
	// UserVerified sets the UV flag (a PIN or biometric was checked).
	UserVerified bool
	// Format is the attestation format of Create.
	Format string
}

// New makes a key with a random credential id.
func New(alg Algorithm, format string) (*Key, error) {
	k := &Key{alg: alg, ID: make([]byte, 32), UserVerified: true, Format: format}
	if _, err := rand.Read(k.ID); err != nil {
		return nil, err
	}
	var err error
	switch alg {
	case ES256:
		k.signer, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case EdDSA:
		_, k.signer, err = ed25519.GenerateKey(rand.Reader)
	default:
		err = fmt.Errorf("softkey: unsupported algorithm %d", alg)
	}
	return k, err
}

// options is what the key reads of creation or request options.
type options struct {
	PublicKey struct {
		Challenge string `json:"challenge"`
		RPID      string `json:"rpId"`
		RP        struct {
			ID string `json:"id"`
		} `json:"rp"`
		User struct {
			ID string `json:"id"`
		} `json:"user"`
	} `json:"publicKey"`
}

func parseOptions(raw []byte) (options, error) {
	var o options
	if err := json.Unmarshal(raw, &o); err != nil {
		return o, fmt.Errorf("softkey: options: %w", err)
	}
	if o.PublicKey.Challenge == "" {
		return o, errors.New("softkey: options without a challenge")
	}
	return o, nil
}

var b64 = base64.RawURLEncoding

func clientData(kind, challenge, origin string) []byte {
	b, _ := json.Marshal(map[string]any{"type": kind, "challenge": challenge, "origin": origin, "crossOrigin": false})
	return b
}

// flags: UP always, UV when set, AT for an attestation.
func (k *Key) flags(attested bool) byte {
	f := byte(0x01)
	if k.UserVerified {
		f |= 0x04
	}
	if attested {
		f |= 0x40
	}
	return f
}

func (k *Key) authData(rpID string, attested bool) ([]byte, error) {
	rpHash := sha256.Sum256([]byte(rpID))
	out := append([]byte{}, rpHash[:]...)
	out = append(out, k.flags(attested))
	out = binary.BigEndian.AppendUint32(out, k.Counter)
	if !attested {
		return out, nil
	}
	cose, err := k.coseKey()
	if err != nil {
		return nil, err
	}
	out = append(out, make([]byte, 16)...) // AAGUID: none
	out = binary.BigEndian.AppendUint16(out, uint16(len(k.ID)))
	out = append(out, k.ID...)
	return append(out, cose...), nil
}

// PublicKey is the credential's public key as the service stores it (COSE).
func (k *Key) PublicKey() ([]byte, error) { return k.coseKey() }

func (k *Key) coseKey() ([]byte, error) {
	switch pub := k.signer.Public().(type) {
	case *ecdsa.PublicKey:
		raw, err := pub.Bytes() // 0x04 || X || Y
		if err != nil {
			return nil, err
		}
		return webauthncbor.Marshal(webauthncose.EC2PublicKeyData{
			PublicKeyData: webauthncose.PublicKeyData{KeyType: int64(webauthncose.EllipticKey), Algorithm: int64(k.alg)},
			Curve:         1, XCoord: raw[1:33], YCoord: raw[33:],
		})
	case ed25519.PublicKey:
		return webauthncbor.Marshal(webauthncose.OKPPublicKeyData{
			PublicKeyData: webauthncose.PublicKeyData{KeyType: int64(webauthncose.OctetKey), Algorithm: int64(k.alg)},
			Curve:         6, XCoord: []byte(pub),
		})
	}
	return nil, errors.New("softkey: unknown key type")
}

// sign signs authData || SHA-256(clientDataJSON) as WebAuthn defines.
func (k *Key) sign(authData, clientDataJSON []byte) ([]byte, error) {
	h := sha256.Sum256(clientDataJSON)
	msg := append(append([]byte{}, authData...), h[:]...)
	if k.alg == EdDSA {
		return k.signer.Sign(rand.Reader, msg, crypto.Hash(0))
	}
	d := sha256.Sum256(msg)
	return k.signer.Sign(rand.Reader, d[:], crypto.SHA256)
}

// Create answers creation options (the {"publicKey": …} JSON) as the browser
// at origin would: the PublicKeyCredential JSON with its attestation.
func (k *Key) Create(rawOptions []byte, origin string) ([]byte, error) {
	o, err := parseOptions(rawOptions)
	if err != nil {
		return nil, err
	}
	cd := clientData("webauthn.create", o.PublicKey.Challenge, origin)
	ad, err := k.authData(o.PublicKey.RP.ID, true)
	if err != nil {
		return nil, err
	}
	stmt := map[string]any{}
	if k.Format == FormatPacked {
		sig, err := k.sign(ad, cd)
		if err != nil {
			return nil, err
		}
		stmt = map[string]any{"alg": int64(k.alg), "sig": sig}
	}
	att, err := webauthncbor.Marshal(map[string]any{"fmt": k.Format, "attStmt": stmt, "authData": ad})
	if err != nil {
		return nil, err
	}
	return json.Marshal(map[string]any{
		"id": b64.EncodeToString(k.ID), "rawId": b64.EncodeToString(k.ID), "type": "public-key",
		"authenticatorAttachment": "cross-platform",
		"response": map[string]any{
			"clientDataJSON": b64.EncodeToString(cd), "attestationObject": b64.EncodeToString(att),
			"transports": []string{"usb"},
		},
		"clientExtensionResults": map[string]any{},
	})
}

// Get answers request options as the browser at origin would: the counter
// goes up by one and the assertion is signed.
func (k *Key) Get(rawOptions []byte, origin string) ([]byte, error) {
	o, err := parseOptions(rawOptions)
	if err != nil {
		return nil, err
	}
	k.Counter++
	return k.Assert(o.PublicKey.Challenge, o.PublicKey.RPID, origin)
}

// Assert signs an assertion for a given challenge, rp id and origin without
// touching the counter: for replays and hostile answers.
func (k *Key) Assert(challenge, rpID, origin string) ([]byte, error) {
	cd := clientData("webauthn.get", challenge, origin)
	ad, err := k.authData(rpID, false)
	if err != nil {
		return nil, err
	}
	sig, err := k.sign(ad, cd)
	if err != nil {
		return nil, err
	}
	return json.Marshal(map[string]any{
		"id": b64.EncodeToString(k.ID), "rawId": b64.EncodeToString(k.ID), "type": "public-key",
		"authenticatorAttachment": "cross-platform",
		"response": map[string]any{
			"clientDataJSON": b64.EncodeToString(cd), "authenticatorData": b64.EncodeToString(ad),
			"signature": b64.EncodeToString(sig),
		},
		"clientExtensionResults": map[string]any{},
	})
}
