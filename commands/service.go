// Package commands runs every use case: load the stream, let the domain decide,
// append at the expected version, and decide again on a concurrency conflict. The
// cryptographic checks, sealing and hashing happen here, with the clock and the
// randomness injected.
package commands

import (
	"context"
	"crypto/hmac"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/eventstore"
	"github.com/twofactor/twofactor/secrets"
)

// Service executes commands against the event log.
type Service struct {
	store   *eventstore.Store
	vault   *secrets.Vault
	codes   *secrets.CodeHasher
	clock   func() time.Time
	random  io.Reader
	retries int
	// onRetry, when set, observes every retry after a concurrency conflict.
	onRetry func()
	// snapshotEvery: a snapshot is saved once a stream has grown by this many
	// events since the last one (0: never).
	snapshotEvery int64
	policies      policyCache
}

// DefaultRetries bounds how often a command decides again after losing a race:
// enough for a burst of parallel requests on one user, not a busy loop.
const DefaultRetries = 8

// New wires a command service. random must be a cryptographically secure reader.
func New(store *eventstore.Store, vault *secrets.Vault, codes *secrets.CodeHasher, clock func() time.Time, random io.Reader) *Service {
	return &Service{store: store, vault: vault, codes: codes, clock: clock, random: random, retries: DefaultRetries, snapshotEvery: DefaultSnapshotEvery}
}

// DefaultSnapshotEvery keeps a command on a stream of any length to one snapshot
// and at most this many events. Every event after the snapshot is read, sent
// as text and decoded on every command, and a snapshot costs one more
// statement when saved: per login (BenchmarkLogin, a user over whole
// intervals) 100 cost 0.45 ms of CPU here, 0.38 ms in PostgreSQL and 2,048
// allocations; 20 cost 0.27 ms, 0.28 ms and 649 allocations for 0.05 more
// PostgreSQL transactions; 10 and 5 saved no more CPU and cost 0.1 and 0.2
// more transactions.
const DefaultSnapshotEvery = 20

// WithSnapshotEvery changes how often snapshots are saved; 0 turns them off
// (existing ones are still used).
func (s *Service) WithSnapshotEvery(n int64) *Service {
	s.snapshotEvery = n
	return s
}

// Meta says who issues a command and from which request; it becomes event metadata.
type Meta struct {
	Actor         domain.Actor
	RequestID     string
	CorrelationID string
	CausationID   string
	KeyID         string
	Reason        string
}

// validate refuses metadata the log cannot store: it is written with every
// event, so one NUL in a reason would fail every projector reading it.
func (m Meta) validate() error {
	if err := m.Actor.Validate(); err != nil {
		return err
	}
	for _, f := range []struct{ name, value string }{
		{"request_id", m.RequestID}, {"correlation_id", m.CorrelationID}, {"causation_id", m.CausationID},
		{"key_id", m.KeyID}, {"reason", m.Reason},
	} {
		if err := domain.CheckText(f.name, f.value); err != nil {
			return err
		}
	}
	return nil
}

// checkEvents is the last check before an append: nothing unstorable is written,
// whichever decision produced it.
func checkEvents(events []domain.Event) error {
	for _, e := range events {
		if err := domain.CheckEvent(e); err != nil {
			return err
		}
	}
	return nil
}

func (m Meta) metadata(now time.Time) eventstore.Metadata {
	correlation := m.CorrelationID
	if correlation == "" {
		correlation = m.RequestID
	}
	return eventstore.Metadata{
		Actor: m.Actor, RequestID: m.RequestID, CorrelationID: correlation, CausationID: m.CausationID,
		KeyID: m.KeyID, Reason: m.Reason, OccurredAt: now,
	}
}

// Result is what every state-changing command returns.
type Result struct {
	// Position is the log position of the last event written; queries can wait for it.
	Position int64 `json:"position"`
	// Version is the stream version after the command.
	Version int64 `json:"version"`
	// Events names what was recorded, in order.
	Events []string `json:"events"`
}

