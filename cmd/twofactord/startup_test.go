package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/pquerna/otp/totp"

	"github.com/twofactor/twofactor/commands"
	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/migrations"
	"github.com/twofactor/twofactor/secrets"
)

// withEnv returns env with the given NAME=value pairs replacing earlier ones.
func withEnv(env []string, pairs ...string) []string {
	out := append([]string(nil), env...)
	for _, pair := range pairs {
		name, _, _ := strings.Cut(pair, "=")
		kept := out[:0]
		for _, kv := range out {
			if !strings.HasPrefix(kv, name+"=") {
				kept = append(kept, kv)
			}
		}
		out = append(kept, pair)
	}
	return out
}

// tablesDigest is the content of every table of the database, to compare
// before and after a refused start.
func tablesDigest(t *testing.T, pool *pgxpool.Pool) map[string]string {
	t.Helper()
	ctx := context.Background()
	rows, err := pool.Query(ctx, `SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename`)
	if err != nil {
		t.Fatal(err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	digest := map[string]string{}
	for _, table := range tables {
		var n int
		var sum string
		q := fmt.Sprintf(`SELECT count(*), coalesce(md5(string_agg(x::text, '|' ORDER BY x::text)), '') FROM %s x`, pgx.Identifier{table}.Sanitize())
		if err := pool.QueryRow(ctx, q).Scan(&n, &sum); err != nil {
			t.Fatal(err)
		}
		digest[table] = fmt.Sprintf("%d rows, %s", n, sum)
	}
	return digest
}

// refused runs the binary, which must exit non-zero saying every one of want,
// and change no row of any table.
func refused(t *testing.T, pool *pgxpool.Pool, bin string, env []string, args []string, want ...string) {
	t.Helper()
	before := tablesDigest(t, pool)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("%v did not exit: it started\n%s", args, out)
	}
	if err == nil {
		t.Fatalf("%v exited 0\n%s", args, out)
	}
	for _, w := range want {
		if !strings.Contains(string(out), w) {
			t.Errorf("%v: the message does not say %q:\n%s", args, w, out)
		}
	}
	after := tablesDigest(t, pool)
	for table, b := range before {
		if after[table] != b {
			t.Errorf("%v changed table %s: %s -> %s", args, table, b, after[table])
		}
	}
	for table := range after {
		if _, ok := before[table]; !ok {
			t.Errorf("%v created table %s", args, table)
		}
	}
}

func newMasterKey(t *testing.T, id string) string {
	t.Helper()
	k, err := secrets.GenerateMasterKey(rand.Reader, id)
	if err != nil {
		t.Fatal(err)
	}
	return k.String()
}

func newCodeKey(t *testing.T) string {
	t.Helper()
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(key)
}

// wrongTOTP is a well-formed code that no step near now accepts.
func wrongTOTP(t *testing.T, secret string) string {
	t.Helper()
	right, err := totp.GenerateCode(secret, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for d := byte(1); d < 10; d++ {
		candidate := right[:5] + string('0'+(right[5]-'0'+d)%10)
		steps, err := commands.MatchTOTP(secret, domain.TOTPParams{Algorithm: "SHA1", Digits: 6, PeriodSecs: 30}, 2, candidate, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if len(steps) == 0 {
			return candidate
		}
	}
	t.Fatal("no wrong code found")
	return ""
}

// startupWorld is a database that a correctly configured serve has used: a
// tenant and a user with TOTP and backup codes.
type startupWorld struct {
	bin, app, secret string
	env              []string
	codes            []string
	pool             *pgxpool.Pool
}

func newStartupWorld(t *testing.T) *startupWorld {
	t.Helper()
	w := &startupWorld{bin: buildBinary(t), env: testEnv(t)}
	pool, err := pgxpool.New(context.Background(), envValue(w.env, "TWOFACTOR_DATABASE_URL"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	w.pool = pool
	t.Run("seed", func(t *testing.T) {
		srv := startServer(t, w.bin, w.env)
		tenant := createTenantWith(t, w.bin, w.env, "Acme")
		w.app = tenant.APIKeys["app"].Token
		api := client{t: t, base: srv.URL, logs: srv.Logs}
		enrol := api.call("POST", "/v1/users/zoe/enrollments/totp", w.app, "", map[string]any{"account_name": "zoe@acme.test"}, 201)
		w.secret = enrol["secret"].(string)
		code, err := totp.GenerateCode(w.secret, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		conf := api.call("POST", "/v1/users/zoe/enrollments/totp/confirmation", w.app, "", map[string]any{"code": code}, 200)
		for _, c := range conf["backup_codes"].([]any) {
			w.codes = append(w.codes, c.(string))
		}
	})
	if t.Failed() {
		t.FailNow()
	}
	return w
}

// serves starts the binary with env and checks that it opens zoe's secrets
// (a wrong TOTP code is judged, not a 500), accepts her next backup code and
// enrols a new user.
func (w *startupWorld) serves(t *testing.T, env []string, newUser string) {
	t.Helper()
	srv := startServer(t, w.bin, env)
	api := client{t: t, base: srv.URL, logs: srv.Logs}
	api.call("POST", "/v1/users/zoe/verifications", w.app, "", map[string]any{"method": "totp", "code": wrongTOTP(t, w.secret)}, 422)
	code := w.codes[0]
	w.codes = w.codes[1:]
	api.call("POST", "/v1/users/zoe/verifications", w.app, "", map[string]any{"method": "backup_code", "code": code}, 200)
	api.call("POST", "/v1/users/"+newUser+"/enrollments/totp", w.app, "", map[string]any{"account_name": newUser + "@acme.test"}, 201)
}

// Each misconfiguration that would corrupt data or lock users out stops the
// real binary with a message naming the setting, before any row changes; the
// right keys start, and a key rotation passes the checks at every step.
func TestStartupRefusesWhatWouldCorruptData(t *testing.T) {
	w := newStartupWorld(t)
	k1 := envValue(w.env, "TWOFACTOR_MASTER_KEYS")
	otherK1, k2 := newMasterKey(t, "k1"), newMasterKey(t, "k2")

	refused(t, w.pool, w.bin, withEnv(w.env, "TWOFACTOR_MASTER_KEYS="+otherK1), []string{"serve"},
		"TWOFACTOR_MASTER_KEYS", `the key given for id "k1" is not the key this database knows`, "nothing was changed")
	refused(t, w.pool, w.bin, withEnv(w.env, "TWOFACTOR_MASTER_KEYS="+k2), []string{"serve"},
		"TWOFACTOR_MASTER_KEYS", `master keys ["k1"], which are not configured`, "add them back")
	refused(t, w.pool, w.bin, withEnv(w.env, "TWOFACTOR_CODE_KEY="+newCodeKey(t)), []string{"serve"},
		"TWOFACTOR_CODE_KEY", "not the backup-code key this database was used with")
	// Every subcommand that holds keys checks them.
	refused(t, w.pool, w.bin, withEnv(w.env, "TWOFACTOR_MASTER_KEYS="+otherK1, "TWOFACTOR_WORKER_ADDR=127.0.0.1:0"), []string{"worker"},
		"TWOFACTOR_MASTER_KEYS", `"k1"`)
	refused(t, w.pool, w.bin, withEnv(w.env, "TWOFACTOR_MASTER_KEYS="+k2+","+otherK1), []string{"keys", "rotate"},
		"TWOFACTOR_MASTER_KEYS", `"k1"`)

	refused(t, w.pool, w.bin, withEnv(w.env, "TWOFACTOR_MASTER_KEYS=", "TWOFACTOR_CODE_KEY="), []string{"serve", "--dev"},
		"DEVELOPMENT MODE: --dev generated throwaway keys, but this database was used with keys of its own", `master keys ["k1"]`)

	t.Run("newer schema", func(t *testing.T) {
		all, err := migrations.All()
		if err != nil {
			t.Fatal(err)
		}
		latest := all[len(all)-1]
		ctx := context.Background()
		if _, err := w.pool.Exec(ctx, `INSERT INTO schema_migrations (version, name) VALUES ($1, 'from_a_newer_binary.sql')`, latest.Version+1); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if _, err := w.pool.Exec(ctx, `DELETE FROM schema_migrations WHERE version = $1`, latest.Version+1); err != nil {
				t.Fatal(err)
			}
		}()
		for _, args := range [][]string{{"serve"}, {"migrate"}} {
			refused(t, w.pool, w.bin, w.env, args, "TWOFACTOR_DATABASE_URL",
				fmt.Sprintf("schema is at version %d", latest.Version+1), fmt.Sprintf("latest migration %d (%s)", latest.Version, latest.Name))
		}
	})

	t.Run("right keys", func(t *testing.T) { w.serves(t, w.env, "ann") })

	t.Run("rotation", func(t *testing.T) {
		both := withEnv(w.env, "TWOFACTOR_MASTER_KEYS="+k2+","+k1)
		cmd := exec.Command(w.bin, "keys", "rotate")
		cmd.Env = both
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), `re-wrapped 2 data keys under master key "k2"`) {
			t.Fatalf("keys rotate: %v\n%s", err, out)
		}
		w.serves(t, withEnv(w.env, "TWOFACTOR_MASTER_KEYS="+k2), "bob")
	})
	// k1 is no longer needed, but its id still names the old key.
	refused(t, w.pool, w.bin, withEnv(w.env, "TWOFACTOR_MASTER_KEYS="+k2+","+otherK1), []string{"serve"},
		"TWOFACTOR_MASTER_KEYS", `the key given for id "k1"`)
}

// A database from before key checks (migration 0009 not applied): the keys
// are checked against the stored data keys and snapshots instead, and nothing
// changes, not even the schema, until they agree.
func TestStartupChecksKeysOfADatabaseFromBeforeKeyChecks(t *testing.T) {
	w := newStartupWorld(t)
	ctx := context.Background()
	if _, err := w.pool.Exec(ctx, `DROP TABLE master_key_checks, code_key_checks;
		DELETE FROM schema_migrations WHERE name = '0009_key_checks.sql'`); err != nil {
		t.Fatal(err)
	}
	refused(t, w.pool, w.bin, withEnv(w.env, "TWOFACTOR_MASTER_KEYS="+newMasterKey(t, "k1")), []string{"serve"},
		"TWOFACTOR_MASTER_KEYS", `the key given for id "k1"`)
	// Without a fingerprint, snapshots (saved every commands.DefaultSnapshotEvery (20) events of a stream, so
	// made here by hand) carry the only MACs under the code key that can be
	// recomputed; backup codes are stored as MACs of codes nobody knows.
	codeKey, err := base64.StdEncoding.DecodeString(envValue(w.env, "TWOFACTOR_CODE_KEY"))
	if err != nil {
		t.Fatal(err)
	}
	codes, err := secrets.NewCodeHasher(codeKey)
	if err != nil {
		t.Fatal(err)
	}
	const stream, state = "user:elsewhere:ghost", `{"note":"a snapshot older binaries saved"}`
	if _, err := w.pool.Exec(ctx, `INSERT INTO user_snapshots (stream_id, tenant_id, version, schema, state, mac) VALUES ($1, 'elsewhere', 100, 1, $2, $3)`,
		stream, state, commands.SnapshotMAC(codes, stream, 100, 1, []byte(state))); err != nil {
		t.Fatal(err)
	}
	refused(t, w.pool, w.bin, withEnv(w.env, "TWOFACTOR_CODE_KEY="+newCodeKey(t)), []string{"serve"},
		"TWOFACTOR_CODE_KEY", "not the backup-code key this database was used with")
	t.Run("right keys", func(t *testing.T) { w.serves(t, w.env, "ann") })
	var checks, fingerprints int
	if err := w.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM master_key_checks), (SELECT count(*) FROM code_key_checks)`).Scan(&checks, &fingerprints); err != nil {
		t.Fatal(err)
	}
	if checks != 1 || fingerprints != 1 {
		t.Fatalf("after the upgrade: %d check values, %d fingerprints", checks, fingerprints)
	}
}

// --dev keeps its throwaway keys in a file beside the development database:
// a second run opens what the first sealed; a database of a run whose keys
// file is gone is refused, saying why and what to do.
func TestServeDevKeepsItsKeysAndRefusesTheDatabaseOfLostKeys(t *testing.T) {
	bin := buildBinary(t)
	devDir := filepath.Join(t.TempDir(), "dev")
	env := withEnv(testEnv(t), "TWOFACTOR_MASTER_KEYS=", "TWOFACTOR_CODE_KEY=", "TWOFACTOR_MAIL_DIR="+t.TempDir(),
		"TWOFACTOR_DEV_DATA_DIR="+filepath.Join(devDir, "postgres"))
	pool, err := pgxpool.New(context.Background(), envValue(env, "TWOFACTOR_DATABASE_URL"))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	t.Run("first run", func(t *testing.T) { startServer(t, bin, env, "--dev") })
	keysFile := filepath.Join(devDir, "keys")
	if fi, err := os.Stat(keysFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("keys file: %v %v", fi, err)
	}
	t.Run("second run", func(t *testing.T) { startServer(t, bin, env, "--dev") })
	if err := os.Remove(keysFile); err != nil {
		t.Fatal(err)
	}
	refused(t, pool, bin, env, []string{"serve", "--dev"}, "DEVELOPMENT MODE: this database holds data of an earlier --dev run",
		"TWOFACTOR_DATABASE_URL", keysFile)
}
