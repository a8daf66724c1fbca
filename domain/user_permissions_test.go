package domain

import (
	"testing"
	"time"
)

func TestCannotToggle_UserCannotDisable(t *testing.T) {
	s := given(t, totpEnabled(1000)...).and(&TogglePermissionChanged{CanToggle: false}).wait(time.Minute)
	events, err := s.u.DisableTwoFactor(s.user())
	refused(t, events, err, KindForbidden, CodeNotAllowed)
	if !s.u.Enabled() {
		t.Fatal("still enabled")
	}
	// an admin still can
	events, err = s.u.DisableTwoFactor(s.admin())
	wantNoError(t, err)
	wantTypes(t, events, "TwoFactorDisabled")
}

func TestCannotToggle_UserCannotStartEnrolmentUnlessRequired(t *testing.T) {
	start := map[string]func(u *UserTwoFactor, env Env) ([]Event, error){
		"app": func(u *UserTwoFactor, env Env) ([]Event, error) {
			return u.StartTOTPEnrollment(env, totpParams(sealedSecret))
		},
		"email": func(u *UserTwoFactor, env Env) ([]Event, error) {
			return u.StartOTPMethodSetup(env, MethodEmail, sealedEmail, sealedCode)
		},
	}
	for name, decide := range start {
		t.Run(name+"/per user", func(t *testing.T) {
			s := given(t, &TogglePermissionChanged{CanToggle: false})
			events, err := decide(s.u, s.user())
			refused(t, events, err, KindForbidden, CodeNotAllowed)
		})
		t.Run(name+"/tenant default", func(t *testing.T) {
			s := given(t).withPolicy(func(p *Policy) { p.DefaultCanToggle = false })
			events, err := decide(s.u, s.user())
			refused(t, events, err, KindForbidden, CodeNotAllowed)
		})
		t.Run(name+"/granted per user over the tenant default", func(t *testing.T) {
			s := given(t, &TogglePermissionChanged{CanToggle: true}).withPolicy(func(p *Policy) { p.DefaultCanToggle = false })
			events, err := decide(s.u, s.user())
			wantNoError(t, err)
			if len(events) != 1 {
				t.Fatalf("events = %v", typesOf(events))
			}
		})
		t.Run(name+"/required", func(t *testing.T) {
			s := given(t, &TogglePermissionChanged{CanToggle: false}, &TwoFactorRequirementChanged{Required: true})
			events, err := decide(s.u, s.user())
			wantNoError(t, err)
			if len(events) != 1 {
				t.Fatalf("events = %v", typesOf(events))
			}
		})
		t.Run(name+"/after an admin reset", func(t *testing.T) {
			s := given(t, totpEnabled(1000)...).and(&TogglePermissionChanged{CanToggle: false}, &TwoFactorReset{})
			events, err := decide(s.u, s.user())
			wantNoError(t, err)
			if len(events) != 1 {
				t.Fatalf("events = %v", typesOf(events))
			}
		})
	}
}

func TestDisable_WhoAndWhy(t *testing.T) {
	for _, tc := range []struct {
		actor     Actor
		disableBy DisablePermission
		reason    string // "" means refused with not_allowed
	}{
		{asUser, DisableByAdminsAndTogglers, DisabledByUser},
		{asAdmin, DisableByAdminsAndTogglers, DisabledByAdmin},
		{asSuper, DisableByAdminsAndTogglers, DisabledByAdmin},
		{asUser, DisableBySuperAdmins, ""},
		{asAdmin, DisableBySuperAdmins, ""},
		{asSelfAdmin, DisableBySuperAdmins, ""},
		{asSuper, DisableBySuperAdmins, DisabledByAdmin},
		{asOther, DisableByAdminsAndTogglers, ""},
		{asSystem, DisableByAdminsAndTogglers, ""},
		{asAuditor, DisableByAdminsAndTogglers, ""},
	} {
		t.Run(string(tc.actor.Kind)+"/"+tc.actor.ID+"/"+string(tc.disableBy), func(t *testing.T) {
			s := given(t, totpEnabled(1000)...).withPolicy(func(p *Policy) { p.DisableBy = tc.disableBy }).wait(time.Minute)

			events, err := s.u.DisableTwoFactor(s.env(tc.actor))

			if tc.reason == "" {
				refused(t, events, err, KindForbidden, CodeNotAllowed)
				return
			}
			wantNoError(t, err)
			wantTypes(t, events, "TwoFactorDisabled")
			if d := event[*TwoFactorDisabled](t, events, 0); d.Reason != tc.reason {
				t.Fatalf("reason = %q, want %q", d.Reason, tc.reason)
			}
		})
	}
}

