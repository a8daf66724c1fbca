package secrets

import (
	"context"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// A process started with another key than the one the database was used with
// would answer 500 to existing users and, worse, wrap new users' data keys under
// a key that is lost once the right one is back. VerifyKeys catches that before
// anything is written; RecordKeys then remembers the keys (migration 0009).
//
// What is stored never helps an attacker who has the database: a master key's
// check value is a GCM tag like the ones every wrapped data key already carries,
// and the code key's fingerprint is an HMAC under a key of at least 32 random
// bytes, which offers nothing to guess against.

const (
	// WARNING: durable labels; changing one makes every recorded check value
	// mismatch, and every process refuse to start.
	masterCheckLabel     = "twofactor/master-key-check/v1"
	codeFingerprintLabel = "twofactor/code-key-fingerprint/v1"

	// keyCheckLock serialises RecordKeys across processes (migrations use 7_204_811_305).
	keyCheckLock = 7_204_811_306
	// unwrapSamples is how many stored data keys a master key without a check
	// value may try to unwrap: one success proves the key, and a few spare
	// rows keep one damaged row from blocking the start.
	unwrapSamples = 5
)

// Queryer reads the database: a pool or a transaction.
type Queryer interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// CodeKeyWitness tells whether data stored in the database was keyed with codes
// (found is false when there is none). It checks a backup-code key that has no
// fingerprint yet, in a database from before fingerprints: backup codes
// themselves cannot serve, since only their MACs are stored.
type CodeKeyWitness func(ctx context.Context, q Queryer, codes *CodeHasher) (found, matches bool, err error)

// KeyCheckError lists every way the configured keys disagree with the
// database, so that an operator fixes the configuration in one go.
type KeyCheckError struct {
	// Mismatched are configured master key ids whose key is not the one the
	// database knows under that id.
	Mismatched []string
	// Missing are ids of master keys that wrap stored data keys but are not configured.
	Missing []string
	// CodeKey: the backup-code key is not the one the database was used with.
	CodeKey bool
}

func (e *KeyCheckError) Error() string {
	var parts []string
	if len(e.Mismatched) > 0 {
		parts = append(parts, fmt.Sprintf("master keys %q are not the keys this database knows under those ids", e.Mismatched))
	}
	if len(e.Missing) > 0 {
		parts = append(parts, fmt.Sprintf("stored data keys are wrapped by master keys %q, which are not configured", e.Missing))
	}
	if e.CodeKey {
		parts = append(parts, "the backup-code key is not the one this database was used with")
	}
	return "secrets: " + strings.Join(parts, "; ")
}

// VerifyKeys compares ring and codes with what the database remembers and
// changes nothing; it returns a *KeyCheckError when they disagree. A configured
// master key must open its id's check value or, without one, unwrap a data key
// stored under its id; every id that stored data keys need must be configured;
// codes must match the recorded fingerprint or, without one, witness. Tables
// that do not exist yet (a database not migrated to 0009) hold nothing to check.
func VerifyKeys(ctx context.Context, pool *pgxpool.Pool, ring *Keyring, codes *CodeHasher, witness CodeKeyWitness) error {
	_, err := verifyKeys(ctx, pool, ring, codes, witness)
	return err
}

// RecordKeys verifies again and records the check values of the keys that have
// none, all in one transaction: nothing is recorded unless everything agrees. It
// returns the master key ids it recorded. random provides nonces (nil: crypto/rand).
func RecordKeys(ctx context.Context, pool *pgxpool.Pool, ring *Keyring, codes *CodeHasher, witness CodeKeyWitness, random io.Reader) ([]string, error) {
	if random == nil {
		random = rand.Reader
	}
	var recorded []string
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		recorded = nil
		// Two processes starting together with different keys under one id:
		// the second one waits here, then meets the first one's check value.
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, keyCheckLock); err != nil {
			return err
		}
		plan, err := verifyKeys(ctx, tx, ring, codes, witness)
		if err != nil {
			return err
		}
		for _, id := range plan.newIDs {
			value, err := sealCheck(ring.aeads[id], random, id)
			if err != nil {
				return err
			}
			tag, err := tx.Exec(ctx, `INSERT INTO master_key_checks (key_id, check_value) VALUES ($1, $2)
				ON CONFLICT (key_id) DO NOTHING`, id, value)
			if err != nil {
				return err
			}
			if tag.RowsAffected() == 1 {
				recorded = append(recorded, id)
			}
		}
		if plan.newCode {
			if _, err := tx.Exec(ctx, `INSERT INTO code_key_checks (fingerprint) VALUES ($1) ON CONFLICT DO NOTHING`,
				codes.fingerprint()); err != nil {
				return err
			}
		}
		// Whatever is recorded now, by us or by a process that got there first
		// without the lock (an older binary cannot, but a hand-made row can),
		// must agree with our keys.
		_, err = verifyKeys(ctx, tx, ring, codes, witness)
		return err
	})
	var kerr *KeyCheckError
	if err != nil && !errors.As(err, &kerr) {
		err = fmt.Errorf("secrets: record key checks: %w", err)
	}
	return recorded, err
}

