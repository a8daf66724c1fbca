package handlers

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// KeyDeriver is a keyed PRF under a server secret that never enters the
// database; *secrets.CodeHasher is one.
type KeyDeriver interface {
	Hash(streamID, normalisedCode string) []byte
}

// idempotency stores the first response to a mutating request carrying an
// Idempotency-Key and replays it to every retry, so a retry appends nothing.
type idempotency struct {
	pool    *pgxpool.Pool
	secrets KeyDeriver
	ttl     time.Duration
	now     func() time.Time
}

// staleAfter: a pending record older than this belongs to a request that died;
// a retry may take it over.
const staleAfter = time.Minute

type storedResponse struct {
	Status      int    `json:"status"`
	ContentType string `json:"content_type"`
	Body        []byte `json:"body"`
}

// captureWriter keeps a copy of the body written through it.
type captureWriter struct {
	gin.ResponseWriter
	buf bytes.Buffer
}

func (w *captureWriter) Write(b []byte) (int, error) {
	w.buf.Write(b)
	return w.ResponseWriter.Write(b)
}

func (w *captureWriter) WriteString(s string) (int, error) {
	w.buf.WriteString(s)
	return w.ResponseWriter.WriteString(s)
}

// middleware runs after authentication on mutating routes.
func (a *API) idempotent(c *gin.Context) {
	key := c.GetHeader("Idempotency-Key")
	if key == "" {
		c.Next()
		return
	}
	if !validHeaderToken(key, 255) {
		a.fail(c, newAPIError(http.StatusBadRequest, codeInvalidIdempotency, "Idempotency-Key must be 1-255 printable ASCII characters"))
		return
	}
	body, err := io.ReadAll(c.Request.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			a.fail(c, err)
			return
		}
		a.fail(c, newAPIError(http.StatusBadRequest, codeInvalidJSON, "the body could not be read"))
		return
	}
	c.Request.Body = io.NopCloser(bytes.NewReader(body))

	tenant, scope := "operator", "operator"
	if k := apiKey(c); k.KeyID != "" {
		tenant, scope = k.TenantID, k.KeyID
	}
	secret := a.idem.secrets.Hash("idempotency:"+tenant+":"+scope, key)
	lookup := sha256.Sum256(append([]byte("lookup:"), secret...))
	fp := sha256.New()
	for _, part := range [][]byte{[]byte(c.Request.Method), []byte(c.Request.URL.EscapedPath()), []byte(c.GetHeader("X-Actor")), body} {
		fmt.Fprintf(fp, "%d:", len(part))
		fp.Write(part)
	}
	fingerprint := fp.Sum(nil)

	ctx := c.Request.Context()
	owned, stored, err := a.idem.claim(ctx, lookup[:], tenant, fingerprint)
	if err != nil {
		a.fail(c, err)
		return
	}
	if !owned {
		resp, err := open(secret, stored)
		if err != nil {
			a.fail(c, err)
			return
		}
		c.Header("Idempotent-Replayed", "true")
		c.Header("Content-Type", resp.ContentType)
		c.Status(resp.Status)
		c.Writer.Write(resp.Body) //nolint:errcheck // the client went away
		c.Abort()
		return
	}

	w := &captureWriter{ResponseWriter: c.Writer}
	c.Writer = w
	c.Next()
	c.Writer = w.ResponseWriter

	// The outcome is recorded even if the client has gone: that is the point.
	done := context.WithoutCancel(ctx)
	status := w.Status()
	if status >= 500 {
		// Nothing decided: let a retry run again.
		if err := a.idem.release(done, lookup[:]); err != nil {
			a.log.ErrorContext(done, "idempotency release failed", "request_id", requestID(c), "error", err.Error())
		}
		return
	}
	sealed, err := seal(secret, storedResponse{Status: status, ContentType: w.Header().Get("Content-Type"), Body: w.buf.Bytes()})
	if err == nil {
		err = a.idem.complete(done, lookup[:], status, sealed)
	}
	if err != nil {
		a.log.ErrorContext(done, "idempotency record failed", "request_id", requestID(c), "error", err.Error())
	}
}

