package projections

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/eventstore"
)

// tableSet names the tables of the user-status read model: the live ones, or
// their shadow copies during a rebuild.
type tableSet struct {
	status, state, tenants, coverage string
}

var liveTables = tableSet{status: "user_status", state: "user_status_state", tenants: "tenant_policies", coverage: "tenant_coverage"}

const shadowSuffix = "_rebuild"

func (t tableSet) shadow() tableSet {
	return tableSet{status: t.status + shadowSuffix, state: t.state + shadowSuffix, tenants: t.tenants + shadowSuffix, coverage: t.coverage + shadowSuffix}
}

func (t tableSet) all() []string { return []string{t.status, t.state, t.tenants, t.coverage} }

func ident(name string) string { return pgx.Identifier{name}.Sanitize() }

// sqlSource loads entries from the read-model tables within a transaction.
type sqlSource struct {
	tx     pgx.Tx
	tables tableSet
	store  *eventstore.Store
}

func (s sqlSource) userQuery(where string) string {
	return `SELECT s.stream_id, s.tenant_id, s.user_id, s.version, s.position, s.event_at, s.schema, s.state::text, s.expiries::text,
		u.status_base, u.enabled, u.required
		FROM ` + ident(s.tables.state) + ` s LEFT JOIN ` + ident(s.tables.status) + ` u
		ON u.tenant_id = s.tenant_id AND u.user_id = s.user_id
		WHERE ` + where
}

func (s sqlSource) users(ctx context.Context, where string, args ...any) ([]*userEntry, error) {
	var out []*userEntry
	err := queryIsolated(ctx, s.tx, s.userQuery(where), args, func(rows pgx.Rows) error {
		u := &userEntry{}
		var schema int
		var state *string
		var expiries string
		var base *string
		var enabled, required *bool
		if err := rows.Scan(&u.streamID, &u.tenantID, &u.userID, &u.version, &u.position, &u.eventAt, &schema, &state, &expiries,
			&base, &enabled, &required); err != nil {
			return err
		}
		u.eventAt = u.eventAt.UTC()
		if base != nil {
			u.stored = contribution{present: true, base: domain.Status(*base), enabled: *enabled, requiredNotEnrolled: *required && !*enabled}
		}
		if err := decodeState(u, schema, state, []byte(expiries)); err != nil {
			return err
		}
		out = append(out, u)
		return nil
	})
	return out, err
}

func (s sqlSource) user(ctx context.Context, streamID string) (*userEntry, error) {
	us, err := s.users(ctx, "s.stream_id = $1", streamID)
	if err != nil || len(us) == 0 {
		return nil, err
	}
	return us[0], nil
}

func (s sqlSource) tenantUsers(ctx context.Context, tenantID string, skip map[string]*userEntry) ([]*userEntry, error) {
	us, err := s.users(ctx, "s.tenant_id = $1", tenantID)
	if err != nil {
		return nil, err
	}
	out := us[:0]
	for _, u := range us {
		if _, ok := skip[u.streamID]; !ok {
			out = append(out, u)
		}
	}
	return out, nil
}

func (s sqlSource) tenant(ctx context.Context, tenantID string) (*tenantEntry, error) {
	var t *tenantEntry
	err := queryIsolated(ctx, s.tx, `SELECT name, policy::text, version, position, updated_at FROM `+ident(s.tables.tenants)+` WHERE tenant_id = $1`,
		[]any{tenantID}, func(rows pgx.Rows) error {
			t = &tenantEntry{tenantID: tenantID, exists: true}
			var policy []byte
			if err := rows.Scan(&t.name, &policy, &t.version, &t.position, &t.eventAt); err != nil {
				return err
			}
			t.eventAt = t.eventAt.UTC()
			if err := json.Unmarshal(policy, &t.policy); err != nil {
				return fmt.Errorf("projections: policy of tenant %s: %w", tenantID, err)
			}
			return nil
		})
	return t, err
}

// queryIsolated runs a read inside the subscriber's transaction under a savepoint
// (sent in the same round trip): if it fails, the transaction is rolled back to
// the savepoint and stays usable, so the handler's retry can succeed instead of
// every later message of the batch failing on an aborted transaction.
func queryIsolated(ctx context.Context, tx pgx.Tx, sql string, args []any, row func(pgx.Rows) error) error {
	b := &pgx.Batch{}
	b.Queue(`SAVEPOINT projection_read`)
	b.Queue(sql, args...)
	b.Queue(`RELEASE SAVEPOINT projection_read`)
	res := tx.SendBatch(ctx, b)
	err := func() error {
		if _, err := res.Exec(); err != nil {
			return err
		}
		rows, err := res.Query()
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			if err := row(rows); err != nil {
				return err
			}
		}
		if err := rows.Err(); err != nil {
			return err
		}
		rows.Close()
		_, err = res.Exec()
		return err
	}()
	if cerr := res.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		if _, rerr := tx.Exec(context.WithoutCancel(ctx), `ROLLBACK TO SAVEPOINT projection_read`); rerr != nil {
			return errors.Join(err, rerr)
		}
	}
	return err
}