// keyPlan is what a successful verification would record.
type keyPlan struct {
	newIDs  []string // configured ids without a check value
	newCode bool     // no fingerprint of the backup-code key yet
}

func verifyKeys(ctx context.Context, q Queryer, ring *Keyring, codes *CodeHasher, witness CodeKeyWitness) (keyPlan, error) {
	if ring == nil || codes == nil {
		return keyPlan{}, errors.New("secrets: verify keys: a keyring and a backup-code key are required")
	}
	var hasDataKeys, hasChecks bool
	if err := q.QueryRow(ctx, `SELECT to_regclass('user_data_keys') IS NOT NULL, to_regclass('master_key_checks') IS NOT NULL`).
		Scan(&hasDataKeys, &hasChecks); err != nil {
		return keyPlan{}, fmt.Errorf("secrets: verify keys: %w", err)
	}
	checks := map[string][]byte{}
	var fingerprint []byte
	if hasChecks {
		rows, err := q.Query(ctx, `SELECT key_id, check_value FROM master_key_checks`)
		if err != nil {
			return keyPlan{}, fmt.Errorf("secrets: verify keys: %w", err)
		}
		var id string
		var value []byte
		if _, err := pgx.ForEachRow(rows, []any{&id, &value}, func() error {
			checks[id] = value
			return nil
		}); err != nil {
			return keyPlan{}, fmt.Errorf("secrets: verify keys: %w", err)
		}
		err = q.QueryRow(ctx, `SELECT fingerprint FROM code_key_checks`).Scan(&fingerprint)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return keyPlan{}, fmt.Errorf("secrets: verify keys: %w", err)
		}
	}
	needed := map[string]bool{}
	if hasDataKeys {
		ids, err := masterKeysInUse(ctx, q)
		if err != nil {
			return keyPlan{}, err
		}
		for _, id := range ids {
			needed[id] = true
		}
	}

	var plan keyPlan
	var problem KeyCheckError
	for _, id := range ring.ids {
		aead := ring.aeads[id]
		if value, ok := checks[id]; ok {
			if !opensCheck(aead, id, value) {
				problem.Mismatched = append(problem.Mismatched, id)
			}
			continue
		}
		if needed[id] {
			ok, err := unwrapsStored(ctx, q, aead, id)
			if err != nil {
				return keyPlan{}, err
			}
			if !ok {
				problem.Mismatched = append(problem.Mismatched, id)
				continue
			}
		}
		plan.newIDs = append(plan.newIDs, id)
	}
	for id := range needed {
		if _, ok := ring.aeads[id]; !ok {
			problem.Missing = append(problem.Missing, id)
		}
	}
	sort.Strings(problem.Missing)

	switch {
	case fingerprint != nil:
		problem.CodeKey = !hmac.Equal(fingerprint, codes.fingerprint())
	case witness != nil:
		found, matches, err := witness(ctx, q, codes)
		if err != nil {
			return keyPlan{}, fmt.Errorf("secrets: verify the backup-code key: %w", err)
		}
		problem.CodeKey = found && !matches
		plan.newCode = !problem.CodeKey
	default:
		plan.newCode = true
	}
	if len(problem.Mismatched) > 0 || len(problem.Missing) > 0 || problem.CodeKey {
		return keyPlan{}, &problem
	}
	return plan, nil
}

