package commands

import (
	"context"
	"errors"

	"github.com/google/uuid"

	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/eventstore"
)

// CreateTenant opens a tenant with a policy (the defaults when nil).
type CreateTenant struct {
	Name   string
	Policy *domain.Policy
}

// TenantCreated reports the new tenant's id.
type TenantCreated struct {
	Result
	TenantID string `json:"tenant_id"`
}

func (s *Service) CreateTenant(ctx context.Context, meta Meta, cmd CreateTenant) (TenantCreated, error) {
	if err := meta.validate(); err != nil {
		return TenantCreated{}, err
	}
	var raw [16]byte
	if err := s.readRandom(raw[:]); err != nil {
		return TenantCreated{}, err
	}
	id, err := uuid.FromBytes(raw[:])
	if err != nil {
		return TenantCreated{}, err
	}
	// Version 4 bits, so the id reads as an ordinary random UUID.
	id[6] = (id[6] & 0x0f) | 0x40
	id[8] = (id[8] & 0x3f) | 0x80
	policy := domain.DefaultPolicy()
	if cmd.Policy != nil {
		policy = *cmd.Policy
	}
	t := domain.NewTenantPolicy(id.String())
	events, err := t.Create(meta.Actor, cmd.Name, policy)
	if err == nil {
		err = checkEvents(events)
	}
	if err != nil {
		return TenantCreated{}, err
	}
	now := s.clock()
	appended, err := s.store.Append(ctx, t.TenantID(), eventstore.TenantStream(t.TenantID()), 0, events, meta.metadata(now))
	if err != nil {
		return TenantCreated{}, err
	}
	return TenantCreated{Result: resultOf(appended), TenantID: t.TenantID()}, nil
}

// ChangeTenantPolicy replaces a tenant's policy.
type ChangeTenantPolicy struct {
	TenantID string
	Policy   domain.Policy
}

func (s *Service) ChangeTenantPolicy(ctx context.Context, meta Meta, cmd ChangeTenantPolicy) (Result, error) {
	if err := meta.validate(); err != nil {
		return Result{}, err
	}
	if err := domain.ValidateIdentifier("tenant id", cmd.TenantID); err != nil {
		return Result{}, err
	}
	for attempt := 0; attempt < s.retries; attempt++ {
		t, err := s.loadTenant(ctx, cmd.TenantID)
		if err != nil {
			return Result{}, err
		}
		events, err := t.ChangePolicy(meta.Actor, cmd.Policy)
		if err == nil {
			err = checkEvents(events)
		}
		if err != nil {
			return Result{}, err
		}
		appended, err := s.store.Append(ctx, cmd.TenantID, eventstore.TenantStream(cmd.TenantID), t.Version(), events, meta.metadata(s.clock()))
		if errors.Is(err, eventstore.ErrConcurrency) {
			s.retrying(ctx, attempt)
			continue
		}
		if err != nil {
			return Result{}, err
		}
		return resultOf(appended), nil
	}
	return Result{}, domain.Conflict(domain.CodeConcurrentChange, "the policy changed concurrently; retry")
}

// TenantPolicy returns a tenant's current policy.
func (s *Service) TenantPolicy(ctx context.Context, tenantID string) (domain.Policy, error) {
	if err := domain.ValidateIdentifier("tenant id", tenantID); err != nil {
		return domain.Policy{}, err
	}
	return s.policy(ctx, tenantID)
}
