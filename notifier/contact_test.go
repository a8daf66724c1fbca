package notifier_test

import (
	"strings"
	"testing"
	"time"

	"github.com/twofactor/twofactor/commands"
	"github.com/twofactor/twofactor/domain"
)

// An app-only user is told through the contact address the host product registered.
func TestAppOnlyUserIsToldThroughTheContactAddress(t *testing.T) {
	e := newEnv(t)
	tenant := e.tenant(domain.DefaultPolicy())
	e.startWorker(testConfig())
	gina := "gina@example.com"
	must[commands.Result](t)(e.svc.SetContactAddress(ctx, as("gina"), commands.SetContactAddress{TenantID: tenant, UserID: "gina", Method: domain.MethodEmail, Address: gina}))
	app := must[commands.TOTPEnrollment](t)(e.svc.StartTOTPEnrollment(ctx, as("gina"), commands.StartTOTPEnrollment{TenantID: tenant, UserID: "gina"}))
	must[commands.Activation](t)(e.svc.ConfirmTOTPEnrollment(ctx, as("gina"), commands.ConfirmTOTPEnrollment{TenantID: tenant, UserID: "gina", Code: e.codeAt(app.Secret, 0)}))
	e.clock.Advance(30 * time.Second)
	must[commands.Result](t)(e.svc.ResetTwoFactor(ctx, admin, commands.ResetTwoFactor{TenantID: tenant, UserID: "gina"}))

	msgs := e.smtp.wait(30*time.Second, "enabled and reset to "+gina, func(msgs []received) bool { return len(mailsTo(msgs, gina, "")) >= 2 })
	e.waitIdle(10 * time.Second)
	all := e.smtp.messages()
	if len(mailsTo(all, gina, "")) != 2 || len(mailsTo(all, gina, "enabled")) != 1 || len(mailsTo(all, gina, "reset")) != 1 {
		t.Fatalf("%d messages to the contact address, want enabled and reset once each", len(mailsTo(all, gina, "")))
	}
	for _, m := range msgs {
		if strings.Contains(m.Text, app.Secret) {
			t.Fatal("a message carries the TOTP secret")
		}
	}
}
