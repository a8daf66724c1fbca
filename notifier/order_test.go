package notifier_test

import (
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twofactor/twofactor/commands"
	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/notifier"
)

var (
	usedRemainingRE = regexp.MustCompile(`Each code works once; ([0-9]+) unused`)
	lowRemainingRE  = regexp.MustCompile(`Only ([0-9]+) unused backup`)
)

// Twenty backup-code logins of one user, as fast as the commands take them, with
// two workers each sending up to four messages at once, and an SMTP server that
// turns every third message away (451) so that retries with backoff interleave
// with fresh sends: the user reads the remaining counts strictly decreasing, and
// the low-codes warning right after the login that caused it. On both buses.
func TestOneUsersNoticesArriveInTheOrderOfTheirEvents(t *testing.T) {
	for _, bus := range []string{"postgres", "nats"} {
		t.Run(bus, func(t *testing.T) {
			e := newEnv(t)
			if bus == "nats" {
				e.useNATS(true)
			}
			policy := domain.DefaultPolicy()
			policy.BackupCodeCount = 20
			tenant := e.tenant(policy)
			cfg := testConfig()
			cfg.Concurrency = 4
			e.startWorker(cfg)
			e.startWorker(cfg)

			const to = "olga@example.com"
			e.setup(tenant, "olga", to)
			act, err := e.svc.ConfirmOTPMethod(ctx, as("olga"), commands.ConfirmOTPMethod{TenantID: tenant, UserID: "olga",
				Method: domain.MethodEmail, Code: e.mailCode(to, "setup_code", 1)})
			if err != nil {
				t.Fatal(err)
			}
			e.smtp.wait(30*time.Second, "enabled", func(msgs []received) bool { return len(mailsTo(msgs, to, "enabled")) == 1 })
			var mu sync.Mutex
			var data, refused int
			e.smtp.set(func(s *smtpServer) {
				s.failData = func(received) error {
					mu.Lock()
					defer mu.Unlock()
					if data++; data%3 == 0 {
						refused++
						return errTemporary
					}
					return nil
				}
			})

			for _, c := range act.BackupCodes {
				if _, err := e.svc.ConsumeBackupCode(ctx, as("olga"), commands.ConsumeBackupCode{TenantID: tenant, UserID: "olga", Code: c}); err != nil {
					t.Fatal(err)
				}
			}
			isNotice := func(m received) bool {
				k := kindOf(m.MessageID)
				return k == string(notifier.KindBackupCodeUsed) || k == string(notifier.KindBackupCodesLow)
			}
			msgs := e.smtp.wait(60*time.Second, "21 notices", func(msgs []received) bool {
				n := 0
				for _, m := range mailsTo(msgs, to, "") {
					if isNotice(m) {
						n++
					}
				}
				return n >= 21
			})
			e.waitIdle(30 * time.Second)
			msgs = e.smtp.messages()

			// Arrival order is the order the server stored them in.
			var got []string
			last := len(act.BackupCodes)
			lowAfter := -1
			for _, m := range mailsTo(msgs, to, "") {
				if !isNotice(m) {
					continue
				}
				if match := usedRemainingRE.FindStringSubmatch(m.Text); match != nil {
					n, _ := strconv.Atoi(match[1])
					got = append(got, match[1])
					if n >= last {
						t.Errorf("\"%d codes remain\" arrived after \"%d remain\"", n, last)
					}
					last = n
					continue
				}
				match := lowRemainingRE.FindStringSubmatch(m.Text)
				if match == nil {
					t.Fatalf("%s without a count: %q", kindOf(m.MessageID), m.Text)
				}
				got = append(got, "low:"+match[1])
				lowAfter = last
				if match[1] != "2" {
					t.Errorf("low-codes warning says %s remain, want 2", match[1])
				}
			}
			t.Logf("arrival order: %v (%d messages refused once)", got, refused)
			if len(got) != 21 || last != 0 {
				t.Errorf("%d notices, the last saying %d remain: want 21, ending at 0", len(got), last)
			}
			if lowAfter != 2 {
				t.Errorf("the low-codes warning arrived after \"%d remain\", want right after \"2 remain\"", lowAfter)
			}
			if refused == 0 {
				t.Error("no message was refused: the retries were not exercised")
			}
			for id, c := range countIDs(msgs) {
				if c != 1 {
					t.Errorf("%s arrived %d times", id, c)
				}
			}
		})
	}
}

