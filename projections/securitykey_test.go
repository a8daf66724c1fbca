package projections_test

import (
	"testing"
	"time"

	"github.com/twofactor/twofactor/commands"
	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/internal/softkey"
	"github.com/twofactor/twofactor/internal/testkit"
	"github.com/twofactor/twofactor/projections"
)

// Security keys in user_status: the method, the count, a registration pending
// until its challenge runs out; live equals rebuild equals the domain.
func TestSecurityKeysInUserStatus(t *testing.T) {
	pool := freshPool(t)
	l := newLive(t, pool, liveOptions{})
	p := domain.DefaultPolicy()
	p.WebAuthn.RPID = "example.com"
	p.WebAuthn.Origins = []string{"https://login.example.com"}
	f := testkit.New(t, pool, &p)
	register := func(user string, key *softkey.Key) commands.SecurityKeyAdded {
		t.Helper()
		opts, err := f.Svc.StartSecurityKeyRegistration(ctx, testkit.As(user), commands.StartSecurityKeyRegistration{TenantID: f.Tenant, UserID: user})
		must(t, err)
		resp, err := key.Create(opts.Options, "https://login.example.com")
		must(t, err)
		added, err := f.Svc.FinishSecurityKeyRegistration(ctx, testkit.As(user), commands.FinishSecurityKeyRegistration{TenantID: f.Tenant, UserID: user, Name: "k", Response: resp})
		must(t, err)
		return added
	}
	var keys []*softkey.Key
	for range 3 {
		k, err := softkey.New(softkey.ES256, softkey.FormatNone)
		must(t, err)
		keys = append(keys, k)
	}
	first := register("kim", keys[0])
	register("kim", keys[1])
	register("kim", keys[2])
	_, err := f.Svc.RemoveSecurityKey(ctx, testkit.As("kim"), commands.RemoveSecurityKey{TenantID: f.Tenant, UserID: "kim", KeyID: first.KeyID})
	must(t, err)
	_, err = f.Svc.StartSecurityKeyRegistration(ctx, testkit.As("lee"), commands.StartSecurityKeyRegistration{TenantID: f.Tenant, UserID: "lee"})
	must(t, err)

	l.caughtUp(30 * time.Second)
	q := projections.NewQueries(pool, projections.QueryOptions{Clock: f.Clock.Now})
	kim, err := q.GetUser(ctx, f.Tenant, "kim", projections.ReadOptions{})
	must(t, err)
	if kim.SecurityKeys != 2 || len(kim.Methods) != 1 || kim.Methods[0] != domain.MethodWebAuthn || kim.Status != domain.StatusActivated {
		t.Fatalf("kim = %+v", kim)
	}
	lee, err := q.GetUser(ctx, f.Tenant, "lee", projections.ReadOptions{})
	must(t, err)
	if lee.Status != domain.StatusPending || len(lee.PendingMethods) != 1 || lee.PendingMethods[0] != domain.MethodWebAuthn {
		t.Fatalf("lee = %+v", lee)
	}
	page, err := q.ListUsers(ctx, f.Tenant, projections.UserFilter{Method: domain.MethodWebAuthn}, projections.PageRequest{}, projections.ReadOptions{})
	must(t, err)
	if len(page.Users) != 1 || page.Users[0].UserID != "kim" {
		t.Fatalf("users with webauthn = %+v", page.Users)
	}
	for _, now := range []time.Time{f.Clock.Now(), f.Clock.Now().Add(time.Hour)} {
		if n := checkAgainstDomain(t, pool, now); n != 2 {
			t.Fatalf("checked %d users", n)
		}
	}
	live := dump(t, pool)
	l.stop()
	rebuild(t, pool)
	compareDumps(t, "live vs rebuild", live, dump(t, pool))
}