func (s sqlSource) streamAfter(ctx context.Context, streamID string, afterVersion int64) ([]*eventstore.Record, error) {
	return s.store.LoadAfter(ctx, streamID, afterVersion)
}

// errStale: the database holds a newer state than the projector's memory (another
// worker wrote it): the transaction rolls back and the batch is read again.
var errStale = errors.New("projections: read model changed underneath the projector")

// written is what a flush wrote, for metrics.
type written struct {
	rows, deleted, states int
	// checkpoint is the position the checkpoint moved to (0: it did not move).
	checkpoint int64
}

// flush writes the changes of a batch in one round trip: tenant policies, derived
// user_status rows (deleted for erased users), projector states guarded by version,
// coverage deltas, and (when ckpt is set) the checkpoint with a notification.
func flush(ctx context.Context, tx pgx.Tx, t tableSet, m *model, src source, ch *changes, ckpt string) (written, error) {
	var w written
	for id := range ch.recompute {
		others, err := src.tenantUsers(ctx, id, m.users)
		if err != nil {
			return w, err
		}
		for _, u := range others {
			m.users[u.streamID] = u
		}
		for _, u := range m.users {
			if u.tenantID == id {
				ch.rows[u.streamID] = u
			}
		}
	}
	batch := &pgx.Batch{}

	// Tenants, in a stable order.
	tenantIDs := make([]string, 0, len(ch.tenants))
	for id := range ch.tenants {
		tenantIDs = append(tenantIDs, id)
	}
	sort.Strings(tenantIDs)
	for _, id := range tenantIDs {
		te := ch.tenants[id]
		if !te.exists {
			continue
		}
		policy, err := json.Marshal(te.policy)
		if err != nil {
			return w, err
		}
		batch.Queue(`INSERT INTO `+ident(t.tenants)+` (tenant_id, name, policy, version, position, updated_at)
			VALUES ($1, $2, $3::jsonb, $4, $5, $6)
			ON CONFLICT (tenant_id) DO UPDATE SET name = excluded.name, policy = excluded.policy,
				version = excluded.version, position = excluded.position, updated_at = excluded.updated_at
			WHERE `+ident(t.tenants)+`.version < excluded.version`,
			te.tenantID, te.name, string(policy), te.version, te.position, te.eventAt)
	}

	// Rows, and coverage deltas from what each user counted for before.
	var up rowColumns
	var delTenants, delUsers []string
	deltas := map[[2]string]*[3]int64{}
	add := func(tenant string, c contribution, sign int64) {
		if !c.present {
			return
		}
		k := [2]string{tenant, string(c.base)}
		d := deltas[k]
		if d == nil {
			d = &[3]int64{}
			deltas[k] = d
		}
		d[0] += sign
		if c.enabled {
			d[1] += sign
		}
		if c.requiredNotEnrolled {
			d[2] += sign
		}
	}
	for _, u := range ch.rows {
		tenant, err := m.tenant(ctx, src, u.tenantID)
		if err != nil {
			return w, err
		}
		row := deriveRow(u, policyOf(tenant))
		c := row.contribution()
		if c != u.stored {
			add(u.tenantID, u.stored, -1)
			add(u.tenantID, c, +1)
		}
		if row == nil {
			if u.stored.present || u.forgotten {
				delTenants = append(delTenants, u.tenantID)
				delUsers = append(delUsers, u.userID)
			}
		} else {
			up.add(row)
		}
		u.stored = c
	}
	if up.n > 0 {
		batch.Queue(up.upsertSQL(t.status), up.args()...)
		w.rows = up.n
	}
	if len(delUsers) > 0 {
		batch.Queue(`DELETE FROM `+ident(t.status)+` WHERE (tenant_id, user_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))`, delTenants, delUsers)
		w.deleted = len(delUsers)
	}

	// Projector states, guarded: each must move forward from what is stored.
	var st stateColumns
	for _, u := range ch.states {
		if err := st.add(u); err != nil {
			return w, err
		}
	}
	stateIdx := -1
	if st.n > 0 {
		stateIdx = batch.Len()
		batch.Queue(st.upsertSQL(t.state), st.args()...)
		w.states = st.n
	}

	// Coverage.
	if len(deltas) > 0 {
		var ct, cb []string
		var cu, ce, cr []int64
		for k, d := range deltas {
			if *d == [3]int64{} {
				continue
			}
			ct, cb = append(ct, k[0]), append(cb, k[1])
			cu, ce, cr = append(cu, d[0]), append(ce, d[1]), append(cr, d[2])
		}
		if len(ct) > 0 {
			batch.Queue(`INSERT INTO `+ident(t.coverage)+` AS c (tenant_id, status_base, users, enabled, required_not_enrolled)
				SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[])
				ON CONFLICT (tenant_id, status_base) DO UPDATE SET users = c.users + excluded.users,
					enabled = c.enabled + excluded.enabled, required_not_enrolled = c.required_not_enrolled + excluded.required_not_enrolled`,
				ct, cb, cu, ce, cr)
			batch.Queue(`DELETE FROM `+ident(t.coverage)+` WHERE tenant_id = ANY($1::text[]) AND users = 0`, ct)
		}
	}

	ckptIdx := -1
	if ckpt != "" && ch.last != nil {
		ckptIdx = batch.Len()
		batch.Queue(`UPDATE read_model_checkpoints c SET transaction_id = e.transaction_id, position = e.position, updated_at = now()
			FROM events e WHERE c.read_model = $1 AND e.position = $2
			AND (e.transaction_id, e.position) > (c.transaction_id, c.position)
			RETURNING c.position`, ckpt, ch.last.Position)
		batch.Queue(`SELECT pg_notify($1, $2)`, ReadModelsChannel, ckpt)
	}
	if batch.Len() == 0 {
		return w, nil
	}
	res := tx.SendBatch(ctx, batch)
	for i := 0; i < batch.Len(); i++ {
		if i == ckptIdx {
			err := res.QueryRow().Scan(&w.checkpoint)
			if err != nil && !errors.Is(err, pgx.ErrNoRows) {
				res.Close()
				return w, fmt.Errorf("projections: write checkpoint: %w", err)
			}
			continue
		}
		tag, err := res.Exec()
		if err != nil {
			res.Close()
			return w, fmt.Errorf("projections: write read model: %w", err)
		}
		if i == stateIdx && tag.RowsAffected() != int64(st.n) {
			res.Close()
			return w, errStale
		}
	}
	return w, res.Close()
}