func TestDisable_WhenNotEnabled(t *testing.T) {
	for _, a := range []Actor{asUser, asAdmin} {
		s := given(t)
		events, err := s.u.DisableTwoFactor(s.env(a))
		refused(t, events, err, KindPrecondition, CodeNotEnrolled)
	}
	s := given(t, totpEnabled(1000)...).and(&TwoFactorDisabled{Reason: DisabledByUser})
	events, err := s.u.DisableTwoFactor(s.admin())
	refused(t, events, err, KindPrecondition, CodeNotEnrolled)
}

// Every decision about one user refuses another user.
func TestAUserCannotActOnAnotherUser(t *testing.T) {
	s := given(t, concat(totpEnabled(1000), emailAdded())...).
		and(challenge(MethodEmail, t0), totpStarted(sealedSecret2, t0.Add(time.Hour), true),
			&OTPMethodSetupStarted{Method: MethodSMS, SealedDestination: sealedPhone, SealedCode: sealedCode, ExpiresAt: t0.Add(time.Hour)},
			&TwoFactorLocked{Until: t0.Add(time.Minute), Lockout: 1})
	env := s.env(asOther)
	for name, decide := range allDecisions(s.u) {
		t.Run(name, func(t *testing.T) {
			events, err := decide(env)
			refused(t, events, err, KindForbidden, CodeNotAllowed)
		})
	}
	if _, err := s.u.LoginOptions(env); err == nil {
		t.Fatal("LoginOptions of another user")
	} else {
		wantErr(t, err, KindForbidden, CodeNotAllowed)
	}
}

// allDecisions lists every decision of the user aggregate, with plausible arguments.
func allDecisions(u *UserTwoFactor) map[string]func(Env) ([]Event, error) {
	return map[string]func(Env) ([]Event, error){
		"StartTOTPEnrollment": func(e Env) ([]Event, error) { return u.StartTOTPEnrollment(e, totpParams(sealedSecret2)) },
		"ConfirmTOTPEnrollment": func(e Env) ([]Event, error) {
			return u.ConfirmTOTPEnrollment(e, []int64{1001}, codeSet("new", 10))
		},
		"StartOTPMethodSetup": func(e Env) ([]Event, error) {
			return u.StartOTPMethodSetup(e, MethodSMS, sealedPhone, sealedCode)
		},
		"ConfirmOTPMethod":      func(e Env) ([]Event, error) { return u.ConfirmOTPMethod(e, MethodSMS, true, codeSet("new", 10)) },
		"IssueChallenge":        func(e Env) ([]Event, error) { return u.IssueChallenge(e, MethodEmail, sealedCode) },
		"VerifyTOTP":            func(e Env) ([]Event, error) { return u.VerifyTOTP(e, []int64{1001}) },
		"VerifyOTP":             func(e Env) ([]Event, error) { return u.VerifyOTP(e, MethodEmail, true) },
		"ConsumeBackupCode":     func(e Env) ([]Event, error) { return u.ConsumeBackupCode(e, codeSet("old", 10)[0]) },
		"ChangeDefaultMethod":   func(e Env) ([]Event, error) { return u.ChangeDefaultMethod(e, MethodEmail) },
		"RegenerateBackupCodes": func(e Env) ([]Event, error) { return u.RegenerateBackupCodes(e, codeSet("new", 10)) },
		"RemoveMethod":          func(e Env) ([]Event, error) { return u.RemoveMethod(e, MethodEmail) },
		"DisableTwoFactor":      func(e Env) ([]Event, error) { return u.DisableTwoFactor(e) },
		"RequireTwoFactor":      func(e Env) ([]Event, error) { return u.RequireTwoFactor(e, true) },
		"SetTogglePermission":   func(e Env) ([]Event, error) { return u.SetTogglePermission(e, false) },
		"SwitchMethod":          func(e Env) ([]Event, error) { return u.SwitchMethod(e, MethodEmail, "") },
		"ResetTwoFactor":        func(e Env) ([]Event, error) { return u.ResetTwoFactor(e) },
		"Unlock":                func(e Env) ([]Event, error) { return u.Unlock(e) },
		"ForgetUser":            func(e Env) ([]Event, error) { return u.ForgetUser(e) },
	}
}

