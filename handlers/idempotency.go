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

	"github.com/twofactor/twofactor/eventstore"
)

// KeyDeriver is a keyed PRF under a server secret that never enters the
// database; *secrets.CodeHasher is one.
type KeyDeriver interface {
	Hash(streamID, normalisedCode string) []byte
}

// idempotency stores the first response to a mutating request carrying an
// Idempotency-Key and replays it to every retry, so a retry appends nothing.
//
// The response is recorded in the same transaction as the command's writes (an
// eventstore.Unit): the record row is claimed right after that transaction's
// BEGIN and completed just before its COMMIT, and the answer reaches the client
// only after the COMMIT. So after a crash at any point a retry either finds
// nothing (nothing was committed: it runs the command once) or finds the
// committed answer and replays it. A concurrent request with the same key
// waits on the uncommitted claim and then replays the committed answer.
type idempotency struct {
	pool    *pgxpool.Pool
	secrets KeyDeriver
	ttl     time.Duration
	now     func() time.Time
	// Test hooks around the commit of a request's unit: a panic with
	// http.ErrAbortHandler there is a crash at the worst moment.
	beforeCommit, afterCommit func()
}

// staleAfter: a pending record older than this belongs to a request of an
// earlier version that committed its claim apart from the command and died; a
// retry may take it over. This version never commits a pending record.
const staleAfter = time.Minute

type storedResponse struct {
	Status      int    `json:"status"`
	ContentType string `json:"content_type"`
	Body        []byte `json:"body"`
}

// bufferedWriter holds the whole response back until the request's
// transaction has committed: an answer must never reach a client for writes
// that may still roll back.
type bufferedWriter struct {
	gin.ResponseWriter
	status int
	buf    bytes.Buffer
}

func (w *bufferedWriter) WriteHeader(code int) {
	if code > 0 && w.status == 0 {
		w.status = code
	}
}
func (w *bufferedWriter) WriteHeaderNow() {}
func (w *bufferedWriter) Write(b []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return w.buf.Write(b)
}
func (w *bufferedWriter) WriteString(s string) (int, error) {
	w.WriteHeader(http.StatusOK)
	return w.buf.WriteString(s)
}
func (w *bufferedWriter) Written() bool { return w.status != 0 }
func (w *bufferedWriter) Size() int     { return w.buf.Len() }
func (w *bufferedWriter) Flush()        {}
func (w *bufferedWriter) Status() int {
	if w.status == 0 {
		return http.StatusOK
	}
	return w.status
}