// rowColumns gathers user_status rows as column arrays for one unnest upsert.
type rowColumns struct {
	n                                       int
	tenant, user, base, methods, dflt       []string
	pending, lastMethod, waivedBy           []string
	enabled, low, required, canToggle       []bool
	mustEnroll, setupApp                    []bool
	pendingUntil, lockedUntil, lastVerified []*time.Time
	updatedAt                               []time.Time
	codes, attempts, keys                   []int32
	version, position                       []int64
}

func (c *rowColumns) add(r *userRow) {
	c.n++
	c.tenant = append(c.tenant, r.TenantID)
	c.user = append(c.user, r.UserID)
	c.base = append(c.base, string(r.StatusBase))
	c.enabled = append(c.enabled, r.Enabled)
	c.methods = append(c.methods, joinMethods(r.Methods))
	c.dflt = append(c.dflt, string(r.DefaultMethod))
	c.pending = append(c.pending, pendingJSON(r.Pending))
	c.pendingUntil = append(c.pendingUntil, r.PendingUntil)
	c.codes = append(c.codes, int32(r.BackupCodesRemaining))
	c.low = append(c.low, r.LowBackupCodes)
	c.required = append(c.required, r.Required)
	c.waivedBy = append(c.waivedBy, r.RequirementWaivedBy)
	c.canToggle = append(c.canToggle, r.CanToggle)
	c.mustEnroll = append(c.mustEnroll, r.MustEnroll)
	c.setupApp = append(c.setupApp, r.SetupAppAtNextLogin)
	c.lockedUntil = append(c.lockedUntil, r.LockedUntil)
	c.attempts = append(c.attempts, int32(r.AttemptsRemaining))
	c.lastVerified = append(c.lastVerified, r.LastVerifiedAt)
	c.lastMethod = append(c.lastMethod, string(r.LastVerifiedMethod))
	c.version = append(c.version, r.Version)
	c.position = append(c.position, r.Position)
	c.updatedAt = append(c.updatedAt, r.UpdatedAt)
	c.keys = append(c.keys, int32(r.SecurityKeys))
}

const statusColumns = `tenant_id, user_id, status_base, enabled, methods, default_method, pending, pending_until,
	backup_codes_remaining, low_backup_codes, required, can_toggle, must_enroll, setup_app_at_next_login,
	locked_until, attempts_remaining, last_verified_at, last_verified_method, version, position, updated_at,
	requirement_waived_by, security_keys`

