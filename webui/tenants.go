package webui

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"sync"
)

// tenants holds, in memory, one API key per role for each tenant the UI acts
// for: the host product's configuration in a real integration. The UI gets
// them through the operator API (the operator key is the one secret it is
// configured with): a new demo tenant with its keys, or new keys for an
// existing tenant named at sign-in. After a restart the UI issues fresh keys
// again for a tenant named at sign-in; the old ones stay valid until revoked.
type tenants struct {
	api         *client
	operatorKey string
	mu          sync.Mutex
	byID        map[string]*tenant
}

type tenant struct {
	id, name string
	keys     map[string]string // role → token
}

// knownTenant is what the sign-in page lists (never a key).
type knownTenant struct{ ID, Name string }

func (t *tenants) list() []knownTenant {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]knownTenant, 0, len(t.byID))
	for _, x := range t.byID {
		out = append(out, knownTenant{ID: x.id, Name: x.name})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name+out[i].ID < out[j].Name+out[j].ID })
	return out
}

func (t *tenants) get(id string) *tenant {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.byID[id]
}

// create makes a demo tenant through the operator API.
func (t *tenants) create(ctx context.Context, name string) (*tenant, error) {
	var out tenantWithKeys
	err := t.api.do(ctx, caller{token: t.operatorKey}, http.MethodPost, "/v1/operator/tenants", nil,
		map[string]any{"name": name}, "", &out)
	if err != nil {
		return nil, err
	}
	x := &tenant{id: out.TenantID, name: out.Name, keys: map[string]string{}}
	for _, k := range out.APIKeys {
		x.keys[k.Role] = k.Token
	}
	t.mu.Lock()
	t.byID[x.id] = x
	t.mu.Unlock()
	return x, nil
}

// attach issues one key per role for an existing tenant (created with
// `twofactord tenant create`, or by an earlier run of the UI).
func (t *tenants) attach(ctx context.Context, id string) (*tenant, error) {
	if x := t.get(id); x != nil {
		return x, nil
	}
	x := &tenant{id: id, name: id, keys: map[string]string{}}
	for _, role := range []string{"app", "admin", "superadmin", "auditor"} {
		var k issuedKey
		err := t.api.do(ctx, caller{token: t.operatorKey}, http.MethodPost, "/v1/operator/tenants/"+pathEscape(id)+"/api-keys", nil,
			map[string]any{"role": role, "name": "reference web UI"}, "", &k)
		if err != nil {
			if p := asProblem(err); p != nil && p.Status == http.StatusNotFound {
				return nil, errors.New("no tenant has that id")
			}
			return nil, fmt.Errorf("issuing the %s key: %w", role, err)
		}
		x.keys[role] = k.Token
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if y := t.byID[id]; y != nil {
		return y, nil
	}
	t.byID[id] = x
	return x, nil
}
