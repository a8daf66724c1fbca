package handlers

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/gin-gonic/gin"
	"github.com/google/uuid"

	"github.com/twofactor/twofactor/domain"
)

// Context keys set by the middlewares.
const (
	ctxRequestID = "twofactor.request_id"
	ctxKey       = "twofactor.api_key"
	ctxOperator  = "twofactor.operator"
)

func requestID(c *gin.Context) string { return c.GetString(ctxRequestID) }

// validHeaderToken accepts 1–128 bytes of printable ASCII without spaces: what we
// echo and record from a client header.
func validHeaderToken(s string, max int) bool {
	if s == "" || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// requestIDs takes X-Request-Id when it is sane, or makes one, and echoes it.
func (a *API) requestIDs(c *gin.Context) {
	id := c.GetHeader("X-Request-Id")
	if !validHeaderToken(id, 128) {
		id = uuid.Must(uuid.NewV7()).String()
	}
	c.Set(ctxRequestID, id)
	c.Header("X-Request-Id", id)
	c.Next()
}

// observe records latency by route template and status, and logs one line per
// request: never a query string, a header value or a body.
func (a *API) observe(c *gin.Context) {
	start := time.Now()
	c.Next()
	route := c.FullPath()
	if route == "" {
		route = "unmatched"
	}
	status := c.Writer.Status()
	elapsed := time.Since(start)
	a.metrics.requestDuration.WithLabelValues(c.Request.Method, route, strconv.Itoa(status)).Observe(elapsed.Seconds())
	attrs := []any{"method", c.Request.Method, "route", route, "status", status,
		"duration_ms", elapsed.Milliseconds(), "request_id", requestID(c)}
	if k, ok := c.Get(ctxKey); ok {
		attrs = append(attrs, "key_id", k.(APIKey).KeyID)
	}
	level := slog.LevelInfo
	if status >= 500 {
		level = slog.LevelError
	}
	a.log.Log(c.Request.Context(), level, "http request", attrs...)
}

// recoverer turns a panic into a logged 500 problem.
func (a *API) recoverer(c *gin.Context) {
	defer func() {
		if r := recover(); r != nil {
			if r == http.ErrAbortHandler {
				panic(r)
			}
			a.log.ErrorContext(c.Request.Context(), "panic", "request_id", requestID(c), "route", c.FullPath(), "panic", panicString(r))
			if !c.Writer.Written() {
				a.writeProblem(c, newProblem(http.StatusInternalServerError, codeInternal, ""))
			}
			c.Abort()
		}
	}()
	c.Next()
}

func panicString(r any) string {
	if err, ok := r.(error); ok {
		return err.Error()
	}
	if s, ok := r.(string); ok {
		return s
	}
	return "panic"
}

// timeout bounds a request's work; responses carry no-store because some hold secrets.
func (a *API) timeout(c *gin.Context) {
	ctx, cancel := context.WithTimeout(c.Request.Context(), a.cfg.RequestTimeout)
	defer cancel()
	c.Request = c.Request.WithContext(ctx)
	c.Header("Cache-Control", "no-store")
	c.Next()
}

// bodyRules: a body must be JSON (415 otherwise) and no larger than the cap
// (413), on the routes whose operation takes one. Elsewhere a body is dropped
// unread: those operations list neither 413 nor 415, and nothing reads it.
func (a *API) bodyRules(c *gin.Context) {
	r := c.Request
	if a.bodies[r.Method+" "+c.FullPath()] == nil {
		r.Body, r.ContentLength = http.NoBody, 0
		c.Next()
		return
	}
	if r.ContentLength > a.cfg.MaxBodyBytes {
		a.fail(c, &http.MaxBytesError{Limit: a.cfg.MaxBodyBytes})
		return
	}
	hasBody := r.ContentLength > 0 || (r.ContentLength < 0 && r.Body != nil && r.Body != http.NoBody)
	if hasBody {
		mt, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
		jsonType := mt == "application/json" || (r.Method == http.MethodPatch && mt == "application/merge-patch+json")
		if err != nil || !jsonType || (params["charset"] != "" && !strings.EqualFold(params["charset"], "utf-8")) {
			a.fail(c, newAPIError(http.StatusUnsupportedMediaType, codeUnsupportedMediaType, "the body must be application/json (UTF-8)"))
			return
		}
		// The generated layer picks a PATCH body's decoder by the media
		// type's exact spelling.
		r.Header.Set("Content-Type", mime.FormatMediaType(mt, params))
		r.Body = http.MaxBytesReader(c.Writer, r.Body, a.cfg.MaxBodyBytes)
	}
	c.Next()
}

// ipLimit applies the per-client-IP rate limit, before authentication so that
// guessing keys is slow too.
func (a *API) ipLimit(c *gin.Context) {
	if ok, wait := a.ipLimiter.allow("ip:" + c.ClientIP()); !ok {
		a.rateLimited(c, wait)
		return
	}
	c.Next()
}

func (a *API) rateLimited(c *gin.Context, wait time.Duration) {
	secs := int((wait + time.Second - 1) / time.Second)
	if secs < 1 {
		secs = 1
	}
	e := newAPIError(http.StatusTooManyRequests, codeRateLimited, "too many requests; retry later")
	e.retryAfter = secs
	a.fail(c, e)
}

func bearer(c *gin.Context) (string, bool) {
	h := c.GetHeader("Authorization")
	scheme, token, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}

// authenticate resolves the tenant API key, applies the per-key limit and
// refuses every mutating request of an auditor key before any other work.
func (a *API) authenticate(c *gin.Context) {
	token, ok := bearer(c)
	if !ok {
		a.fail(c, newAPIError(http.StatusUnauthorized, codeUnauthenticated, "an API key is required: Authorization: Bearer tfk_…"))
		return
	}
	key, err := a.keys.Authenticate(c.Request.Context(), token)
	if errors.Is(err, errBadToken) {
		a.fail(c, newAPIError(http.StatusUnauthorized, codeUnauthenticated, "the API key is unknown or revoked"))
		return
	}
	if err != nil {
		a.fail(c, err)
		return
	}
	c.Set(ctxKey, key)
	if ok, wait := a.keyLimiter.allow("key:" + key.KeyID); !ok {
		a.rateLimited(c, wait)
		return
	}
	if key.Role == RoleAuditor && c.Request.Method != http.MethodGet && c.Request.Method != http.MethodHead {
		a.fail(c, newAPIError(http.StatusForbidden, codeForbidden, "auditor keys cannot change anything"))
		return
	}
	c.Next()
}

// operator authenticates the operator key from the configuration.
func (a *API) operator(c *gin.Context) {
	token, ok := bearer(c)
	if a.operatorKey == nil || !ok || subtle.ConstantTimeCompare([]byte(token), a.operatorKey) != 1 {
		a.fail(c, newAPIError(http.StatusUnauthorized, codeUnauthenticated, "the operator key is required"))
		return
	}
	c.Set(ctxOperator, true)
	c.Next()
}

// allow admits only the given roles.
func (a *API) allow(roles ...Role) gin.HandlerFunc {
	return func(c *gin.Context) {
		k := apiKey(c)
		for _, r := range roles {
			if k.Role == r {
				c.Next()
				return
			}
		}
		a.fail(c, newAPIError(http.StatusForbidden, codeForbidden, "this API key's role cannot use this route"))
	}
}

func apiKey(c *gin.Context) APIKey {
	v, _ := c.Get(ctxKey)
	k, _ := v.(APIKey)
	return k
}

// actor names who acts. An app key acts as the user in the path; the other
// roles name a person in X-Actor ("admin:bob"), of a kind the role allows.
func (a *API) actor(c *gin.Context) (domain.Actor, error) {
	k := apiKey(c)
	header := c.GetHeader("X-Actor")
	if k.Role == RoleApp {
		user := c.Param("user_id")
		act := domain.Actor{Kind: domain.ActorUser, ID: user}
		if header != "" && header != "user:"+user {
			return domain.Actor{}, newAPIError(http.StatusBadRequest, codeInvalidActor, "an app key acts as the user in the path; X-Actor, when sent, must be user:<that id>")
		}
		return act, act.Validate()
	}
	if header == "" {
		return domain.Actor{}, newAPIError(http.StatusBadRequest, codeActorRequired, "name the acting person in X-Actor, e.g. X-Actor: admin:bob")
	}
	kind, id, ok := strings.Cut(header, ":")
	act := domain.Actor{Kind: domain.ActorKind(kind), ID: id}
	if !ok || act.Validate() != nil {
		return domain.Actor{}, newAPIError(http.StatusBadRequest, codeInvalidActor, "X-Actor must be kind:id, e.g. admin:bob")
	}
	allowed := map[Role][]domain.ActorKind{
		RoleAdmin:      {domain.ActorAdmin},
		RoleSuperAdmin: {domain.ActorSuperAdmin, domain.ActorAdmin},
		RoleAuditor:    {domain.ActorAuditor},
	}[k.Role]
	for _, kind := range allowed {
		if act.Kind == kind {
			return act, nil
		}
	}
	return domain.Actor{}, newAPIError(http.StatusForbidden, codeForbidden, "this API key cannot act as "+kind)
}

// noRoute and noMethod answer in problem+json too.
func (a *API) noRoute(c *gin.Context) {
	a.fail(c, newAPIError(http.StatusNotFound, codeNotFound, "no such route"))
}

func (a *API) noMethod(c *gin.Context) {
	a.fail(c, newAPIError(http.StatusMethodNotAllowed, codeMethodNotAllowed, "method not allowed on this route"))
}

// contractRoutes reads, per Gin route ("POST /v1/users/:user_id/challenges"),
// what the contract lets a request carry: the body schema of the operations
// that take one, and the names of every operation's query parameters.
func contractRoutes(doc []byte) (bodies map[string]*openapi3.Schema, queries map[string]map[string]bool, err error) {
	spec, err := openapi3.NewLoader().LoadFromData(doc)
	if err != nil {
		return nil, nil, err
	}
	bodies, queries = map[string]*openapi3.Schema{}, map[string]map[string]bool{}
	for path, item := range spec.Paths.Map() {
		route := openapiParam.ReplaceAllString(path, ":$1")
		for method, op := range item.Operations() {
			key := method + " " + route
			queries[key] = map[string]bool{}
			for _, p := range append(append(openapi3.Parameters{}, item.Parameters...), op.Parameters...) {
				if p.Value.In == openapi3.ParameterInQuery {
					queries[key][p.Value.Name] = true
				}
			}
			if op.RequestBody == nil {
				continue
			}
			mt := op.RequestBody.Value.Content.Get("application/json")
			if mt == nil || mt.Schema == nil {
				return nil, nil, fmt.Errorf("%s %s: a body that is not application/json", method, path)
			}
			bodies[key] = mt.Schema.Value
		}
	}
	return bodies, queries, nil
}

var openapiParam = regexp.MustCompile(`\{([a-z_]+)\}`)