func TestAdminDecisionsNeedAnAdmin(t *testing.T) {
	decisions := map[string]func(u *UserTwoFactor, e Env) ([]Event, error){
		"RequireTwoFactor":    func(u *UserTwoFactor, e Env) ([]Event, error) { return u.RequireTwoFactor(e, true) },
		"SetTogglePermission": func(u *UserTwoFactor, e Env) ([]Event, error) { return u.SetTogglePermission(e, false) },
		"ResetTwoFactor":      func(u *UserTwoFactor, e Env) ([]Event, error) { return u.ResetTwoFactor(e) },
		"Unlock":              func(u *UserTwoFactor, e Env) ([]Event, error) { return u.Unlock(e) },
		"ForgetUser":          func(u *UserTwoFactor, e Env) ([]Event, error) { return u.ForgetUser(e) },
	}
	for name, decide := range decisions {
		for _, a := range []Actor{asUser, asOther, asSystem, asAuditor} {
			if name == "RequireTwoFactor" && a == asUser {
				continue // "can toggle 2FA": user_requirement_test.go
			}
			t.Run(name+"/"+string(a.Kind)+"/"+a.ID, func(t *testing.T) {
				s := given(t, totpEnabled(1000)...).and(&TwoFactorLocked{Until: t0.Add(time.Hour), Lockout: 1})
				events, err := decide(s.u, s.env(a))
				refused(t, events, err, KindForbidden, CodeNotAllowed)
			})
		}
		for _, a := range []Actor{asAdmin, asSuper} {
			t.Run(name+"/"+string(a.Kind), func(t *testing.T) {
				s := given(t, totpEnabled(1000)...).and(&TwoFactorLocked{Until: t0.Add(time.Hour), Lockout: 1})
				events, err := decide(s.u, s.env(a))
				wantNoError(t, err)
				if len(events) != 1 {
					t.Fatalf("events = %v", typesOf(events))
				}
			})
		}
	}
}

func TestRequireTwoFactor(t *testing.T) {
	s := given(t)

	events, err := s.u.RequireTwoFactor(s.admin(), true)

	wantNoError(t, err)
	wantTypes(t, events, "TwoFactorRequirementChanged")
	if r := event[*TwoFactorRequirementChanged](t, events, 0); !r.Required {
		t.Fatalf("changed = %+v", r)
	}
	s.record(events)
	snap := s.snap()
	if !snap.Required || !snap.MustEnroll || snap.Status != StatusNotActivated {
		t.Fatalf("snapshot = %+v", snap)
	}
	o, err := s.u.LoginOptions(s.user())
	wantNoError(t, err)
	if !o.EnrollmentRequired || o.Enabled {
		t.Fatalf("login options = %+v, want enrolment required", o)
	}

	events, err = s.u.RequireTwoFactor(s.admin(), true)
	refused(t, events, err, KindPrecondition, CodeNothingToChange)

	s.must(s.u.RequireTwoFactor(s.admin(), false))
	if o, _ := s.u.LoginOptions(s.user()); o.EnrollmentRequired {
		t.Fatal("no longer required")
	}
}

func TestRequiredAndEnrolledUserNeedNotEnrol(t *testing.T) {
	s := given(t, &TwoFactorRequirementChanged{Required: true}).and(totpEnabled(1000)...)
	o, err := s.u.LoginOptions(s.user())
	wantNoError(t, err)
	if o.EnrollmentRequired || !o.Enabled {
		t.Fatalf("login options = %+v", o)
	}
}

func TestSetTogglePermission(t *testing.T) {
	s := given(t)
	events, err := s.u.SetTogglePermission(s.admin(), false)
	wantNoError(t, err)
	wantTypes(t, events, "TogglePermissionChanged")
	if c := event[*TogglePermissionChanged](t, events, 0); c.CanToggle {
		t.Fatalf("changed = %+v", c)
	}
	s.record(events)
	if s.snap().CanToggle {
		t.Fatal("snapshot still says can toggle")
	}
	events, err = s.u.SetTogglePermission(s.admin(), false)
	refused(t, events, err, KindPrecondition, CodeNothingToChange)
	s.must(s.u.SetTogglePermission(s.admin(), true))
	if !s.snap().CanToggle {
		t.Fatal("snapshot says cannot toggle")
	}
}

func TestResetTwoFactor_AdminCannotResetThemself(t *testing.T) {
	s := given(t, totpEnabled(1000)...)
	events, err := s.u.ResetTwoFactor(s.env(asSelfAdmin))
	refused(t, events, err, KindForbidden, CodeSelfReset)

	events, err = s.u.ResetTwoFactor(s.env(asSelfSuper))
	wantNoError(t, err)
	wantTypes(t, events, "TwoFactorReset")

	// another admin of the tenant can
	events, err = s.u.ResetTwoFactor(s.env(Actor{Kind: ActorAdmin, ID: "admin-2"}))
	wantNoError(t, err)
	wantTypes(t, events, "TwoFactorReset")
}

