package notifier_test

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message/router/middleware"

	"github.com/twofactor/twofactor/commands"
	"github.com/twofactor/twofactor/domain"
)

// wrong returns a code that is not the given one.
func wrong(code string) string {
	n, _ := strconv.Atoi(code)
	return fmt.Sprintf("%06d", (n+500_000)%1_000_000)
}

func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func mustFail(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		t.Fatal("the command succeeded; it should have failed")
	}
}

// TestJourneyProducesExactlyTheExpectedMessages drives real users through the
// real commands while a worker runs (its watermill handler sees every event
// twice: watermill's Duplicator), reads each one-time code out of the message
// that carried it, and checks every message that arrived: recipient, sender,
// subject, content, and that nothing else was sent.
func TestJourneyProducesExactlyTheExpectedMessages(t *testing.T) { journey(t, newEnv(t)) }

// journey is the test above in e (also run on NATS JetStream, nats_test.go).
func journey(t *testing.T, e *env) {
	policyA := domain.DefaultPolicy()
	policyA.IssuerName = "Acme Panel"
	policyA.SupportContact = "security@acme.test"
	policyA.MailFrom = "no-reply@acme.test"
	policyA.BackupCodeCount = 5
	policyA.LowBackupCodesWarn = 2
	a := e.tenant(policyA)
	policyB := domain.DefaultPolicy()
	policyB.RecoveryCodeDisables = true
	b := e.tenant(policyB)

	e.startWorker(testConfig(), middleware.Duplicator)
	var secretsSeen []string // TOTP secrets and backup codes: never in a message or a log

	// erin: an enrolment that fails once and then expires: no message at all.
	erin := must[commands.TOTPEnrollment](t)(e.svc.StartTOTPEnrollment(ctx, as("erin"), commands.StartTOTPEnrollment{TenantID: a, UserID: "erin"}))
	secretsSeen = append(secretsSeen, erin.Secret)
	_, err := e.svc.ConfirmTOTPEnrollment(ctx, as("erin"), commands.ConfirmTOTPEnrollment{TenantID: a, UserID: "erin", Code: wrong(e.codeAt(erin.Secret, 0))})
	mustFail(t, err)
	e.clock.Advance(16 * time.Minute)
	_, err = e.svc.ConfirmTOTPEnrollment(ctx, as("erin"), commands.ConfirmTOTPEnrollment{TenantID: a, UserID: "erin", Code: e.codeAt(erin.Secret, 0)})
	mustFail(t, err)

	// alice: email codes, backup codes down to none, then switched by an admin to the app.
	alice := "alice@example.com"
	must[commands.CodeSent](t)(e.svc.StartOTPMethodSetup(ctx, as("alice"), commands.StartOTPMethodSetup{TenantID: a, UserID: "alice", Method: domain.MethodEmail, Destination: alice}))
	act := must[commands.Activation](t)(e.svc.ConfirmOTPMethod(ctx, as("alice"), commands.ConfirmOTPMethod{TenantID: a, UserID: "alice", Method: domain.MethodEmail, Code: e.mailCode(alice, "setup_code", 1)}))
	secretsSeen = append(secretsSeen, act.BackupCodes...)
	must[commands.Challenge](t)(e.svc.StartLoginChallenge(ctx, as("alice"), commands.StartLoginChallenge{TenantID: a, UserID: "alice"}))
	must[commands.Verification](t)(e.svc.VerifyOTP(ctx, as("alice"), commands.VerifyOTP{TenantID: a, UserID: "alice", Method: domain.MethodEmail, Code: e.mailCode(alice, "otp_code", 1)}))
	regen := must[commands.Activation](t)(e.svc.RegenerateBackupCodes(ctx, as("alice"), commands.RegenerateBackupCodes{TenantID: a, UserID: "alice"}))
	secretsSeen = append(secretsSeen, regen.BackupCodes...)
	for _, c := range regen.BackupCodes {
		must[commands.Verification](t)(e.svc.ConsumeBackupCode(ctx, as("alice"), commands.ConsumeBackupCode{TenantID: a, UserID: "alice", Code: c}))
	}
	must[commands.Result](t)(e.svc.SwitchMethod(ctx, admin, commands.SwitchMethod{TenantID: a, UserID: "alice", To: domain.MethodTOTP}))
	must[commands.Challenge](t)(e.svc.StartLoginChallenge(ctx, as("alice"), commands.StartLoginChallenge{TenantID: a, UserID: "alice"}))
	must[commands.Verification](t)(e.svc.VerifyOTP(ctx, as("alice"), commands.VerifyOTP{TenantID: a, UserID: "alice", Method: domain.MethodEmail, Code: e.mailCode(alice, "otp_code", 2)}))
	app := must[commands.TOTPEnrollment](t)(e.svc.StartTOTPEnrollment(ctx, as("alice"), commands.StartTOTPEnrollment{TenantID: a, UserID: "alice", AccountName: alice}))
	secretsSeen = append(secretsSeen, app.Secret)
	act = must[commands.Activation](t)(e.svc.ConfirmTOTPEnrollment(ctx, as("alice"), commands.ConfirmTOTPEnrollment{TenantID: a, UserID: "alice", Code: e.codeAt(app.Secret, 0)}))
	secretsSeen = append(secretsSeen, act.BackupCodes...)

	// bob: the app only (no address: "enabled" cannot be sent), then switched by an
	// admin to email codes at a new address, which is told.
	bob := "bob@example.com"
	bobApp := must[commands.TOTPEnrollment](t)(e.svc.StartTOTPEnrollment(ctx, as("bob"), commands.StartTOTPEnrollment{TenantID: a, UserID: "bob"}))
	secretsSeen = append(secretsSeen, bobApp.Secret)
	act = must[commands.Activation](t)(e.svc.ConfirmTOTPEnrollment(ctx, as("bob"), commands.ConfirmTOTPEnrollment{TenantID: a, UserID: "bob", Code: e.codeAt(bobApp.Secret, 0)}))
	secretsSeen = append(secretsSeen, act.BackupCodes...)
	must[commands.Result](t)(e.svc.SwitchMethod(ctx, admin, commands.SwitchMethod{TenantID: a, UserID: "bob", To: domain.MethodEmail, Destination: bob}))
	must[commands.Challenge](t)(e.svc.StartLoginChallenge(ctx, as("bob"), commands.StartLoginChallenge{TenantID: a, UserID: "bob"}))
	must[commands.Verification](t)(e.svc.VerifyOTP(ctx, as("bob"), commands.VerifyOTP{TenantID: a, UserID: "bob", Method: domain.MethodEmail, Code: e.mailCode(bob, "otp_code", 1)}))

	// dave: email, then an app, replaced; a replayed code; locked; disabled by an admin.
	dave := "dave@example.com"
	must[commands.CodeSent](t)(e.svc.StartOTPMethodSetup(ctx, as("dave"), commands.StartOTPMethodSetup{TenantID: a, UserID: "dave", Method: domain.MethodEmail, Destination: dave}))
	act = must[commands.Activation](t)(e.svc.ConfirmOTPMethod(ctx, as("dave"), commands.ConfirmOTPMethod{TenantID: a, UserID: "dave", Method: domain.MethodEmail, Code: e.mailCode(dave, "setup_code", 1)}))
	secretsSeen = append(secretsSeen, act.BackupCodes...)
	first := must[commands.TOTPEnrollment](t)(e.svc.StartTOTPEnrollment(ctx, as("dave"), commands.StartTOTPEnrollment{TenantID: a, UserID: "dave"}))
	must[commands.Activation](t)(e.svc.ConfirmTOTPEnrollment(ctx, as("dave"), commands.ConfirmTOTPEnrollment{TenantID: a, UserID: "dave", Code: e.codeAt(first.Secret, 0)}))
	e.clock.Advance(30 * time.Second)
	second := must[commands.TOTPEnrollment](t)(e.svc.StartTOTPEnrollment(ctx, as("dave"), commands.StartTOTPEnrollment{TenantID: a, UserID: "dave"}))
	secretsSeen = append(secretsSeen, first.Secret, second.Secret)
	code := e.codeAt(second.Secret, 0)
	act = must[commands.Activation](t)(e.svc.ConfirmTOTPEnrollment(ctx, as("dave"), commands.ConfirmTOTPEnrollment{TenantID: a, UserID: "dave", Code: code}))
	secretsSeen = append(secretsSeen, act.BackupCodes...)
	_, err = e.svc.VerifyTOTP(ctx, as("dave"), commands.VerifyTOTP{TenantID: a, UserID: "dave", Code: code}) // replayed
	mustFail(t, err)
	for range 4 {
		_, err = e.svc.VerifyTOTP(ctx, as("dave"), commands.VerifyTOTP{TenantID: a, UserID: "dave", Code: wrong(code)})
		mustFail(t, err)
	}
	must[commands.Result](t)(e.svc.UnlockTwoFactor(ctx, admin, commands.UnlockTwoFactor{TenantID: a, UserID: "dave"}))
	must[commands.Result](t)(e.svc.DisableTwoFactor(ctx, admin, commands.DisableTwoFactor{TenantID: a, UserID: "dave"}))

	// carol: a phone only, so every message is a text; reset by an admin.
	carol := "+15550100001"
	must[commands.CodeSent](t)(e.svc.StartOTPMethodSetup(ctx, as("carol"), commands.StartOTPMethodSetup{TenantID: a, UserID: "carol", Method: domain.MethodSMS, Destination: carol}))
	act = must[commands.Activation](t)(e.svc.ConfirmOTPMethod(ctx, as("carol"), commands.ConfirmOTPMethod{TenantID: a, UserID: "carol", Method: domain.MethodSMS, Code: e.sms.code(carol, "setup_code", 1)}))
	secretsSeen = append(secretsSeen, act.BackupCodes...)
	must[commands.Challenge](t)(e.svc.StartLoginChallenge(ctx, as("carol"), commands.StartLoginChallenge{TenantID: a, UserID: "carol"}))
	must[commands.Verification](t)(e.svc.VerifyOTP(ctx, as("carol"), commands.VerifyOTP{TenantID: a, UserID: "carol", Method: domain.MethodSMS, Code: e.sms.code(carol, "otp_code", 1)}))
	must[commands.Result](t)(e.svc.ResetTwoFactor(ctx, admin, commands.ResetTwoFactor{TenantID: a, UserID: "carol"}))

	// frank, in a tenant with default sender and no support contact, whose policy
	// switches 2FA off when a backup code is used.
	frank := "frank@example.org"
	must[commands.CodeSent](t)(e.svc.StartOTPMethodSetup(ctx, as("frank"), commands.StartOTPMethodSetup{TenantID: b, UserID: "frank", Method: domain.MethodEmail, Destination: frank}))
	act = must[commands.Activation](t)(e.svc.ConfirmOTPMethod(ctx, as("frank"), commands.ConfirmOTPMethod{TenantID: b, UserID: "frank", Method: domain.MethodEmail, Code: e.mailCode(frank, "setup_code", 1)}))
	secretsSeen = append(secretsSeen, act.BackupCodes...)
	must[commands.Verification](t)(e.svc.ConsumeBackupCode(ctx, as("frank"), commands.ConsumeBackupCode{TenantID: b, UserID: "frank", Code: act.BackupCodes[0]}))

	e.waitIdle(30 * time.Second)
	time.Sleep(200 * time.Millisecond) // anything extra would have arrived by now
	e.waitIdle(5 * time.Second)

	// Exactly these emails, to exactly these addresses.
	type want struct{ to, kind, subject string }
	wantMail := []want{
		{alice, "setup_code", "Confirm your email address for Acme Panel"},
		{alice, "enabled", "Two-factor authentication is on"},
		{alice, "otp_code", "Your Acme Panel sign-in code"},
		{alice, "otp_code", "Your Acme Panel sign-in code"},
		{alice, "backup_codes_regenerated", "New backup codes were generated"},
		{alice, "backup_code_used", "A backup code was used to sign in"},
		{alice, "backup_code_used", "A backup code was used to sign in"},
		{alice, "backup_code_used", "A backup code was used to sign in"},
		{alice, "backup_code_used", "A backup code was used to sign in"},
		{alice, "backup_code_used", "A backup code was used to sign in"},
		{alice, "backup_codes_low", "Only 2 backup codes left"},
		{alice, "method_switched", "Your sign-in method was changed"},
		{alice, "app_set_up", "Your authenticator app is set up"},
		{bob, "method_switched", "Your sign-in method was changed"},
		{bob, "otp_code", "Your Acme Panel sign-in code"},
		{dave, "setup_code", "Confirm your email address for Acme Panel"},
		{dave, "enabled", "Two-factor authentication is on"},
		{dave, "authenticator_replaced", "A new authenticator app was set up"},
		{dave, "code_replayed", "An authenticator code was used twice"},
		{dave, "locked", "Sign-in verification is locked"},
		{dave, "disabled", "Two-factor authentication is off"},
		{frank, "setup_code", "Confirm your email address for twofactor"},
		{frank, "enabled", "Two-factor authentication is on"},
		// One event decides both: 2FA is off and the codes are void, so "a code
		// was used, 9 left" is not sent.
		{frank, "disabled", "Two-factor authentication is off"},
	}
	msgs := e.smtp.messages()
	var got, expected []string
	for _, m := range msgs {
		got = append(got, strings.Join(m.To, ",")+" "+kindOf(m.MessageID)+" "+m.Subject)
	}
	for _, w := range wantMail {
		expected = append(expected, w.to+" "+w.kind+" "+w.subject)
	}
	sort.Strings(got)
	sort.Strings(expected)
	if strings.Join(got, "\n") != strings.Join(expected, "\n") {
		t.Fatalf("emails received:\n%s\n\nwant:\n%s", strings.Join(got, "\n"), strings.Join(expected, "\n"))
	}

	// Content.
	one := func(to, kind string) received {
		t.Helper()
		ms := mailsTo(msgs, to, kind)
		if len(ms) != 1 {
			t.Fatalf("%d %s messages to %s", len(ms), kind, to)
		}
		return ms[0]
	}
	contains := func(m received, parts ...string) {
		t.Helper()
		for _, p := range parts {
			if !strings.Contains(m.Text, p) {
				t.Errorf("%s to %v: text lacks %q:\n%s", kindOf(m.MessageID), m.To, p, m.Text)
			}
		}
	}
	ids := map[string]bool{}
	for _, m := range msgs {
		tenantA := m.To[0] != frank
		from := m.Header.Get("From")
		switch {
		case tenantA && (!strings.Contains(from, "<no-reply@acme.test>") || !strings.Contains(from, "Acme Panel")):
			t.Errorf("sender %q, want Acme Panel <no-reply@acme.test>", from)
		case !tenantA && !strings.Contains(from, "<twofactor@service.test>"):
			t.Errorf("sender %q, want the service default", from)
		}
		if m.From != "no-reply@acme.test" && m.From != "twofactor@service.test" {
			t.Errorf("envelope sender %q", m.From)
		}
		support := "security@acme.test"
		if !tenantA {
			support = "your administrator"
		}
		contains(m, "contact "+support)
		if !strings.Contains(m.HTML, "<!DOCTYPE html>") || !strings.Contains(m.HTML, htmlEscape(m.Subject)) {
			t.Errorf("%s: HTML part missing or without its subject", m.MessageID)
		}
		raw := strings.ToLower(string(m.Raw))
		for _, link := range []string{"http://", "https://", "href", "www."} {
			if strings.Contains(raw, link) {
				t.Errorf("%s contains %q: no message carries a link", m.MessageID, link)
			}
		}
		for _, s := range secretsSeen {
			if strings.Contains(string(m.Raw), s) || strings.Contains(m.Text, s) {
				t.Errorf("%s contains a secret or backup code", m.MessageID)
			}
		}
		if ids[m.MessageID] {
			t.Errorf("message %s arrived twice", m.MessageID)
		}
		ids[m.MessageID] = true
		if m.Header.Get("Auto-Submitted") != "auto-generated" {
			t.Errorf("%s: no Auto-Submitted header", m.MessageID)
		}
	}
	for _, m := range mailsTo(msgs, "", "otp_code") {
		contains(m, "valid for 10 minutes", "works once", "Never share it")
		if !strings.Contains(m.HTML, mailCodeRE.FindStringSubmatch(m.Text)[1]) {
			t.Errorf("the HTML part of %s lacks its code", m.MessageID)
		}
	}
	contains(one(alice, "setup_code"), "Your confirmation code is ", "valid for 10 minutes")
	contains(one(alice, "enabled"), "switched on for your Acme Panel account", "with codes by email")
	contains(one(alice, "backup_codes_regenerated"), "previous backup codes no longer work")
	var remaining []string
	for _, m := range mailsTo(msgs, alice, "backup_code_used") {
		remaining = append(remaining, m.Text[strings.Index(m.Text, "Each code works once; ")+len("Each code works once; "):][:1])
	}
	sort.Strings(remaining)
	if strings.Join(remaining, ",") != "0,1,2,3,4" {
		t.Errorf("backup code messages say %v codes remain, want 4,3,2,1,0", remaining)
	}
	contains(one(alice, "backup_codes_low"), "Only 2 unused backup codes remain", "generate a new set")
	contains(one(alice, "method_switched"), "An administrator switched", "from codes by email to an authenticator app",
		"What to do next: at your next sign-in", "QR code", "new backup codes")
	contains(one(alice, "app_set_up"), "old backup codes are void")
	contains(one(bob, "method_switched"), "from an authenticator app to codes by email", "no longer needed")
	contains(one(dave, "authenticator_replaced"), "no longer works", "old backup codes are void")
	contains(one(dave, "code_replayed"), "already been used")
	contains(one(dave, "locked"), "locked until")
	contains(one(dave, "disabled"), "An administrator switched two-factor authentication off", "backup codes are void")
	contains(one(frank, "disabled"), "A backup code was used to sign in", "switched two-factor authentication off",
		"set it up again at your next sign-in", "QR code", "new backup codes", "backup codes are void")
	// The login code after the switch to the app says that the app is set up next.
	aliceCodes := mailsTo(msgs, alice, "otp_code")
	sort.Slice(aliceCodes, func(i, j int) bool { return aliceCodes[i].At.Before(aliceCodes[j].At) })
	if strings.Contains(aliceCodes[0].Text, "authenticator app") {
		t.Errorf("the login code before the switch mentions the app:\n%s", aliceCodes[0].Text)
	}
	contains(aliceCodes[1], "switched to an authenticator app", "set up the app", "QR code", "new backup codes")

	// Exactly these texts, through the generic HTTP provider.
	var sms []string
	for _, m := range e.sms.messages() {
		sms = append(sms, m.To+" "+kindOf(m.ID))
		if m.Auth != "Bearer sms-token" || m.Idempotency != m.ID || m.From != "Acme" {
			t.Errorf("SMS request: auth %q, idempotency %q (id %q), from %q", m.Auth, m.Idempotency, m.ID, m.From)
		}
		if !strings.HasPrefix(m.Body, "Acme Panel") || strings.Contains(m.Body, "http") || strings.ContainsAny(m.Body, "\n\r") {
			t.Errorf("SMS body %q", m.Body)
		}
		if kindOf(m.ID) == "reset" && !strings.Contains(m.Body, "reset your two-factor authentication") {
			t.Errorf("reset SMS %q", m.Body)
		}
		if kindOf(m.ID) == "otp_code" && !strings.Contains(m.Body, "Valid 10 minutes") {
			t.Errorf("code SMS %q", m.Body)
		}
	}
	sort.Strings(sms)
	if want := []string{carol + " enabled", carol + " otp_code", carol + " reset", carol + " setup_code"}; strings.Join(sms, ",") != strings.Join(want, ",") {
		t.Fatalf("SMS received %v, want %v", sms, want)
	}

	// The ledger: every row sent once, except bob's confirmation, which had no address.
	skipped := 0
	for _, r := range e.ledger() {
		switch {
		case r.Status == "skipped":
			skipped++
			if r.Kind != "enabled" || r.LastError != "no registered email address or phone number" {
				t.Errorf("skipped %+v", r)
			}
		case r.Status != "sent" || r.Attempts != 1:
			t.Errorf("ledger row %+v", r)
		}
	}
	if skipped != 1 {
		t.Errorf("%d skipped notifications, want 1 (bob's confirmation)", skipped)
	}

	// No secret, code, address or number in the logs.
	logs := e.logs.String()
	if path := os.Getenv("NOTIFIER_TEST_DUMP_LOGS"); path != "" {
		_ = os.WriteFile(path, []byte(logs), 0o600)
	}
	if !strings.Contains(logs, `"msg":"notification sent"`) {
		t.Fatalf("the log capture saw no delivery:\n%s", logs)
	}
	var codes []string
	for _, m := range msgs {
		if c := mailCodeRE.FindStringSubmatch(m.Text); c != nil {
			codes = append(codes, c[1])
		}
	}
	for _, m := range e.sms.messages() {
		if c := smsCodeRE.FindStringSubmatch(m.Body); c != nil {
			codes = append(codes, c[1])
		}
	}
	if len(codes) != 8 {
		t.Fatalf("%d codes delivered, want 8", len(codes))
	}
	for _, s := range append(append(codes, secretsSeen...), alice, bob, dave, frank, carol) {
		if logContains(logs, s) {
			t.Errorf("the logs contain %q", s)
		}
	}
	for _, s := range []string{"sign-in code is", "confirmation code is", "backup code was used"} {
		if strings.Contains(logs, s) {
			t.Errorf("the logs contain message content %q", s)
		}
	}
}

func htmlEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&#34;", "'", "&#39;").Replace(s)
}
