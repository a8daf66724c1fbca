package notifier

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/eventstore"
)

func TestEveryKindRendersTextHTMLAndSMS(t *testing.T) {
	tmpl, err := parseTemplates()
	if err != nil {
		t.Fatal(err)
	}
	base := msgData{
		Issuer: `Evil <script>alert(1)</script> & Co`, Contact: `"help" <a href=x>`, When: "1 May 2026 at 10:00 UTC",
		Until: "1 May 2026 at 10:15 UTC", Destination: "email address", Remaining: 2,
		From: domain.MethodEmail, To: domain.MethodTOTP, FromName: methodName(domain.MethodEmail), ToName: methodName(domain.MethodTOTP),
	}
	for _, k := range Kinds() {
		d := base
		if k.isCode() {
			d.Code, d.Lifetime = "123456", "10 minutes"
		}
		r, err := tmpl.render(k, d)
		if err != nil {
			t.Fatalf("%s: %v", k, err)
		}
		if r.subject == "" || r.text == "" || r.html == "" || r.sms == "" {
			t.Fatalf("%s: empty part %+v", k, r)
		}
		if strings.Contains(r.html, "<script>") || strings.Contains(r.html, "<a href") {
			t.Errorf("%s: tenant text reached the HTML unescaped", k)
		}
		if !strings.Contains(r.html, "&lt;script&gt;") {
			t.Errorf("%s: the issuer is missing from the HTML", k)
		}
		if strings.Contains(r.html, "href") && !strings.Contains(r.html, "&lt;a href=x&gt;") {
			t.Errorf("%s: the HTML has a link", k)
		}
		if strings.ContainsAny(r.subject, "\r\n") {
			t.Errorf("%s: multi-line subject", k)
		}
		if k.isCode() {
			for _, part := range []string{r.text, r.html, r.sms} {
				if !strings.Contains(part, "123456") || !strings.Contains(part, "10 minutes") {
					t.Errorf("%s: a part lacks the code or its lifetime: %q", k, part)
				}
			}
			if !strings.Contains(r.text, " is 123456.") {
				t.Errorf("%s: text %q", k, r.text)
			}
		} else if strings.Contains(r.text+r.html+r.sms, "123456") {
			t.Errorf("%s: a code in a message that has none", k)
		}
		if len(r.sms) > 320 {
			t.Errorf("%s: SMS of %d characters", k, len(r.sms))
		}
	}
	// The last login code before the app is set up says what comes next, in
	// every part; any other login code does not.
	d := base
	d.Code, d.Lifetime, d.SetupApp = "123456", "10 minutes", true
	r, err := tmpl.render(KindOTPCode, d)
	if err != nil {
		t.Fatal(err)
	}
	for _, part := range []string{r.text, r.html, r.sms} {
		if !strings.Contains(part, "set up") || !strings.Contains(part, "authenticator app") {
			t.Errorf("login code before the app set-up: %q", part)
		}
	}
	if len(r.sms) > 320 {
		t.Errorf("SMS of %d characters", len(r.sms))
	}
	d.SetupApp = false
	if r, _ = tmpl.render(KindOTPCode, d); strings.Contains(r.text+r.sms, "authenticator app") || strings.Contains(r.text, "\n\n\n") {
		t.Errorf("a plain login code mentions the app, or has an empty paragraph: %q", r.text)
	}
	// A code message without its code is refused rather than sent.
	if _, err := tmpl.render(KindOTPCode, base); err == nil {
		t.Error("a code message rendered without a code")
	}
}

func TestFormatLifetime(t *testing.T) {
	for d, want := range map[time.Duration]string{
		10 * time.Minute: "10 minutes", time.Minute: "1 minute", time.Hour: "1 hour",
		90 * time.Second: "2 minutes", 45 * time.Second: "45 seconds",
	} {
		if got := formatLifetime(d); got != want {
			t.Errorf("formatLifetime(%v) = %q, want %q", d, got, want)
		}
	}
}