func (c *rowColumns) upsertSQL(table string) string {
	var set []string
	for _, col := range strings.Split(statusColumns, ",") {
		col = strings.TrimSpace(col)
		if col != "tenant_id" && col != "user_id" {
			set = append(set, col+" = excluded."+col)
		}
	}
	return `INSERT INTO ` + ident(table) + ` AS s (` + statusColumns + `)
		SELECT t, u, b, en, string_to_array(m, ','), d, p::jsonb, pu, bc, low, req, ct, me, sa, lu, ar, lv, lm, v, pos, ua, wb, sk
		FROM unnest($1::text[], $2::text[], $3::text[], $4::bool[], $5::text[], $6::text[], $7::text[], $8::timestamptz[],
			$9::int[], $10::bool[], $11::bool[], $12::bool[], $13::bool[], $14::bool[], $15::timestamptz[], $16::int[],
			$17::timestamptz[], $18::text[], $19::bigint[], $20::bigint[], $21::timestamptz[], $22::text[], $23::int[])
			AS r(t, u, b, en, m, d, p, pu, bc, low, req, ct, me, sa, lu, ar, lv, lm, v, pos, ua, wb, sk)
		ON CONFLICT (tenant_id, user_id) DO UPDATE SET ` + strings.Join(set, ", ") + `
		WHERE s.version <= excluded.version`
}

func (c *rowColumns) args() []any {
	return []any{c.tenant, c.user, c.base, c.enabled, c.methods, c.dflt, c.pending, c.pendingUntil,
		c.codes, c.low, c.required, c.canToggle, c.mustEnroll, c.setupApp, c.lockedUntil, c.attempts,
		c.lastVerified, c.lastMethod, c.version, c.position, c.updatedAt, c.waivedBy, c.keys}
}

// copyRow is a row for COPY (rebuild), in statusColumns order.
func copyRow(r *userRow) []any {
	return []any{r.TenantID, r.UserID, string(r.StatusBase), r.Enabled, methodStrings(r.Methods), string(r.DefaultMethod),
		json.RawMessage(pendingJSON(r.Pending)), r.PendingUntil, int32(r.BackupCodesRemaining), r.LowBackupCodes, r.Required,
		r.CanToggle, r.MustEnroll, r.SetupAppAtNextLogin, r.LockedUntil, int32(r.AttemptsRemaining), r.LastVerifiedAt,
		string(r.LastVerifiedMethod), r.Version, r.Position, r.UpdatedAt, r.RequirementWaivedBy, int32(r.SecurityKeys)}
}

func methodStrings(ms []domain.Method) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = string(m)
	}
	return out
}

func joinMethods(ms []domain.Method) string { return strings.Join(methodStrings(ms), ",") }

func pendingJSON(p []pendingMethod) string {
	if len(p) == 0 {
		return "[]"
	}
	b, _ := json.Marshal(p) // cannot fail: strings and times
	return string(b)
}

// stateColumns gathers user_status_state rows.
type stateColumns struct {
	n                            int
	stream, tenant, user, expiry []string
	state                        []*string
	version, position            []int64
	eventAt                      []time.Time
	schema                       []int32
}

func (c *stateColumns) add(u *userEntry) error {
	state, expiries, err := encodeState(u)
	if err != nil {
		return err
	}
	c.n++
	c.stream = append(c.stream, u.streamID)
	c.tenant = append(c.tenant, u.tenantID)
	c.user = append(c.user, u.userID)
	c.version = append(c.version, u.version)
	c.position = append(c.position, u.position)
	c.eventAt = append(c.eventAt, u.eventAt)
	c.schema = append(c.schema, int32(domain.StateSchema))
	c.state = append(c.state, state)
	c.expiry = append(c.expiry, expiries)
	return nil
}

const stateColumnList = `stream_id, tenant_id, user_id, version, position, event_at, schema, state, expiries`

func (c *stateColumns) upsertSQL(table string) string {
	return `INSERT INTO ` + ident(table) + ` AS s (` + stateColumnList + `)
		SELECT st, t, u, v, p, e, sc, js::json, ex::json
		FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::timestamptz[], $7::int[], $8::text[], $9::text[])
			AS r(st, t, u, v, p, e, sc, js, ex)
		ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, position = excluded.position,
			event_at = excluded.event_at, schema = excluded.schema, state = excluded.state, expiries = excluded.expiries
		WHERE s.version < excluded.version`
}

func (c *stateColumns) args() []any {
	return []any{c.stream, c.tenant, c.user, c.version, c.position, c.eventAt, c.schema, c.state, c.expiry}
}

func copyState(u *userEntry) ([]any, error) {
	state, expiries, err := encodeState(u)
	if err != nil {
		return nil, err
	}
	var js any
	if state != nil {
		js = json.RawMessage(*state)
	}
	return []any{u.streamID, u.tenantID, u.userID, u.version, u.position, u.eventAt, int32(domain.StateSchema), js, json.RawMessage(expiries)}, nil
}