func TestNothingToChange(t *testing.T) {
	for _, tc := range []struct {
		name   string
		given  []Event
		decide func(u *UserTwoFactor, s *story) ([]Event, error)
	}{
		{"require off when not required", nil, func(u *UserTwoFactor, s *story) ([]Event, error) { return u.RequireTwoFactor(s.admin(), false) }},
		{"require on twice", []Event{&TwoFactorRequirementChanged{Required: true}}, func(u *UserTwoFactor, s *story) ([]Event, error) {
			return u.RequireTwoFactor(s.admin(), true)
		}},
		{"toggle permission unchanged", []Event{&TogglePermissionChanged{CanToggle: true}}, func(u *UserTwoFactor, s *story) ([]Event, error) {
			return u.SetTogglePermission(s.admin(), true)
		}},
		{"default method unchanged", totpEnabled(1000), func(u *UserTwoFactor, s *story) ([]Event, error) {
			return u.ChangeDefaultMethod(s.user(), MethodTOTP)
		}},
		{"reset a user who never enrolled", nil, func(u *UserTwoFactor, s *story) ([]Event, error) { return u.ResetTwoFactor(s.admin()) }},
		{"reset twice", append(totpEnabled(1000), &TwoFactorReset{}), func(u *UserTwoFactor, s *story) ([]Event, error) {
			return u.ResetTwoFactor(s.admin())
		}},
		{"switch to the current method", otpEnabled(MethodEmail, sealedEmail), func(u *UserTwoFactor, s *story) ([]Event, error) {
			return u.SwitchMethod(s.admin(), MethodEmail, sealedEmail)
		}},
		{"switch to the app when it is enrolled", concat(totpEnabled(1000), emailAdded(), []Event{&DefaultMethodChanged{Method: MethodEmail}}), func(u *UserTwoFactor, s *story) ([]Event, error) {
			return u.SwitchMethod(s.admin(), MethodTOTP, "")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := given(t, tc.given...)
			events, err := tc.decide(s.u, s)
			refused(t, events, err, KindPrecondition, CodeNothingToChange)
		})
	}
}

func TestChangeDefaultMethod(t *testing.T) {
	for _, a := range []Actor{asUser, asAdmin} {
		s := given(t, concat(totpEnabled(1000), emailAdded())...)
		if s.snap().DefaultMethod != MethodTOTP {
			t.Fatalf("default = %q, want the first method", s.snap().DefaultMethod)
		}
		events, err := s.u.ChangeDefaultMethod(s.env(a), MethodEmail)
		wantNoError(t, err)
		wantTypes(t, events, "DefaultMethodChanged")
		if c := event[*DefaultMethodChanged](t, events, 0); c.Method != MethodEmail {
			t.Fatalf("changed = %+v", c)
		}
		s.record(events)
		o, _ := s.u.LoginOptions(s.user())
		if o.DefaultMethod != MethodEmail || s.snap().DefaultMethod != MethodEmail {
			t.Fatalf("default = %q", o.DefaultMethod)
		}
		wantMethods(t, o.Methods, MethodTOTP, MethodEmail)
	}
	s := given(t, totpEnabled(1000)...)
	events, err := s.u.ChangeDefaultMethod(s.user(), MethodSMS)
	refused(t, events, err, KindPrecondition, CodeMethodNotEnrolled)
	s = given(t)
	events, err = s.u.ChangeDefaultMethod(s.user(), MethodTOTP)
	refused(t, events, err, KindPrecondition, CodeNotEnrolled)
}

func TestRemoveMethod(t *testing.T) {
	s := given(t, concat(totpEnabled(1000), emailAdded())...)
	s.must(s.u.VerifyTOTP(s.user(), []int64{1001}))

	events, err := s.u.RemoveMethod(s.user(), MethodTOTP)

	wantNoError(t, err)
	wantTypes(t, events, "MethodRemoved")
	if r := event[*MethodRemoved](t, events, 0); r.Method != MethodTOTP {
		t.Fatalf("removed = %+v", r)
	}
	s.record(events)
	snap := s.snap()
	wantMethods(t, snap.Methods, MethodEmail)
	if snap.DefaultMethod != MethodEmail || !snap.Enabled || snap.BackupCodesRemaining != 10 {
		t.Fatalf("snapshot = %+v", snap)
	}
	if _, ok := s.u.ActiveTOTP(); ok {
		t.Fatal("the app is gone")
	}

	events, err = s.u.RemoveMethod(s.user(), MethodEmail)
	refused(t, events, err, KindPrecondition, CodeLastMethod)
	events, err = s.u.RemoveMethod(s.user(), MethodTOTP)
	refused(t, events, err, KindPrecondition, CodeMethodNotEnrolled)
	events, err = s.u.RemoveMethod(s.admin(), MethodSMS)
	refused(t, events, err, KindPrecondition, CodeMethodNotEnrolled)
}