func resultOf(a *eventstore.Appended) Result {
	r := Result{Position: a.Position, Version: a.Version}
	for _, rec := range a.Records {
		r.Events = append(r.Events, rec.Type)
	}
	return r
}

// userDecision is one attempt at a user command: it may do cryptographic work
// and returns the events to append and the outcome to report.
type userDecision func(ctx context.Context, u *domain.UserTwoFactor, env domain.Env) ([]domain.Event, error)

// executeUser loads the tenant policy and the user's stream, decides, and appends.
// Events decided together with an error (a failed check) are appended and the
// error is returned with the result.
func (s *Service) executeUser(ctx context.Context, meta Meta, tenantID, userID string, decide userDecision) (Result, *domain.UserTwoFactor, error) {
	if err := validateTarget(meta, tenantID, userID); err != nil {
		return Result{}, nil, err
	}
	stream := eventstore.UserStream(tenantID, userID)
	for attempt := 0; ; attempt++ {
		policy, u, snapshotVersion, head, key, err := s.loadForCommand(ctx, tenantID, userID)
		if err != nil {
			return Result{}, nil, err
		}
		now := s.clock()
		events, decided := decide(context.WithValue(ctx, keyLookupKey{}, key), u, domain.Env{Now: now, Actor: meta.Actor, Policy: policy})
		if len(events) == 0 {
			return Result{}, u, decided
		}
		if err := checkEvents(events); err != nil {
			return Result{}, nil, err
		}
		appended, err := s.store.AppendAfter(ctx, tenantID, stream, u.Version(), head, events, meta.metadata(now))
		if errors.Is(err, eventstore.ErrConcurrency) {
			if attempt+1 >= s.retries {
				return Result{}, nil, domain.Conflict(domain.CodeConcurrentChange, "the account changed concurrently; retry")
			}
			s.retrying(ctx, attempt)
			continue
		}
		if err != nil {
			return Result{}, nil, err
		}
		for _, r := range appended.Records {
			u.Apply(r.Event, r.RecordedAt)
		}
		if s.snapshotEvery > 0 && u.Version()-snapshotVersion >= s.snapshotEvery {
			s.saveSnapshot(ctx, tenantID, stream, u)
		}
		return resultOf(appended), u, decided
	}
}

