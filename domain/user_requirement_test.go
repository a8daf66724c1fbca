package domain

import (
	"testing"
	"time"
)

// "Use 2FA" is the requirement; "can toggle 2FA" lets the user change it for
// themself, on or off, unless the tenant reserves disabling to super admins.
// Without the permission only an admin can.

var requiredByAdmin = &TwoFactorRequirementChanged{Required: true, ChangedBy: ChangedByAdmin}

// The enrolment prompt's "Disable 2FA" for a required user who never enrolled.
func TestEnrolmentPrompt_PermittedUserWaivesTheRequirement(t *testing.T) {
	s := given(t, requiredByAdmin)
	o, err := s.u.LoginOptions(s.user())
	wantNoError(t, err)
	if !o.EnrollmentRequired || !o.CanDisable {
		t.Fatalf("prompt = %+v, want enrolment required and Disable offered", o)
	}

	events := s.must(s.u.DisableTwoFactor(s.user()))

	wantTypes(t, events, "TwoFactorRequirementChanged")
	if c := event[*TwoFactorRequirementChanged](t, events, 0); c.Required || c.ChangedBy != ChangedByUser || !c.ByUser() {
		t.Fatalf("event = %+v, want required off by the user", c)
	}
	snap := s.snap()
	if snap.Required || snap.MustEnroll || snap.RequirementWaivedBy != ChangedByUser || snap.Status != StatusNotActivated {
		t.Fatalf("snapshot = %+v, want not required, waived by the user", snap)
	}
	if o, _ := s.u.LoginOptions(s.user()); o.EnrollmentRequired {
		t.Fatalf("the next login still prompts: %+v", o)
	}
	// Nothing left to switch off.
	events, err = s.u.DisableTwoFactor(s.user())
	refused(t, events, err, KindPrecondition, CodeNotEnrolled)
}

func TestEnrolmentPrompt_UserWithoutThePermission(t *testing.T) {
	for name, given := range map[string]*story{
		"per user":       given(t, requiredByAdmin, &TogglePermissionChanged{CanToggle: false}),
		"tenant default": given(t, requiredByAdmin).withPolicy(func(p *Policy) { p.DefaultCanToggle = false }),
	} {
		t.Run(name, func(t *testing.T) {
			s := given
			o, err := s.u.LoginOptions(s.user())
			wantNoError(t, err)
			if !o.EnrollmentRequired || o.CanDisable {
				t.Fatalf("prompt = %+v, want enrolment required and no Disable", o)
			}
			events, err := s.u.DisableTwoFactor(s.user())
			refused(t, events, err, KindForbidden, CodeRequired)
			events, err = s.u.RequireTwoFactor(s.user(), false)
			refused(t, events, err, KindForbidden, CodeRequired)
			// An admin can.
			events = s.must(s.u.RequireTwoFactor(s.admin(), false))
			if c := event[*TwoFactorRequirementChanged](t, events, 0); c.ChangedBy != ChangedByAdmin || c.ByUser() {
				t.Fatalf("event = %+v, want by an admin", c)
			}
			if snap := s.snap(); snap.Required || snap.RequirementWaivedBy != ChangedByAdmin {
				t.Fatalf("snapshot = %+v, want waived by an admin", snap)
			}
		})
	}
}

// With a configured method the user's disable waives the requirement with it,
// after a fresh verification as every disable of one's own.
func TestRequiredAndEnrolled_PermittedUserDisables(t *testing.T) {
	s := given(t, totpEnabled(1000)...).and(requiredByAdmin).wait(time.Hour)
	events, err := s.u.DisableTwoFactor(s.user())
	refused(t, events, err, KindPrecondition, CodeFreshVerification)

	s.must(s.u.VerifyTOTP(s.user(), []int64{1200}))
	events = s.must(s.u.DisableTwoFactor(s.user()))

	wantTypes(t, events, "TwoFactorDisabled", "TwoFactorRequirementChanged")
	if d := event[*TwoFactorDisabled](t, events, 0); d.Reason != DisabledByUser {
		t.Fatalf("reason = %q", d.Reason)
	}
	if c := event[*TwoFactorRequirementChanged](t, events, 1); c.Required || !c.ByUser() {
		t.Fatalf("event = %+v", c)
	}
	snap := s.snap()
	if snap.Enabled || snap.Required || snap.MustEnroll || snap.RequirementWaivedBy != ChangedByUser || snap.Status != StatusDisabled {
		t.Fatalf("snapshot = %+v", snap)
	}
}

func TestRequiredAndEnrolled_UserWithoutThePermission(t *testing.T) {
	s := given(t, totpEnabled(1000)...).and(requiredByAdmin, &TogglePermissionChanged{CanToggle: false}).wait(time.Minute)
	o, err := s.u.LoginOptions(s.user())
	wantNoError(t, err)
	if o.CanDisable {
		t.Fatalf("prompt = %+v, want no Disable", o)
	}
	events, err := s.u.DisableTwoFactor(s.user())
	refused(t, events, err, KindForbidden, CodeRequired)

	events = s.must(s.u.DisableTwoFactor(s.admin()))
	// An admin's disable keeps "use 2FA": the user enrols again at the next login.
	wantTypes(t, events, "TwoFactorDisabled")
	if snap := s.snap(); !snap.Required || !snap.MustEnroll || snap.RequirementWaivedBy != "" {
		t.Fatalf("snapshot = %+v", snap)
	}
}