func TestRedact(t *testing.T) {
	got := redact("550 5.1.1 <bob@example.com>: no such user; code 123456 for +14155550123 (x-secret)", []string{"x-secret"})
	for _, leak := range []string{"bob@example.com", "123456", "4155550123", "x-secret"} {
		if strings.Contains(got, leak) {
			t.Errorf("redact left %q in %q", leak, got)
		}
	}
	if !strings.Contains(got, "550 5.1.1") {
		t.Errorf("redact removed the reply code: %q", got)
	}
}

func TestBackoffGrowsWithJitterUpToTheCap(t *testing.T) {
	n := &Notifier{cfg: Config{BackoffBase: time.Second, BackoffMax: 10 * time.Second}}
	for attempt, full := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 4: 8 * time.Second, 5: 10 * time.Second, 40: 10 * time.Second} {
		for range 50 {
			if d := n.backoff(attempt); d < full/2 || d > full {
				t.Fatalf("backoff(%d) = %v, want within [%v, %v]", attempt, d, full/2, full)
			}
		}
	}
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	c := DefaultConfig()
	c.Lease = c.SendTimeout
	if c.Validate() == nil {
		t.Error("a lease no longer than a send was accepted")
	}
	c = DefaultConfig()
	c.DefaultFrom = "Name <a@b>"
	if c.Validate() == nil {
		t.Error("a display-name sender was accepted")
	}
}

// records builds a stream; events listed in one inner slice share a transaction.
func records(commands ...[]domain.Event) []*eventstore.Record {
	var out []*eventstore.Record
	at := time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)
	for tx, events := range commands {
		for _, e := range events {
			out = append(out, &eventstore.Record{
				EventID: "e" + string(rune('a'+len(out))), Version: int64(len(out) + 1), TransactionID: uint64(tx + 1),
				Type: e.EventType(), Event: e, RecordedAt: at,
			})
		}
	}
	return out
}

func consumed(remaining, threshold int) *domain.BackupCodeConsumed {
	return &domain.BackupCodeConsumed{Remaining: remaining, LowThreshold: threshold}
}

func TestConsumptionNotices(t *testing.T) {
	set := []domain.Event{&domain.BackupCodesGenerated{Reason: domain.BackupReasonEnabled}}
	stream := records(set,
		[]domain.Event{consumed(4, 2)}, []domain.Event{consumed(3, 2)}, []domain.Event{consumed(2, 2)},
		[]domain.Event{consumed(1, 2)}, []domain.Event{consumed(0, 2)},
		[]domain.Event{&domain.BackupCodesRegenerated{}},
		// The tenant raised the threshold mid-set: the first consumption at or below it warns.
		[]domain.Event{consumed(4, 2)}, []domain.Event{consumed(3, 5)}, []domain.Event{consumed(2, 5)},
		// A recovery-code policy switched 2FA off in the same command: "disabled"
		// alone tells it, above the threshold and at it.
		set, []domain.Event{consumed(9, 2), &domain.TwoFactorDisabled{Reason: domain.DisabledByRecoveryCode}},
		set, []domain.Event{consumed(2, 2), &domain.TwoFactorDisabled{Reason: domain.DisabledByRecoveryCode}},
	)
	got := map[int64][]Kind{}
	for _, r := range stream {
		if _, ok := r.Event.(*domain.BackupCodeConsumed); ok {
			got[r.Version] = consumptionNotices(stream, r.EventID)
		}
	}
	used, low := []Kind{KindBackupCodeUsed}, []Kind{KindBackupCodeUsed, KindBackupCodesLow}
	want := map[int64][]Kind{2: used, 3: used, 4: low, 5: used, 6: used, 8: used, 9: low, 10: used, 12: nil, 15: nil}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("notices by version = %v, want %v", got, want)
	}
}