// claim inserts a pending record and reports whether this request owns it. If
// another request has it, the stored sealed response is returned, or an error
// for a different request under the same key or one still in progress.
func (s *idempotency) claim(ctx context.Context, lookup []byte, tenant string, fingerprint []byte) (bool, []byte, error) {
	for attempt := 0; attempt < 3; attempt++ {
		tag, err := s.pool.Exec(ctx, `INSERT INTO idempotency_records (key_hash, tenant_id, fingerprint, state)
			VALUES ($1, $2, $3, 'pending') ON CONFLICT (key_hash) DO NOTHING`, lookup, tenant, fingerprint)
		if err != nil {
			return false, nil, fmt.Errorf("idempotency: claim: %w", err)
		}
		if tag.RowsAffected() == 1 {
			return true, nil, nil
		}
		var storedFP, response []byte
		var state string
		var created, updated time.Time
		err = s.pool.QueryRow(ctx, `SELECT fingerprint, state, response, created_at, updated_at
			FROM idempotency_records WHERE key_hash = $1`, lookup).Scan(&storedFP, &state, &response, &created, &updated)
		if errors.Is(err, pgx.ErrNoRows) {
			continue // released meanwhile
		}
		if err != nil {
			return false, nil, fmt.Errorf("idempotency: read: %w", err)
		}
		now := s.now()
		if now.Sub(created) > s.ttl {
			if _, err := s.pool.Exec(ctx, `DELETE FROM idempotency_records WHERE key_hash = $1 AND created_at = $2`, lookup, created); err != nil {
				return false, nil, fmt.Errorf("idempotency: expire: %w", err)
			}
			continue
		}
		if subtle.ConstantTimeCompare(storedFP, fingerprint) != 1 {
			return false, nil, newAPIError(http.StatusUnprocessableEntity, codeIdempotencyReused, "this Idempotency-Key was used for a different request")
		}
		if state == "done" {
			return false, response, nil
		}
		if now.Sub(updated) > staleAfter {
			tag, err := s.pool.Exec(ctx, `UPDATE idempotency_records SET updated_at = now()
				WHERE key_hash = $1 AND state = 'pending' AND updated_at = $2`, lookup, updated)
			if err != nil {
				return false, nil, fmt.Errorf("idempotency: take over: %w", err)
			}
			if tag.RowsAffected() == 1 {
				return true, nil, nil
			}
			continue
		}
		e := newAPIError(http.StatusConflict, codeIdempotencyPending, "a request with this Idempotency-Key is still in progress")
		e.retryAfter = 1
		return false, nil, e
	}
	return false, nil, errors.New("idempotency: record kept changing")
}

func (s *idempotency) complete(ctx context.Context, lookup []byte, status int, sealed []byte) error {
	_, err := s.pool.Exec(ctx, `UPDATE idempotency_records SET state = 'done', status = $2, response = $3, updated_at = now()
		WHERE key_hash = $1`, lookup, status, sealed)
	return err
}

func (s *idempotency) release(ctx context.Context, lookup []byte) error {
	_, err := s.pool.Exec(ctx, `DELETE FROM idempotency_records WHERE key_hash = $1 AND state = 'pending'`, lookup)
	return err
}

func (s *idempotency) purge(ctx context.Context) (int64, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM idempotency_records WHERE created_at < $1`, s.now().Add(-s.ttl))
	if err != nil {
		return 0, err
	}
	return tag.RowsAffected(), nil
}

func gcm(secret []byte) (cipher.AEAD, error) {
	key := sha256.Sum256(append([]byte("seal:"), secret...))
	block, err := aes.NewCipher(key[:])
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

func seal(secret []byte, r storedResponse) ([]byte, error) {
	plain, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	aead, err := gcm(secret)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return aead.Seal(nonce, nonce, plain, []byte("twofactor-idempotency-v1")), nil
}

func open(secret, sealed []byte) (storedResponse, error) {
	aead, err := gcm(secret)
	if err != nil {
		return storedResponse{}, err
	}
	if len(sealed) < aead.NonceSize() {
		return storedResponse{}, errors.New("idempotency: stored response is corrupt")
	}
	plain, err := aead.Open(nil, sealed[:aead.NonceSize()], sealed[aead.NonceSize():], []byte("twofactor-idempotency-v1"))
	if err != nil {
		return storedResponse{}, fmt.Errorf("idempotency: open stored response: %w", err)
	}
	var r storedResponse
	return r, json.Unmarshal(plain, &r)
}
