package handlers_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"

	"github.com/twofactor/twofactor/handlers"
	"github.com/twofactor/twofactor/messaging"
	"github.com/twofactor/twofactor/projections"
)

// newReadSideHarness is the harness with the real read models, kept by the
// real projector behind a watermill router for the test's duration.
func newReadSideHarness(t *testing.T) *harness {
	t.Helper()
	h := newHarness(t, nil, func(_ *handlers.Config, d *handlers.Deps) {
		d.Reads = handlers.ProjectionReads(projections.NewQueries(d.Pool, projections.QueryOptions{Clock: d.Clock, Wait: 2 * time.Second}))
	})
	router, err := messaging.NewRouter(h.Pool, messaging.DefaultConfig(), watermill.NopLogger{},
		[]messaging.Consumer{projections.NewProjector(h.Pool, h.Store, projections.ProjectorOptions{}).Consumer()})
	must(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = router.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	<-router.Running()
	return h
}

// The admin list and coverage come from the real read models, kept by the real
// projector behind a watermill router; a write's position is readable at once
// with min_position.
func TestReadModelRoutesReadTheirWrites(t *testing.T) {
	h := newReadSideHarness(t)

	h.enrolTOTP("nia")
	h.enrolTOTP("oli")
	res := h.asAdmin("PUT", "pat", "/requirement", map[string]any{"required": true}).want(200)
	pos := int64(res.num("position"))
	tok, actor := h.admin()

	var page handlers.UserPage
	h.do(call{method: "GET", path: fmt.Sprintf("/v1/users?status=not_activated&min_position=%d", pos), token: tok, actor: actor}).want(200).decode(&page)
	if len(page.Users) != 1 || page.Users[0].UserID != "pat" || !page.Users[0].Required {
		t.Fatalf("not activated: %+v", page)
	}
	h.do(call{method: "GET", path: "/v1/users?status=activated&method=totp&limit=1", token: tok, actor: actor}).want(200).decode(&page)
	if len(page.Users) != 1 || page.NextCursor == "" {
		t.Fatalf("first page: %+v", page)
	}
	first := page.Users[0].UserID
	h.do(call{method: "GET", path: "/v1/users?status=activated&method=totp&limit=1&cursor=" + page.NextCursor, token: tok, actor: actor}).want(200).decode(&page)
	if len(page.Users) != 1 || page.Users[0].UserID == first {
		t.Fatalf("second page: %+v", page)
	}
	h.do(call{method: "GET", path: "/v1/users?status=activated&cursor=%25%25%25", token: tok, actor: actor}).want(400, "invalid_argument")

	var cov handlers.Coverage
	h.do(call{method: "GET", path: fmt.Sprintf("/v1/coverage?min_position=%d", pos), token: h.tokens[handlers.RoleAuditor], actor: "auditor:ann"}).want(200).decode(&cov)
	if cov.Users != 3 || cov.Activated != 2 || cov.RequiredNotEnrolled != 1 || cov.AppliedPosition < pos {
		t.Fatalf("coverage: %+v", cov)
	}
	// One user's status is read from their stream: current without waiting.
	st := h.do(call{method: "GET", path: fmt.Sprintf("/v1/users/nia?min_position=%d", pos), token: tok, actor: actor}).want(200).json()
	if st["status"] != "activated" {
		t.Fatalf("status: %v", st)
	}
	h.do(call{method: "GET", path: "/v1/users/nobody", token: tok, actor: actor}).want(404, "user_not_found")

	// A position the read model has not reached: 503 with Retry-After, never stale data.
	r := h.do(call{method: "GET", path: fmt.Sprintf("/v1/users?min_position=%d", pos+1_000_000), token: tok, actor: actor}).want(503, "read_model_timeout")
	if r.header.Get("Retry-After") == "" {
		t.Fatal("read_model_timeout without Retry-After")
	}
	h.do(call{method: "GET", path: "/v1/users/nia?min_position=-1", token: tok, actor: actor}).want(400, "invalid_argument")
}