// A not required user with the permission disables as before: no waiver event.
func TestNotRequired_PermittedUserDisablesWithoutAWaiver(t *testing.T) {
	s := given(t, totpEnabled(1000)...).wait(time.Minute)
	events := s.must(s.u.DisableTwoFactor(s.user()))
	wantTypes(t, events, "TwoFactorDisabled")
	if snap := s.snap(); snap.RequirementWaivedBy != "" {
		t.Fatalf("snapshot = %+v", snap)
	}
}

// Disabling reserved to super admins: no user, whatever their permission, waives
// the requirement, at the prompt or after enrolling; a super admin still can.
func TestSuperAdminsOnly_UsersCannotWaive(t *testing.T) {
	superOnly := func(p *Policy) { p.DisableBy = DisableBySuperAdmins }
	for name, s := range map[string]*story{
		"at the prompt": given(t, requiredByAdmin, &TogglePermissionChanged{CanToggle: true}).withPolicy(superOnly),
		"enrolled": given(t, totpEnabled(1000)...).and(requiredByAdmin, &TogglePermissionChanged{CanToggle: true}).
			withPolicy(superOnly).wait(time.Minute),
	} {
		t.Run(name, func(t *testing.T) {
			o, err := s.u.LoginOptions(s.user())
			wantNoError(t, err)
			if o.CanDisable {
				t.Fatalf("prompt = %+v, want no Disable", o)
			}
			events, err := s.u.DisableTwoFactor(s.user())
			refused(t, events, err, KindForbidden, CodeNotAllowed)
			events, err = s.u.RequireTwoFactor(s.user(), false)
			refused(t, events, err, KindForbidden, CodeNotAllowed)
			// A super admin can.
			events, err = s.u.RequireTwoFactor(s.env(asSuper), false)
			wantNoError(t, err)
			wantTypes(t, events, "TwoFactorRequirementChanged")
		})
	}
}

// "On or off": the user switches "use 2FA" on for themself and off again.
func TestPermittedUserTogglesTheRequirement(t *testing.T) {
	s := given(t)
	events := s.must(s.u.RequireTwoFactor(s.user(), true))
	if c := event[*TwoFactorRequirementChanged](t, events, 0); !c.Required || !c.ByUser() {
		t.Fatalf("event = %+v", c)
	}
	if snap := s.snap(); !snap.Required || !snap.MustEnroll || snap.RequirementWaivedBy != "" {
		t.Fatalf("snapshot = %+v", snap)
	}
	events, err := s.u.RequireTwoFactor(s.user(), true)
	refused(t, events, err, KindPrecondition, CodeNothingToChange)
	s.must(s.u.RequireTwoFactor(s.user(), false))
	if snap := s.snap(); snap.Required || snap.RequirementWaivedBy != ChangedByUser {
		t.Fatalf("snapshot = %+v", snap)
	}
	// Turned on again by an admin: no longer shown as waived.
	s.must(s.u.RequireTwoFactor(s.admin(), true))
	if snap := s.snap(); !snap.Required || snap.RequirementWaivedBy != "" {
		t.Fatalf("snapshot = %+v", snap)
	}
	// Only for themself.
	events, err = s.u.RequireTwoFactor(s.env(asOther), false)
	refused(t, events, err, KindForbidden, CodeNotAllowed)

	s = given(t, &TogglePermissionChanged{CanToggle: false})
	events, err = s.u.RequireTwoFactor(s.user(), true)
	refused(t, events, err, KindForbidden, CodeNotAllowed)
}

// After an admin reset the prompt asks to enrol again; a required user's waiver
// takes that demand with it, or "Disable 2FA" would not let them in.
func TestEnrolmentPrompt_AfterAResetTheWaiverEndsThePrompt(t *testing.T) {
	s := given(t, totpEnabled(1000)...).and(requiredByAdmin, &TwoFactorReset{})
	events := s.must(s.u.DisableTwoFactor(s.user()))
	wantTypes(t, events, "TwoFactorRequirementChanged")
	if snap := s.snap(); snap.MustEnroll || snap.Required || snap.Status == StatusResetPending {
		t.Fatalf("snapshot = %+v", snap)
	}
}

// Events from before users could change the requirement carry no ChangedBy:
// they were an admin's.
func TestRequirementChangedWithoutChangedByWasAnAdmin(t *testing.T) {
	s := given(t, &TwoFactorRequirementChanged{Required: true}, &TwoFactorReset{}, &TwoFactorRequirementChanged{Required: false})
	if snap := s.snap(); snap.RequirementWaivedBy != ChangedByAdmin {
		t.Fatalf("snapshot = %+v", snap)
	}
}
