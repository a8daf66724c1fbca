package handlers_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/handlers"
)

// lastRequirementChange returns the user's last TwoFactorRequirementChanged and who recorded it.
func (h *harness) lastRequirementChange(user string) (*domain.TwoFactorRequirementChanged, domain.Actor) {
	h.t.Helper()
	recs := h.Records(user)
	for i := len(recs) - 1; i >= 0; i-- {
		if e, ok := recs[i].Event.(*domain.TwoFactorRequirementChanged); ok {
			return e, recs[i].Metadata.Actor
		}
	}
	h.t.Fatalf("%s has no TwoFactorRequirementChanged", user)
	return nil, domain.Actor{}
}

func (h *harness) prompt(user string) map[string]any {
	h.t.Helper()
	return h.asUser("POST", user, "/challenges", nil).want(200).json()
}

// A user whom an admin set to "use 2FA", who never configured it and may toggle
// 2FA, presses "Disable 2FA" at the enrolment prompt and logs in without 2FA;
// the admin sees them as not required, waived by the user.
func TestEnrolmentPromptDisableByAPermittedUser(t *testing.T) {
	h := newHarness(t, nil)
	h.asAdmin("PUT", "nel", "/requirement", map[string]any{"required": true}).want(200)
	if p := h.prompt("nel"); p["enrollment_required"] != true || p["can_disable"] != true {
		t.Fatalf("prompt: %v", p)
	}

	w := h.asUser("DELETE", "nel", "/two-factor", nil).want(200)
	if w.num("position") <= 0 {
		t.Fatalf("disable: %s", w.raw)
	}

	if p := h.prompt("nel"); p["enrollment_required"] != false || p["enabled"] != false {
		t.Fatalf("next login still prompts: %v", p)
	}
	e, actor := h.lastRequirementChange("nel")
	if e.Required || e.ChangedBy != domain.ChangedByUser || actor != (domain.Actor{Kind: domain.ActorUser, ID: "nel"}) {
		t.Fatalf("event %+v by %+v, want the requirement waived by the user", e, actor)
	}
	if n := h.CountEvents("nel", "TwoFactorDisabled"); n != 0 {
		t.Fatalf("%d TwoFactorDisabled for a user who never enabled 2FA", n)
	}
	st := h.asAdmin("GET", "nel", "", nil).want(200).json()
	if st["required"] != false || st["requirement_waived_by"] != "user" || st["must_enroll"] != false || st["status"] != "not_activated" {
		t.Fatalf("admin's view: %v", st)
	}
	// An admin requires it again: no longer shown as waived.
	h.asAdmin("PUT", "nel", "/requirement", map[string]any{"required": true}).want(200)
	if st := h.asAdmin("GET", "nel", "", nil).want(200).json(); st["required"] != true || st["requirement_waived_by"] != nil {
		t.Fatalf("admin's view: %v", st)
	}
}

func TestEnrolmentPromptDisableByAUserWithoutThePermission(t *testing.T) {
	h := newHarness(t, nil)
	h.asAdmin("PUT", "ola", "/requirement", map[string]any{"required": true}).want(200)
	h.asAdmin("PUT", "ola", "/toggle-permission", map[string]any{"can_toggle": false}).want(200)
	if p := h.prompt("ola"); p["enrollment_required"] != true || p["can_disable"] != false {
		t.Fatalf("prompt: %v", p)
	}
	before := len(h.Records("ola"))
	for _, r := range []*result{
		h.asUser("DELETE", "ola", "/two-factor", nil),
		h.asUser("PUT", "ola", "/requirement", map[string]any{"required": false}),
	} {
		if r.want(403, "forbidden_by_policy"); r.str("reason") != domain.CodeRequired {
			t.Fatalf("reason: %s", r.raw)
		}
	}
	if len(h.Records("ola")) != before {
		t.Fatal("a refused waiver recorded events")
	}
	// The admin can.
	h.asAdmin("PUT", "ola", "/requirement", map[string]any{"required": false}).want(200)
	if st := h.asAdmin("GET", "ola", "", nil).want(200).json(); st["required"] != false || st["requirement_waived_by"] != "admin" {
		t.Fatalf("admin's view: %v", st)
	}
}