func TestChangeMessagesGoToTheAddressBeforeTheChange(t *testing.T) {
	stream := records(
		[]domain.Event{&domain.OTPMethodSetupStarted{Method: domain.MethodSMS, SealedDestination: "phone", SealedCode: "c1"}},
		[]domain.Event{&domain.OTPMethodConfirmed{Method: domain.MethodSMS}, &domain.BackupCodesGenerated{}, &domain.TwoFactorEnabled{Method: domain.MethodSMS}},
		// Switched to email at a new address: the phone hears of it.
		[]domain.Event{&domain.MethodSwitched{From: domain.MethodSMS, To: domain.MethodEmail, SealedDestination: "new-mail"}},
		[]domain.Event{&domain.OTPChallengeIssued{Method: domain.MethodEmail, SealedDestination: "new-mail", SealedCode: "c2"}},
		[]domain.Event{&domain.TwoFactorDisabled{Reason: domain.DisabledByUser}},
	)
	cases := []struct {
		at      int
		kind    Kind
		channel Channel
		sealed  string
	}{
		{0, KindSetupCode, ChannelSMS, "phone"},
		{3, KindEnabled, ChannelSMS, "phone"},
		{4, KindMethodSwitched, ChannelSMS, "phone"},
		{5, KindOTPCode, ChannelEmail, "new-mail"},
		{6, KindDisabled, ChannelEmail, "new-mail"},
	}
	for _, c := range cases {
		got, ok := resolveTarget(c.kind, "t", "u", stream, c.at)
		if !ok || got.channel != c.channel || got.sealed != c.sealed {
			t.Errorf("%s at %d: %+v %v, want %s %s", c.kind, c.at, got, ok, c.channel, c.sealed)
		}
	}
	// An app-only user has nowhere to be told.
	appOnly := records([]domain.Event{&domain.TOTPEnrollmentStarted{SealedSecret: "s"}},
		[]domain.Event{&domain.TOTPEnrollmentConfirmed{}, &domain.BackupCodesGenerated{}, &domain.TwoFactorEnabled{Method: domain.MethodTOTP}})
	if got, ok := resolveTarget(KindEnabled, "t", "u", appOnly, 3); ok {
		t.Errorf("an app-only user got a target %+v", got)
	}
}

func TestUserOfStream(t *testing.T) {
	if u, ok := userOfStream("t1", eventstore.UserStream("t1", "a:b")); !ok || u != "a:b" {
		t.Errorf("userOfStream = %q, %v", u, ok)
	}
	if _, ok := userOfStream("t1", eventstore.TenantStream("t1")); ok {
		t.Error("a tenant stream was taken for a user stream")
	}
	if _, ok := userOfStream("t1", eventstore.UserStream("t2", "u")); ok {
		t.Error("another tenant's stream was accepted")
	}
}

// Every event type outside notifyingTypes calls for no notification, whatever
// its flags say: handleMessage skips those without decoding them, so a case
// added to reactions for another type must add the type to notifyingTypes.
func TestOnlyNotifyingTypesNotify(t *testing.T) {
	n := &Notifier{}
	for _, e := range domain.AllEvents() {
		if notifyingTypes[e.EventType()] {
			continue
		}
		for _, fill := range []bool{false, true} {
			if fill {
				v := reflect.ValueOf(e).Elem()
				for i := 0; i < v.NumField(); i++ {
					switch f := v.Field(i); f.Kind() {
					case reflect.Bool:
						f.SetBool(true)
					case reflect.String:
						f.SetString("x")
					}
				}
			}
			kinds, err := n.reactions(t.Context(), &eventstore.Record{Event: e, Type: e.EventType()})
			if err != nil || len(kinds) != 0 {
				t.Errorf("%s (flags set: %v) calls for %v, %v: add it to notifyingTypes", e.EventType(), fill, kinds, err)
			}
		}
	}
	for typ := range notifyingTypes {
		if _, ok := domain.NewEvent(typ); !ok {
			t.Errorf("notifyingTypes names %q, which is no event type", typ)
		}
	}
}
