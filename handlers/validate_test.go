package handlers

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
)

// BenchmarkLoginRequestChecks measures what the contract costs a TOTP login
// (POST /v1/users/{user_id}/verifications, the hot path) before its handler:
// the checks a /v1 request passes (requestChecks), after Gin has routed it.
// "routing" is the same request with no checks, to subtract.
func BenchmarkLoginRequestChecks(b *testing.B) {
	gin.SetMode(gin.ReleaseMode)
	bodies, queries, k, err := contractRoutes(OpenAPI)
	if err != nil {
		b.Fatal(err)
	}
	a := &API{bodies: bodies, queries: queries, contract: k, log: slog.New(slog.DiscardHandler), now: time.Now}
	for _, bc := range []struct {
		name   string
		checks bool
	}{{"routing", false}, {"checks", true}} {
		b.Run(bc.name, func(b *testing.B) {
			e := gin.New()
			e.UseRawPath, e.UnescapePathValues = true, true
			e.POST("/v1/users/:user_id/verifications", func(c *gin.Context) {
				if bc.checks {
					for _, check := range a.requestChecks() {
						if check(c); c.IsAborted() {
							b.Fatalf("refused: %d", c.Writer.Status())
						}
					}
				}
				c.Status(http.StatusNoContent)
			})
			const body = `{"method": "totp", "code": "123456"}`
			b.ReportAllocs()
			for b.Loop() {
				r := httptest.NewRequest(http.MethodPost, "/v1/users/ivy/verifications", strings.NewReader(body))
				r.Header.Set("Content-Type", "application/json")
				r.Header.Set("Authorization", "Bearer tfk_aaaaaaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb")
				r.Header.Set("Idempotency-Key", "login-1")
				w := httptest.NewRecorder()
				e.ServeHTTP(w, r)
				if w.Code != http.StatusNoContent {
					b.Fatalf("answered %d: %s", w.Code, w.Body)
				}
			}
		})
	}
}