// With a configured method the user's disable switches 2FA off and waives the
// requirement in one command (a fresh verification is needed, as for any disable
// of one's own); without the permission only an admin can.
func TestRequiredUserWithAMethodDisables(t *testing.T) {
	h := newHarness(t, nil)
	h.asAdmin("PUT", "pia", "/requirement", map[string]any{"required": true}).want(200)
	secret, _ := h.enrolTOTP("pia")
	h.Clock.Advance(time.Hour)
	if p := h.prompt("pia"); p["can_disable"] != true {
		t.Fatalf("prompt: %v", p)
	}
	h.asUser("DELETE", "pia", "/two-factor", nil).want(403, "reauthentication_required")
	h.asUser("POST", "pia", "/verifications", map[string]any{"method": "totp", "code": h.CodeAt(secret, 0)}).want(200)
	h.asUser("DELETE", "pia", "/two-factor", nil).want(200)
	st := h.asAdmin("GET", "pia", "", nil).want(200).json()
	if st["status"] != "disabled" || st["required"] != false || st["requirement_waived_by"] != "user" || st["must_enroll"] != false {
		t.Fatalf("admin's view: %v", st)
	}
	if e, _ := h.lastRequirementChange("pia"); !e.ByUser() || h.CountEvents("pia", "TwoFactorDisabled") != 1 {
		t.Fatalf("events: %+v", e)
	}

	h.asAdmin("PUT", "quy", "/requirement", map[string]any{"required": true}).want(200)
	h.enrolTOTP("quy")
	h.asAdmin("PUT", "quy", "/toggle-permission", map[string]any{"can_toggle": false}).want(200)
	if r := h.asUser("DELETE", "quy", "/two-factor", nil).want(403, "forbidden_by_policy"); r.str("reason") != domain.CodeRequired {
		t.Fatalf("reason: %s", r.raw)
	}
	h.asAdmin("DELETE", "quy", "/two-factor", nil).want(200)
	// An admin's disable keeps "use 2FA": the next login enrols again.
	if st := h.asAdmin("GET", "quy", "", nil).want(200).json(); st["required"] != true || st["must_enroll"] != true {
		t.Fatalf("admin's view: %v", st)
	}
}

// A tenant that reserves disabling to super admins: no user waives the
// requirement, with or without a method; a super admin still can.
func TestSuperAdminsOnlyTenantKeepsTheRequirement(t *testing.T) {
	h := newHarness(t, nil)
	h.do(call{method: "PATCH", path: "/v1/policy", token: h.tokens[handlers.RoleSuperAdmin], actor: "superadmin:root",
		body: map[string]any{"disable_by": "superadmins"}}).want(200)
	h.asAdmin("PUT", "ray", "/requirement", map[string]any{"required": true}).want(200)
	h.asAdmin("PUT", "sue", "/requirement", map[string]any{"required": true}).want(200)
	h.enrolTOTP("sue")
	for _, user := range []string{"ray", "sue"} {
		if p := h.prompt(user); p["can_disable"] != false {
			t.Fatalf("%s's prompt: %v", user, p)
		}
		for _, r := range []*result{
			h.asUser("DELETE", user, "/two-factor", nil),
			h.asUser("PUT", user, "/requirement", map[string]any{"required": false}),
		} {
			if r.want(403, "forbidden_by_policy"); r.str("reason") != domain.CodeNotAllowed {
				t.Fatalf("reason: %s", r.raw)
			}
		}
	}
	h.do(call{method: "PUT", path: userPath("ray", "/requirement"), token: h.tokens[handlers.RoleSuperAdmin], actor: "superadmin:root",
		body: map[string]any{"required": false}}).want(200)
	if st := h.asAdmin("GET", "ray", "", nil).want(200).json(); st["required"] != false || st["requirement_waived_by"] != "admin" {
		t.Fatalf("admin's view: %v", st)
	}
}

// "Can toggle" is on and off: the user switches "use 2FA" on for themself.
func TestUserRequiresTwoFactorForThemself(t *testing.T) {
	h := newHarness(t, nil)
	r := h.asUser("PUT", "tom", "/requirement", map[string]any{"required": true}).want(200).json()
	if r["required"] != true || r["changed"] != true {
		t.Fatalf("require: %v", r)
	}
	if p := h.prompt("tom"); p["enrollment_required"] != true {
		t.Fatalf("prompt: %v", p)
	}
	if e, actor := h.lastRequirementChange("tom"); !e.Required || !e.ByUser() || actor.ID != "tom" {
		t.Fatalf("event %+v by %+v", e, actor)
	}
}

// An admin's read of one user right after a write to that user: never 404 and
// never older than the write, whatever the projector is doing.
func TestAdminReadsAUserRightAfterTheWrite(t *testing.T) {
	h := newReadSideHarness(t)

	tok, actor := h.admin()
	for i := range 60 {
		user := fmt.Sprintf("new-%02d", i)
		var pos float64
		if i%2 == 0 {
			pos = h.asAdmin("PUT", user, "/requirement", map[string]any{"required": true}).want(200).num("position")
		} else {
			pos = h.asUser("POST", user, "/enrollments/totp", map[string]any{"account_name": user}).want(201).num("position")
		}
		for _, path := range []string{userPath(user, ""), userPath(user, fmt.Sprintf("?min_position=%.0f", pos))} {
			st := h.do(call{method: "GET", path: path, token: tok, actor: actor}).want(200).json()
			if i%2 == 0 && (st["required"] != true || st["must_enroll"] != true) || i%2 == 1 && st["status"] != "pending" {
				t.Fatalf("%s right after the write: %v", path, st)
			}
		}
		h.do(call{method: "GET", path: userPath(user, ""), token: h.tokens[handlers.RoleAuditor], actor: "auditor:ann"}).want(200)
	}
}