// middleware runs after authentication on mutating routes.
func (a *API) idempotent(c *gin.Context) {
	// A header sent empty is refused, not taken for none: a client that meant
	// to send a key would otherwise lose its retries' protection silently.
	keys := c.Request.Header.Values("Idempotency-Key")
	key := c.GetHeader("Idempotency-Key")
	if len(keys) == 0 || c.Request.Method == http.MethodGet || c.Request.Method == http.MethodHead {
		c.Next()
		return
	}
	if !validHeaderToken(key, 255) {
		// The contract's pattern and lengths, checked here and not by the
		// validator (checkParams): the key must be known before a replay.
		e := refused(codeInvalidIdempotency, "Idempotency-Key", "header", "must be 1-255 printable ASCII characters")
		e.detail = "Idempotency-Key must be 1-255 printable ASCII characters"
		a.fail(c, e)
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
	rec := idemRecord{lookup: lookup[:], tenant: tenant, fingerprint: fp.Sum(nil)}

	ctx := c.Request.Context()
	if a.answerFromRecord(ctx, c, rec, secret) {
		return
	}

	unit := eventstore.NewUnit(a.pool, func(ctx context.Context, tx pgx.Tx) error { return a.idem.claim(ctx, tx, rec) })
	// Whatever happens below (a panic included), an uncommitted unit rolls back.
	defer unit.Rollback(ctx)
	headers := c.Writer.Header().Clone()
	w := &bufferedWriter{ResponseWriter: c.Writer}
	c.Writer = w
	c.Request = c.Request.WithContext(eventstore.WithUnit(ctx, unit))
	c.Next()
	c.Writer = w.ResponseWriter
	c.Request = c.Request.WithContext(ctx)

	// The outcome is recorded even if the client has gone: that is the point.
	done := context.WithoutCancel(ctx)
	if errors.Is(unit.Err(), errIdempotentDone) {
		// Another request with this key committed while this one decided.
		unit.Rollback(done)
		resetHeaders(c, headers)
		if !a.answerFromRecord(done, c, rec, secret) {
			a.fail(c, errors.New("idempotency: claimed record vanished"))
		}
		return
	}
	status := w.Status()
	if status >= 500 {
		// Nothing decided: whatever the request wrote rolls back and a retry runs again.
		unit.Rollback(done)
		a.flush(c, w)
		return
	}
	sealed, err := seal(secret, storedResponse{Status: status, ContentType: w.Header().Get("Content-Type"), Body: w.buf.Bytes()})
	if err != nil {
		a.fail(c, err)
		return
	}
	if !unit.Begun() {
		// Nothing was written, so nothing commits with the record: a retry that
		// finds none only decides again what changed nothing. But this request
		// may have decided from the state a concurrent one with the same key had
		// just committed ("no enrolment pending" after that one confirmed it):
		// that one's record is then committed too and is the answer.
		recorded, err := a.idem.recordAlone(done, rec, status, sealed)
		if err != nil {
			a.log.WarnContext(done, "idempotency record failed", "request_id", requestID(c), "error", err.Error())
		}
		if err == nil && !recorded {
			resetHeaders(c, headers)
			if a.answerFromRecord(done, c, rec, secret) {
				return
			}
		}
		a.flush(c, w)
		return
	}
	err = a.idem.complete(done, unit, rec, status, sealed)
	if err == nil && a.idem.beforeCommit != nil {
		a.idem.beforeCommit()
	}
	if err == nil {
		err = unit.Commit(done)
	}
	if err != nil {
		// The writes and the record commit together or not at all; if the commit's
		// outcome is unknown, a retry with the key finds out which it was.
		unit.Rollback(done)
		a.log.WarnContext(done, "request not committed", "request_id", requestID(c), "error", err.Error())
		resetHeaders(c, headers)
		a.fail(c, unavailable(err))
		return
	}
	if a.idem.afterCommit != nil {
		a.idem.afterCommit()
	}
	a.flush(c, w)
}

// errIdempotentDone: the claim found a committed record for the key.
var errIdempotentDone = errors.New("idempotency: another request with this key has completed")

type idemRecord struct {
	lookup, fingerprint []byte
	tenant              string
}

// answerFromRecord answers with the response recorded for the key, or with
// the error of looking for it; false when there is none.
func (a *API) answerFromRecord(ctx context.Context, c *gin.Context, rec idemRecord, secret []byte) bool {
	stored, err := a.idem.find(ctx, rec)
	if err != nil {
		a.fail(c, err)
		return true
	}
	if stored == nil {
		return false
	}
	a.replay(c, secret, stored)
	return true
}

func (a *API) replay(c *gin.Context, secret, stored []byte) {
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
}

func (a *API) flush(c *gin.Context, w *bufferedWriter) {
	c.Status(w.Status())
	c.Writer.Write(w.buf.Bytes()) //nolint:errcheck // the client went away
}

// resetHeaders drops the headers of an answer that is not sent.
func resetHeaders(c *gin.Context, saved http.Header) {
	h := c.Writer.Header()
	for k := range h {
		delete(h, k)
	}
	for k, v := range saved {
		h[k] = v
	}
}

// find returns the sealed response recorded for the key, nil when there is
// none (an expired record is deleted), or the error to answer: the key used for
// another request, or a request of an earlier version still in progress.
func (s *idempotency) find(ctx context.Context, rec idemRecord) ([]byte, error) {
	for attempt := 0; attempt < 3; attempt++ {
		var storedFP, response []byte
		var state string
		var created, updated time.Time
		err := s.pool.QueryRow(ctx, `SELECT fingerprint, state, response, created_at, updated_at
			FROM idempotency_records WHERE key_hash = $1`, rec.lookup).Scan(&storedFP, &state, &response, &created, &updated)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("idempotency: read: %w", err)
		}
		now := s.now()
		stale := state == "pending" && now.Sub(updated) > staleAfter
		if now.Sub(created) > s.ttl || stale {
			if _, err := s.pool.Exec(ctx, `DELETE FROM idempotency_records WHERE key_hash = $1 AND updated_at = $2`, rec.lookup, updated); err != nil {
				return nil, fmt.Errorf("idempotency: expire: %w", err)
			}
			continue
		}
		if subtle.ConstantTimeCompare(storedFP, rec.fingerprint) != 1 {
			return nil, newAPIError(http.StatusUnprocessableEntity, codeIdempotencyReused, "this Idempotency-Key was used for a different request")
		}
		if state == "done" {
			return response, nil
		}
		e := newAPIError(http.StatusConflict, codeIdempotencyPending, "a request with this Idempotency-Key is still in progress")
		e.retryAfter = 1
		return nil, e
	}
	return nil, errors.New("idempotency: record kept changing")
}

// claim inserts the key's record, uncommitted, as the first write of the
// request's transaction. A concurrent request with the same key blocks here
// until this one commits (then it finds the record: errIdempotentDone) or rolls
// back (then it claims the key itself).
func (s *idempotency) claim(ctx context.Context, tx pgx.Tx, rec idemRecord) error {
	tag, err := tx.Exec(ctx, `INSERT INTO idempotency_records (key_hash, tenant_id, fingerprint, state)
		VALUES ($1, $2, $3, 'pending') ON CONFLICT (key_hash) DO NOTHING`, rec.lookup, rec.tenant, rec.fingerprint)
	if err != nil {
		return fmt.Errorf("idempotency: claim: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return errIdempotentDone
	}
	return nil
}

// complete records the answer in the request's transaction, completing its claim.
func (s *idempotency) complete(ctx context.Context, unit *eventstore.Unit, rec idemRecord, status int, sealed []byte) error {
	_, err := unit.Tx().Exec(ctx, `UPDATE idempotency_records SET state = 'done', status = $2, response = $3, updated_at = now()
		WHERE key_hash = $1`, rec.lookup, status, sealed)
	return err
}

// recordAlone records the answer of a request that wrote nothing and reports
// whether it did; a record already there (a concurrent request with the same
// key) is kept.
func (s *idempotency) recordAlone(ctx context.Context, rec idemRecord, status int, sealed []byte) (bool, error) {
	tag, err := s.pool.Exec(ctx, `INSERT INTO idempotency_records (key_hash, tenant_id, fingerprint, state, status, response)
		VALUES ($1, $2, $3, 'done', $4, $5) ON CONFLICT (key_hash) DO NOTHING`, rec.lookup, rec.tenant, rec.fingerprint, status, sealed)
	return err == nil && tag.RowsAffected() == 1, err
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
