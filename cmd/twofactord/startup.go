package main

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/twofactor/twofactor/commands"
	"github.com/twofactor/twofactor/migrations"
	"github.com/twofactor/twofactor/secrets"
)

// openWithKeys opens the database for a subcommand that holds keys (serve,
// worker, keys rotate). It refuses, before writing anything, a database that a
// newer twofactord migrated and keys that disagree with the ones the database
// was used with; then it applies the migrations and records the keys seen for
// the first time. It returns the migrations it applied.
func openWithKeys(ctx context.Context, cfg Config, ring *secrets.Keyring, codes *secrets.CodeHasher, log *slog.Logger) (*pgxpool.Pool, []string, error) {
	pool, err := openDatabase(ctx, cfg.DatabaseURL)
	if err != nil {
		return nil, nil, err
	}
	applied, err := checkMigrateRecord(ctx, cfg, pool, ring, codes, log)
	if err != nil {
		pool.Close()
		return nil, nil, err
	}
	return pool, applied, nil
}

func checkMigrateRecord(ctx context.Context, cfg Config, pool *pgxpool.Pool, ring *secrets.Keyring, codes *secrets.CodeHasher, log *slog.Logger) ([]string, error) {
	const unchanged = "refusing to start, nothing was changed"
	if err := migrations.CheckNotNewer(ctx, pool); err != nil {
		return nil, refusal(cfg, unchanged, err)
	}
	// Checked before the migrations too, so that a wrong key changes nothing
	// at all, not even the schema.
	if err := secrets.VerifyKeys(ctx, pool, ring, codes, snapshotsWitness); err != nil {
		return nil, refusal(cfg, unchanged, err)
	}
	applied, err := migrations.Apply(ctx, pool)
	if err != nil {
		return applied, refusal(cfg, unchanged, err)
	}
	// Only a process that started at the same time with other keys can make
	// this fail; the migrations may then be applied, no key is recorded.
	recorded, err := secrets.RecordKeys(ctx, pool, ring, codes, snapshotsWitness, rand.Reader)
	if err != nil {
		return applied, refusal(cfg, "refusing to start, no key was recorded", err)
	}
	if len(recorded) > 0 {
		log.Info("first use of master keys: their check values are recorded", "key_ids", recorded)
	}
	return applied, nil
}

// applyMigrations is migrations.Apply for the subcommands without keys, with
// the refusal of a newer schema naming the setting.
func applyMigrations(ctx context.Context, cfg Config, pool *pgxpool.Pool) ([]string, error) {
	applied, err := migrations.Apply(ctx, pool)
	if err != nil {
		return applied, refusal(cfg, "refusing to migrate, nothing was changed", err)
	}
	return applied, nil
}

// refusal turns what the start-up checks found into a message naming the
// settings and what the operator does about each.
func refusal(cfg Config, headline string, err error) error {
	var schema *migrations.NewerSchemaError
	if errors.As(err, &schema) {
		return fmt.Errorf("%s: TWOFACTOR_DATABASE_URL: %w", headline, err)
	}
	var keys *secrets.KeyCheckError
	if !errors.As(err, &keys) {
		return err
	}
	var lines []string
	switch {
	case cfg.throwawayMasterKey() && slices.Contains(keys.Mismatched, devMasterKeyID):
		lines = append(lines, "DEVELOPMENT MODE: this database holds data of an earlier --dev run, sealed under throwaway keys that are not the ones in "+
			cfg.devKeysFile()+" (deleted or replaced since): put that run's keys file back, use another database (TWOFACTOR_DATABASE_URL), "+
			"or drop this one (or remove the --dev-data-dir folder) to start afresh")
	case cfg.throwawayMasterKey() || cfg.throwawayCodeKey():
		lines = append(lines, "DEVELOPMENT MODE: --dev generated throwaway keys, but this database was used with keys of its own: "+
			"set them (TWOFACTOR_MASTER_KEYS, TWOFACTOR_CODE_KEY), or use another database (TWOFACTOR_DATABASE_URL)")
	}
	for _, id := range keys.Mismatched {
		lines = append(lines, fmt.Sprintf("TWOFACTOR_MASTER_KEYS: the key given for id %q is not the key this database knows as %q "+
			"(it does not open the id's recorded check value, or does not unwrap the data keys stored under the id): "+
			"set the right key for %q; a new key needs a new id", id, id, id))
	}
	if len(keys.Missing) > 0 {
		lines = append(lines, fmt.Sprintf("TWOFACTOR_MASTER_KEYS: stored user data keys are wrapped by master keys %q, which are not configured: "+
			"add them back after the first key; to retire a key, keep it until `twofactord keys rotate` has re-wrapped every data key under the first key",
			keys.Missing))
	}
	if keys.CodeKey {
		lines = append(lines, "TWOFACTOR_CODE_KEY: this is not the backup-code key this database was used with "+
			"(it does not match the recorded fingerprint, or the MACs of stored snapshots); with it every stored backup code fails: set the original key")
	}
	return errors.New(headline + ":\n  " + strings.Join(lines, "\n  "))
}

// snapshotsWitness is a secrets.CodeKeyWitness for databases from before code
// key fingerprints: snapshots carry a MAC under the backup-code key, so the
// latest ones tell whether codes is the key in use (older ones may predate a
// change of key, after which commands ignored them).
func snapshotsWitness(ctx context.Context, q secrets.Queryer, codes *secrets.CodeHasher) (found, matches bool, err error) {
	var exists bool
	if err := q.QueryRow(ctx, `SELECT to_regclass('user_snapshots') IS NOT NULL`).Scan(&exists); err != nil || !exists {
		return false, false, err
	}
	rows, err := q.Query(ctx, `SELECT stream_id, version, schema, state::text, mac FROM user_snapshots ORDER BY taken_at DESC LIMIT 5`)
	if err != nil {
		return false, false, err
	}
	var stream, state string
	var version int64
	var schema int
	var mac []byte
	_, err = pgx.ForEachRow(rows, []any{&stream, &version, &schema, &state, &mac}, func() error {
		found = true
		matches = matches || hmac.Equal(mac, commands.SnapshotMAC(codes, stream, version, schema, []byte(state)))
		return nil
	})
	return found, matches, err
}
