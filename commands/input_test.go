package commands_test

import (
	"context"
	"testing"

	"github.com/twofactor/twofactor/commands"
	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/internal/testkit"
)

func eventRows(t *testing.T, f *testkit.Fixture) int {
	t.Helper()
	var n int
	if err := f.Pool.QueryRow(context.Background(), `SELECT count(*) FROM events`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// A caller that bypasses HTTP still cannot append what PostgreSQL cannot store
// or no id may hold: every command refuses it with invalid_input, naming the
// field, and appends nothing.
func TestCommandsRefuseUnstorableInputAndAppendNothing(t *testing.T) {
	f := newFixture(t, nil)
	good := admin
	cases := []struct {
		name, field string
		run         func() error
	}{
		{"NUL in the reason", "reason", func() error {
			m := good
			m.Reason = "moved\x00"
			_, err := f.Svc.RequireTwoFactor(ctx, m, commands.RequireTwoFactor{TenantID: f.Tenant, UserID: "ann", Required: true})
			return err
		}},
		{"invalid UTF-8 in the reason", "reason", func() error {
			m := good
			m.Reason = "\xff"
			_, err := f.Svc.RequireTwoFactor(ctx, m, commands.RequireTwoFactor{TenantID: f.Tenant, UserID: "ann", Required: true})
			return err
		}},
		{"NUL in the request id", "request_id", func() error {
			m := good
			m.RequestID = "r\x00"
			_, err := f.Svc.RequireTwoFactor(ctx, m, commands.RequireTwoFactor{TenantID: f.Tenant, UserID: "ann", Required: true})
			return err
		}},
		{"control character in the correlation id", "correlation_id", func() error {
			m := good
			m.CorrelationID = "c\x1b"
			_, err := f.Svc.RequireTwoFactor(ctx, m, commands.RequireTwoFactor{TenantID: f.Tenant, UserID: "ann", Required: true})
			return err
		}},
		{"NUL in the causation id", "causation_id", func() error {
			m := good
			m.CausationID = "\x00"
			_, err := f.Svc.RequireTwoFactor(ctx, m, commands.RequireTwoFactor{TenantID: f.Tenant, UserID: "ann", Required: true})
			return err
		}},
		{"invalid UTF-8 in the key id", "key_id", func() error {
			m := good
			m.KeyID = "k\xfe"
			_, err := f.Svc.RequireTwoFactor(ctx, m, commands.RequireTwoFactor{TenantID: f.Tenant, UserID: "ann", Required: true})
			return err
		}},
		{"NUL in the actor id", "actor_id", func() error {
			m := good
			m.Actor.ID = "admin\x00"
			_, err := f.Svc.RequireTwoFactor(ctx, m, commands.RequireTwoFactor{TenantID: f.Tenant, UserID: "ann", Required: true})
			return err
		}},
		{"NUL in the user id", "user_id", func() error {
			_, err := f.Svc.RequireTwoFactor(ctx, good, commands.RequireTwoFactor{TenantID: f.Tenant, UserID: "ann\x00", Required: true})
			return err
		}},
		{"invalid UTF-8 in the tenant id", "tenant_id", func() error {
			_, err := f.Svc.RequireTwoFactor(ctx, good, commands.RequireTwoFactor{TenantID: f.Tenant + "\xff", UserID: "ann", Required: true})
			return err
		}},
		{"NUL in the issuer name", "issuer_name", func() error {
			p := domain.DefaultPolicy()
			p.IssuerName = "Acme\x00"
			_, err := f.Svc.ChangeTenantPolicy(ctx, good, commands.ChangeTenantPolicy{TenantID: f.Tenant, Policy: p})
			return err
		}},
		{"invalid UTF-8 in the support contact", "support_contact", func() error {
			p := domain.DefaultPolicy()
			p.SupportContact = "help\xc3"
			_, err := f.Svc.ChangeTenantPolicy(ctx, good, commands.ChangeTenantPolicy{TenantID: f.Tenant, Policy: p})
			return err
		}},
		{"NUL in the reason of a policy change", "reason", func() error {
			m := good
			m.Reason = "\x00"
			p := domain.DefaultPolicy()
			p.BackupCodeCount = 12
			_, err := f.Svc.ChangeTenantPolicy(ctx, m, commands.ChangeTenantPolicy{TenantID: f.Tenant, Policy: p})
			return err
		}},
		{"NUL in a tenant name", "name", func() error {
			_, err := f.Svc.CreateTenant(ctx, commands.Meta{Actor: system}, commands.CreateTenant{Name: "Evil\x00"})
			return err
		}},
		{"NUL in the reason of a new tenant", "reason", func() error {
			_, err := f.Svc.CreateTenant(ctx, commands.Meta{Actor: system, Reason: "\x00"}, commands.CreateTenant{Name: "Fine"})
			return err
		}},
		{"NUL in an account name", "account_name", func() error {
			_, err := f.Svc.StartTOTPEnrollment(ctx, as("ann"), commands.StartTOTPEnrollment{TenantID: f.Tenant, UserID: "ann", AccountName: "ann\x00@example.com"})
			return err
		}},
		{"invalid UTF-8 in an account name", "account_name", func() error {
			_, err := f.Svc.StartTOTPEnrollment(ctx, as("ann"), commands.StartTOTPEnrollment{TenantID: f.Tenant, UserID: "ann", AccountName: "\xff"})
			return err
		}},
		{"NUL in an email destination", "destination", func() error {
			_, err := f.Svc.StartOTPMethodSetup(ctx, as("ann"), commands.StartOTPMethodSetup{TenantID: f.Tenant, UserID: "ann", Method: domain.MethodEmail, Destination: "ann@example.com\x00"})
			return err
		}},
		{"control character in a phone number", "destination", func() error {
			_, err := f.Svc.StartOTPMethodSetup(ctx, as("ann"), commands.StartOTPMethodSetup{TenantID: f.Tenant, UserID: "ann", Method: domain.MethodSMS, Destination: "+14155550123\n"})
			return err
		}},
		{"NUL in a contact address", "address", func() error {
			_, err := f.Svc.SetContactAddress(ctx, as("ann"), commands.SetContactAddress{TenantID: f.Tenant, UserID: "ann", Method: domain.MethodEmail, Address: "\x00ann@example.com"})
			return err
		}},
		{"invalid UTF-8 in a switch destination", "destination", func() error {
			_, err := f.Svc.SwitchMethod(ctx, good, commands.SwitchMethod{TenantID: f.Tenant, UserID: "ann", To: domain.MethodEmail, Destination: "ann@ex\xffample.com"})
			return err
		}},
	}
	before := eventRows(t, f)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			de := wantErr(t, tc.run(), domain.KindInvalid, domain.CodeInvalidInput)
			if de.Field != tc.field {
				t.Errorf("field %q, want %q", de.Field, tc.field)
			}
		})
	}
	if after := eventRows(t, f); after != before {
		t.Fatalf("refused commands appended %d events", after-before)
	}
	// The same commands with clean input go through.
	if _, err := f.Svc.RequireTwoFactor(ctx, commands.Meta{Actor: good.Actor, Reason: "Zürich office – moved"}, commands.RequireTwoFactor{TenantID: f.Tenant, UserID: "ann", Required: true}); err != nil {
		t.Fatal(err)
	}
}