// masterKeysInUse lists the master key ids of stored data keys, skipping along
// the index on master_key_id (a handful of ids among millions of rows).
func masterKeysInUse(ctx context.Context, q Queryer) ([]string, error) {
	rows, err := q.Query(ctx, `
		WITH RECURSIVE ids (id) AS (
			(SELECT master_key_id FROM user_data_keys ORDER BY master_key_id LIMIT 1)
			UNION ALL
			SELECT (SELECT master_key_id FROM user_data_keys WHERE master_key_id > ids.id ORDER BY master_key_id LIMIT 1)
			FROM ids WHERE ids.id IS NOT NULL
		)
		SELECT id FROM ids WHERE id IS NOT NULL`)
	if err != nil {
		return nil, fmt.Errorf("secrets: verify keys: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("secrets: verify keys: %w", err)
	}
	return ids, nil
}

// unwrapsStored tells whether aead unwraps one of the earliest data keys stored
// under id. The earliest ones, because a database that went through the very
// mistake this guards against holds later rows wrapped under the wrong key.
func unwrapsStored(ctx context.Context, q Queryer, aead cipher.AEAD, id string) (bool, error) {
	rows, err := q.Query(ctx, `
		SELECT tenant_id, user_id, wrapped_key FROM user_data_keys WHERE master_key_id = $1
		ORDER BY coalesce(rewrapped_at, created_at) LIMIT $2`, id, unwrapSamples)
	if err != nil {
		return false, fmt.Errorf("secrets: verify keys: %w", err)
	}
	opened := false
	var tenantID, userID string
	var wrapped []byte
	if _, err := pgx.ForEachRow(rows, []any{&tenantID, &userID, &wrapped}, func() error {
		if opened || len(wrapped) != wrappedSize {
			return nil
		}
		key, err := aead.Open(nil, wrapped[:nonceSize], wrapped[nonceSize:], wrapAAD(tenantID, userID, id))
		if err == nil {
			clear(key)
			opened = true
		}
		return nil
	}); err != nil {
		return false, fmt.Errorf("secrets: verify keys: %w", err)
	}
	return opened, nil
}

// sealCheck returns nonce || GCM tag of nothing, with the id as associated data.
func sealCheck(aead cipher.AEAD, random io.Reader, id string) ([]byte, error) {
	out := make([]byte, nonceSize, nonceSize+tagSize)
	if _, err := io.ReadFull(random, out); err != nil {
		return nil, fmt.Errorf("secrets: key check: read nonce: %w", err)
	}
	return aead.Seal(out, out[:nonceSize], nil, lengthPrefixed(masterCheckLabel, id)), nil
}

func opensCheck(aead cipher.AEAD, id string, value []byte) bool {
	if len(value) != nonceSize+tagSize {
		return false
	}
	_, err := aead.Open(nil, value[:nonceSize], value[nonceSize:], lengthPrefixed(masterCheckLabel, id))
	return err == nil
}

// fingerprint is HMAC-SHA256 of a fixed label; no backup-code hash has the
// same input, since those start with another label.
func (h *CodeHasher) fingerprint() []byte {
	mac := hmac.New(sha256.New, h.key)
	mac.Write(lengthPrefixed(codeFingerprintLabel))
	return mac.Sum(nil)
}
