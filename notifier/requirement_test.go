package notifier_test

import (
	"strings"
	"testing"
	"time"

	"github.com/twofactor/twofactor/commands"
	"github.com/twofactor/twofactor/domain"
)

// A user who waives "use 2FA" for themself is told so once: at the enrolment
// prompt by its own message; with a disable, by the disable's message alone.
func TestAUsersWaiverIsToldOnce(t *testing.T) {
	e := newEnv(t)
	a := e.tenant(domain.DefaultPolicy())
	e.startWorker(testConfig())

	// gil never enrolled; an app-only user would have no address, so gil has a contact address.
	gil := "gil@example.com"
	must[commands.Result](t)(e.svc.RequireTwoFactor(ctx, admin, commands.RequireTwoFactor{TenantID: a, UserID: "gil", Required: true}))
	must[commands.Result](t)(e.svc.SetContactAddress(ctx, as("gil"), commands.SetContactAddress{TenantID: a, UserID: "gil", Method: domain.MethodEmail, Address: gil}))
	must[commands.Result](t)(e.svc.DisableTwoFactor(ctx, as("gil"), commands.DisableTwoFactor{TenantID: a, UserID: "gil"}))

	// hal enrolled while required, then switches 2FA off (fresh from the confirmation).
	hal := "hal@example.com"
	must[commands.Result](t)(e.svc.RequireTwoFactor(ctx, admin, commands.RequireTwoFactor{TenantID: a, UserID: "hal", Required: true}))
	e.setup(a, "hal", hal)
	must[commands.Activation](t)(e.svc.ConfirmOTPMethod(ctx, as("hal"), commands.ConfirmOTPMethod{TenantID: a, UserID: "hal", Method: domain.MethodEmail, Code: e.mailCode(hal, "setup_code", 1)}))
	must[commands.Result](t)(e.svc.DisableTwoFactor(ctx, as("hal"), commands.DisableTwoFactor{TenantID: a, UserID: "hal"}))

	e.waitIdle(30 * time.Second)
	time.Sleep(200 * time.Millisecond) // anything extra would have arrived by now
	e.waitIdle(5 * time.Second)

	msgs := e.smtp.messages()
	var got []string
	for _, m := range msgs {
		got = append(got, strings.Join(m.To, ",")+" "+kindOf(m.MessageID))
	}
	want := []string{gil + " requirement_waived", hal + " setup_code", hal + " enabled", hal + " disabled"}
	if len(got) != len(want) {
		t.Fatalf("messages %v, want %v", got, want)
	}
	for _, w := range want {
		if !strings.Contains(strings.Join(got, "\n"), w) {
			t.Fatalf("messages %v, want %v", got, want)
		}
	}
	m := mailsTo(msgs, gil, "requirement_waived")[0]
	for _, part := range []string{"you chose to sign in to your twofactor account without two-factor authentication", "password alone", "contact your administrator"} {
		if !strings.Contains(m.Text, part) {
			t.Errorf("text lacks %q:\n%s", part, m.Text)
		}
	}
	if m.Subject != "You chose to sign in without two-factor authentication" {
		t.Errorf("subject %q", m.Subject)
	}
}