// A notice that can never be delivered holds back the later notices of its user
// until it is dead, and then they go; meanwhile other users' notices, and the
// user's own login codes, are not held back.
func TestADeadNoticeHoldsBackOnlyItsUsersLaterNoticesUntilItIsDead(t *testing.T) {
	e := newEnv(t)
	tenant := e.tenant(domain.DefaultPolicy())
	first := e.startWorker(testConfig())
	const pia, quinn = "pia@example.com", "quinn@example.com"
	enable := func(user, to string) {
		t.Helper()
		e.setup(tenant, user, to)
		if _, err := e.svc.ConfirmOTPMethod(ctx, as(user), commands.ConfirmOTPMethod{TenantID: tenant, UserID: user,
			Method: domain.MethodEmail, Code: e.mailCode(to, "setup_code", 1)}); err != nil {
			t.Fatal(err)
		}
	}
	enable("pia", pia)
	enable("quinn", quinn)
	e.waitIdle(30 * time.Second)
	first.stop()

	// Recorded while no worker runs, so that all of them are waiting when
	// delivery starts: pia's regeneration notice, her backup-code login after it,
	// a login code of hers, and quinn's reset.
	regen, err := e.svc.RegenerateBackupCodes(ctx, as("pia"), commands.RegenerateBackupCodes{TenantID: tenant, UserID: "pia"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.ConsumeBackupCode(ctx, as("pia"), commands.ConsumeBackupCode{TenantID: tenant, UserID: "pia", Code: regen.BackupCodes[0]}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.StartLoginChallenge(ctx, as("pia"), commands.StartLoginChallenge{TenantID: tenant, UserID: "pia"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.ResetTwoFactor(ctx, admin, commands.ResetTwoFactor{TenantID: tenant, UserID: "quinn"}); err != nil {
		t.Fatal(err)
	}
	e.smtp.set(func(s *smtpServer) {
		s.failData = func(r received) error {
			if kindOf(r.MessageID) == string(notifier.KindBackupCodesRegenerated) {
				return errTemporary
			}
			return nil
		}
	})
	cfg := testConfig()
	cfg.Concurrency = 2
	cfg.MaxAttempts = 3
	// Two retries of at least 1.5 s each: the notices that do not wait for it
	// are sent long before it gives up, even on a loaded machine.
	cfg.BackoffBase = 3 * time.Second
	cfg.BackoffMax = 3 * time.Second
	e.startWorker(cfg)
	e.startWorker(cfg)
	e.waitIdle(60 * time.Second)

	rows := map[string]ledgerRow{}
	for _, r := range e.ledger() {
		if r.Kind == string(notifier.KindBackupCodesRegenerated) || r.Kind == string(notifier.KindBackupCodeUsed) ||
			r.Kind == string(notifier.KindReset) || (r.Kind == string(notifier.KindOTPCode)) {
			rows[r.Kind] = r
		}
	}
	dead, used := rows[string(notifier.KindBackupCodesRegenerated)], rows[string(notifier.KindBackupCodeUsed)]
	if dead.Status != "dead" || dead.Attempts != 3 {
		t.Fatalf("regeneration notice %+v, want dead after 3 attempts", dead)
	}
	if used.Status != "sent" || used.SentAt == nil || used.SentAt.Before(dead.UpdatedAt) {
		t.Errorf("pia's later notice %+v: want sent after the earlier one died at %v", used, dead.UpdatedAt)
	}
	for _, k := range []notifier.Kind{notifier.KindReset, notifier.KindOTPCode} {
		r := rows[string(k)]
		if r.Status != "sent" || r.SentAt == nil || !r.SentAt.Before(dead.UpdatedAt) {
			t.Errorf("%s %+v: want sent while pia's dead notice was still being retried (until %v)", k, r, dead.UpdatedAt)
		}
	}
	if len(mailsTo(e.smtp.messages(), pia, string(notifier.KindBackupCodeUsed))) != 1 {
		t.Error("pia's backup-code notice did not arrive")
	}
}

// With the tenant policy "a recovery code disables 2FA", one backup-code login
// decides both facts, and the user gets the one message that is true: 2FA is
// off, the backup codes are void, enrol again at the next sign-in. No "a backup
// code was used, N left" (the codes are void) and no low-codes warning, even
// where the login crossed the warning threshold.
func TestRecoveryCodePolicySendsOneMessage(t *testing.T) {
	e := newEnv(t)
	policy := domain.DefaultPolicy()
	policy.RecoveryCodeDisables = true
	policy.BackupCodeCount = 5
	policy.LowBackupCodesWarn = 4
	tenant := e.tenant(policy)
	e.startWorker(testConfig())
	const to = "rita@example.com"
	e.setup(tenant, "rita", to)
	act, err := e.svc.ConfirmOTPMethod(ctx, as("rita"), commands.ConfirmOTPMethod{TenantID: tenant, UserID: "rita",
		Method: domain.MethodEmail, Code: e.mailCode(to, "setup_code", 1)})
	if err != nil {
		t.Fatal(err)
	}
	v, err := e.svc.ConsumeBackupCode(ctx, as("rita"), commands.ConsumeBackupCode{TenantID: tenant, UserID: "rita", Code: act.BackupCodes[0]})
	if err != nil || !v.TwoFactorDisabled {
		t.Fatalf("backup-code login = %+v, %v: want 2FA switched off", v, err)
	}
	e.smtp.wait(30*time.Second, "disabled", func(msgs []received) bool { return len(mailsTo(msgs, to, "disabled")) == 1 })
	e.waitIdle(30 * time.Second)
	time.Sleep(200 * time.Millisecond) // anything extra would have arrived by now
	e.waitIdle(5 * time.Second)

	var kinds []string
	for _, m := range mailsTo(e.smtp.messages(), to, "") {
		kinds = append(kinds, kindOf(m.MessageID))
	}
	if strings.Join(kinds, ",") != "setup_code,enabled,disabled" {
		t.Fatalf("messages %v, want setup_code, enabled, disabled", kinds)
	}
	off := mailsTo(e.smtp.messages(), to, "disabled")[0]
	for _, want := range []string{"A backup code was used to sign in", "switched two-factor authentication off",
		"All your backup codes are void", "set it up again at your next sign-in", "QR code", "new backup codes"} {
		if !strings.Contains(off.Text, want) {
			t.Errorf("the message lacks %q:\n%s", want, off.Text)
		}
	}
	if strings.Contains(off.Text, "remain") {
		t.Errorf("the message counts codes that are void:\n%s", off.Text)
	}
	// What it announces is what the next login asks for.
	ch, err := e.svc.StartLoginChallenge(ctx, as("rita"), commands.StartLoginChallenge{TenantID: tenant, UserID: "rita"})
	if err != nil || !ch.EnrollmentRequired || ch.Enabled {
		t.Fatalf("next challenge = %+v, %v: want enrolment required", ch, err)
	}
}