// backoff waits a short random time so racing writers spread out.
func backoff(ctx context.Context, attempt int) {
	d := time.Duration(1+rand.IntN(1<<min(attempt, 5))) * time.Millisecond
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func validateTarget(meta Meta, tenantID, userID string) error {
	if err := meta.validate(); err != nil {
		return err
	}
	if meta.Actor.Kind == domain.ActorAuditor {
		return domain.Forbidden(domain.CodeNotAllowed, "auditors cannot change anything")
	}
	if err := domain.ValidateIdentifier("tenant id", tenantID); err != nil {
		return err
	}
	return domain.ValidateIdentifier("user id", userID)
}

// loadForCommand reads what a user command decides from in one round trip
// (the tenant's policy stream, the user's snapshot and the events after it,
// and the user's data-key row) and restores the user. head is the hash of the
// user's last event when it was read (nil when the state comes from a snapshot
// with no event after it), so the append need not read it again; key lets the
// decision open the user's secrets without reading the row again (s.open).
func (s *Service) loadForCommand(ctx context.Context, tenantID, userID string) (domain.Policy, *domain.UserTwoFactor, int64, []byte, *secrets.KeyLookup, error) {
	stream := eventstore.UserStream(tenantID, userID)
	tenantStream := eventstore.TenantStream(tenantID)
	var key *secrets.KeyLookup
	var load *eventstore.CommandLoad
	var err error
	if s.vault == nil { // a service that only creates tenants has no vault
		load, err = s.store.LoadForCommand(ctx, tenantStream, stream, nil)
	} else {
		k, queue := s.vault.LookupKey(tenantID, userID)
		key = k
		load, err = s.store.LoadForCommand(ctx, tenantStream, stream, queue)
	}
	if err != nil {
		return domain.Policy{}, nil, 0, nil, nil, err
	}
	policy, err := s.policies.of(tenantID, load.Tenant)
	if err != nil {
		return domain.Policy{}, nil, 0, nil, nil, err
	}
	u, snapshotVersion, records, err := s.restoreUser(ctx, tenantID, userID, load.Snapshot, load.User)
	if err != nil {
		return domain.Policy{}, nil, 0, nil, nil, err
	}
	var head []byte
	if n := len(records); n > 0 && records[n-1].Version == u.Version() {
		head = records[n-1].Hash
	}
	return policy, u, snapshotVersion, head, key, nil
}

// keyLookupKey carries a command's data-key lookup to its decision.
type keyLookupKey struct{}

// open unseals a value of the user with the data-key row the command read in
// its first batch, or reads the row (secrets.Vault.Open) when it has none.
func (s *Service) open(ctx context.Context, tenantID, userID string, purpose secrets.Purpose, sealed string) ([]byte, error) {
	if key, _ := ctx.Value(keyLookupKey{}).(*secrets.KeyLookup); key != nil {
		if plaintext, ok, err := s.vault.OpenWith(key, tenantID, userID, purpose, sealed); ok {
			return plaintext, err
		}
	}
	return s.vault.Open(ctx, tenantID, userID, purpose, sealed)
}

// restoreUser applies records to the snapshot when the snapshot is valid, and
// otherwise folds the whole stream; it returns the records it applied.
func (s *Service) restoreUser(ctx context.Context, tenantID, userID string, snap *eventstore.Snapshot, records []*eventstore.Record) (*domain.UserTwoFactor, int64, []*eventstore.Record, error) {
	stream := eventstore.UserStream(tenantID, userID)
	var u *domain.UserTwoFactor
	var err error
	if snap != nil && snap.Schema == domain.StateSchema && hmac.Equal(snap.MAC, s.snapshotMAC(stream, snap.Version, snap.Schema, snap.State)) {
		u, err = domain.RestoreUserTwoFactor(tenantID, userID, snap.Version, snap.State)
	}
	if u == nil || err != nil {
		// No snapshot, an old schema, or one altered in the database: the stream decides.
		if snap != nil {
			if records, err = s.store.Load(ctx, stream); err != nil {
				return nil, 0, nil, err
			}
		}
		u, snap = domain.NewUserTwoFactor(tenantID, userID), nil
	}
	for _, r := range records {
		u.Apply(r.Event, r.RecordedAt)
	}
	if snap == nil {
		return u, 0, records, nil
	}
	return u, snap.Version, records, nil
}

func (s *Service) snapshotMAC(stream string, version int64, schema int, state []byte) []byte {
	return SnapshotMAC(s.codes, stream, version, schema, state)
}

// SnapshotMAC binds a snapshot to its stream, version and schema under the server
// key. Start-up recomputes it to tell whether the configured backup-code key is
// the one in use (a database from before key fingerprints).
func SnapshotMAC(codes *secrets.CodeHasher, stream string, version int64, schema int, state []byte) []byte {
	return codes.Hash("snapshot:"+stream, fmt.Sprintf("%d|%d|%s", version, schema, state))
}

// saveSnapshot stores the state after a command. It is a cache: a failure only
// costs the next command a longer read, so it does not fail the command.
func (s *Service) saveSnapshot(ctx context.Context, tenantID, stream string, u *domain.UserTwoFactor) {
	state, err := u.SaveState()
	if err != nil {
		return
	}
	_ = s.store.SaveSnapshot(ctx, eventstore.Snapshot{
		StreamID: stream, TenantID: tenantID, Version: u.Version(), Schema: domain.StateSchema,
		State: state, MAC: s.snapshotMAC(stream, u.Version(), domain.StateSchema, state),
	})
}

// loadTenant folds a tenant's policy stream.
func (s *Service) loadTenant(ctx context.Context, tenantID string) (*domain.TenantPolicy, error) {
	records, err := s.store.Load(ctx, eventstore.TenantStream(tenantID))
	if err != nil {
		return nil, err
	}
	return foldTenant(tenantID, records), nil
}

func foldTenant(tenantID string, records []*eventstore.Record) *domain.TenantPolicy {
	t := domain.NewTenantPolicy(tenantID)
	for _, r := range records {
		t.Apply(r.Event)
	}
	return t
}

// policyOf is the policy of a tenant from its stream; a tenant that does not exist is not found.
func policyOf(tenantID string, records []*eventstore.Record) (domain.Policy, error) {
	t := foldTenant(tenantID, records)
	if !t.Exists() {
		return domain.Policy{}, domain.NotFound(domain.CodeTenantNotFound, "tenant not found")
	}
	return t.Policy(), nil
}

// policyCache keeps each tenant's policy folded, keyed by the head of its
// stream (version and hash): every command still reads the tenant stream, in
// its first batch, and decodes it only when it has changed. Events never
// change, so the same head means the same stream.
type policyCache struct {
	mu sync.Mutex
	m  map[string]cachedPolicy
}

type cachedPolicy struct {
	version int64
	hash    []byte
	policy  domain.Policy
}

// maxCachedPolicies bounds the cache; past it, the cache starts again empty.
const maxCachedPolicies = 10_000

// of returns the policy of the tenant whose stream is records (undecoded, as
// eventstore.CommandLoad has them); a tenant that does not exist is not found.
func (c *policyCache) of(tenantID string, records []*eventstore.Record) (domain.Policy, error) {
	if len(records) == 0 {
		return domain.Policy{}, domain.NotFound(domain.CodeTenantNotFound, "tenant not found")
	}
	head := records[len(records)-1]
	c.mu.Lock()
	cached, ok := c.m[tenantID]
	c.mu.Unlock()
	if ok && cached.version == head.Version && hmac.Equal(cached.hash, head.Hash) {
		return cached.policy, nil
	}
	for _, r := range records {
		if err := r.DecodeEvent(); err != nil {
			return domain.Policy{}, err
		}
	}
	policy, err := policyOf(tenantID, records)
	if err != nil {
		return domain.Policy{}, err
	}
	c.mu.Lock()
	if c.m == nil || len(c.m) >= maxCachedPolicies {
		c.m = map[string]cachedPolicy{}
	}
	c.m[tenantID] = cachedPolicy{version: head.Version, hash: head.Hash, policy: policy}
	c.mu.Unlock()
	return policy, nil
}

func (s *Service) policy(ctx context.Context, tenantID string) (domain.Policy, error) {
	records, err := s.store.Load(ctx, eventstore.TenantStream(tenantID))
	if err != nil {
		return domain.Policy{}, err
	}
	return policyOf(tenantID, records)
}

// Status replays a user's stream and returns their current state.
func (s *Service) Status(ctx context.Context, tenantID, userID string) (domain.Snapshot, error) {
	if err := domain.ValidateIdentifier("tenant id", tenantID); err != nil {
		return domain.Snapshot{}, err
	}
	if err := domain.ValidateIdentifier("user id", userID); err != nil {
		return domain.Snapshot{}, err
	}
	policy, u, _, _, _, err := s.loadForCommand(ctx, tenantID, userID)
	if err != nil {
		return domain.Snapshot{}, err
	}
	return u.Snapshot(s.clock(), policy), nil
}

// readRandom fills b from the injected reader.
func (s *Service) readRandom(b []byte) error {
	if _, err := io.ReadFull(s.random, b); err != nil {
		return fmt.Errorf("commands: random source: %w", err)
	}
	return nil
}
