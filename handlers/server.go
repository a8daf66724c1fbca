// Package handlers is the Gin HTTP API: routes under /v1, API-key authentication,
// the one error mapping to RFC 9457 problem+json (problem.go), idempotency,
// rate limits, strict JSON, health, metrics and the OpenAPI document.
package handlers

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/twofactor/twofactor/commands"
)

// OpenAPI is the contract, served at /openapi.yaml and checked against real responses by the tests.
//
//go:embed openapi.yaml
var OpenAPI []byte

// Config tunes the HTTP layer. Zero values take the defaults of DefaultConfig.
type Config struct {
	// MaxBodyBytes caps every request body (413 above it).
	MaxBodyBytes int64
	// RequestTimeout bounds the work of one request.
	RequestTimeout time.Duration
	// KeyRate/KeyBurst: requests per second and burst per API key; IPRate/IPBurst per client IP.
	// A rate of 0 takes the default; a negative rate switches that limit off.
	KeyRate, IPRate   float64
	KeyBurst, IPBurst int
	// ReadWait bounds how long a read waits for the read model to reach min_position.
	ReadWait time.Duration
	// TrustedProxies may set X-Forwarded-For; none by default, so the client IP is the peer.
	TrustedProxies []string
	// IdempotencyTTL is how long a stored first response is replayed.
	IdempotencyTTL time.Duration
}

// DefaultConfig holds the defaults.
func DefaultConfig() Config {
	return Config{
		MaxBodyBytes:   64 << 10,
		RequestTimeout: 15 * time.Second,
		KeyRate:        50, KeyBurst: 100,
		IPRate: 20, IPBurst: 60,
		ReadWait:       2 * time.Second,
		IdempotencyTTL: 24 * time.Hour,
	}
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.MaxBodyBytes <= 0 {
		c.MaxBodyBytes = d.MaxBodyBytes
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = d.RequestTimeout
	}
	if c.KeyRate == 0 {
		c.KeyRate, c.KeyBurst = d.KeyRate, d.KeyBurst
	}
	if c.IPRate == 0 {
		c.IPRate, c.IPBurst = d.IPRate, d.IPBurst
	}
	if c.ReadWait <= 0 {
		c.ReadWait = d.ReadWait
	}
	if c.IdempotencyTTL <= 0 {
		c.IdempotencyTTL = d.IdempotencyTTL
	}
	return c
}

// ReadyCheck is one condition of /readyz.
type ReadyCheck struct {
	Name  string
	Check func(context.Context) error
	// Explain: the check's error is meant for operators and is shown in the
	// body's details (others may quote internals and are only logged).
	Explain bool
	// Degrades: while failing, the process still serves every tenant (a
	// consumer stalled for one tenant): /readyz says "degraded" and names it,
	// but answers 200, so that a load balancer keeps sending traffic and one
	// tenant's bad event never takes the API down for the others.
	Degrades bool
}

// Deps are the ports the API drives.
type Deps struct {
	Commands *commands.Service
	Pool     *pgxpool.Pool
	Keys     *KeyStore
	// Reads answers the admin list and coverage; nil answers 501 there and
	// replays streams for single-user status.
	Reads ReadModels
	// Audit answers the auditor routes; nil answers 501.
	Audit AuditLog
	// Secrets derives the idempotency sealing keys (a *secrets.CodeHasher): a
	// stored response can hold backup codes, so it is sealed under a key the
	// database never sees.
	Secrets KeyDeriver
	Metrics *Metrics
	Log     *slog.Logger
	Clock   func() time.Time
	// OperatorKey protects /v1/operator; empty switches the operator routes off.
	OperatorKey string
	// Ready lists extra readiness checks (migrations, consumers); the database ping is built in.
	Ready []ReadyCheck
}

// API is the HTTP API.
type API struct {
	cfg Config
	// bodies: the body schema of each route that takes one (from the contract).
	bodies map[string]*openapi3.Schema
	// queries: the query parameters of each route (from the contract).
	queries     map[string]map[string]bool
	cmd         *commands.Service
	pool        *pgxpool.Pool
	keys        *KeyStore
	reads       ReadModels
	audit       AuditLog
	metrics     *Metrics
	log         *slog.Logger
	now         func() time.Time
	operatorKey []byte
	idem        *idempotency
	keyLimiter  *limiter
	ipLimiter   *limiter
	ready       []ReadyCheck
	engine      *gin.Engine
}

// New builds the API and its Gin engine.
func New(cfg Config, d Deps) (*API, error) {
	cfg = cfg.withDefaults()
	if d.Commands == nil || d.Pool == nil || d.Keys == nil || d.Secrets == nil {
		return nil, errors.New("handlers: Commands, Pool, Keys and Secrets are required")
	}
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	if d.Clock == nil {
		d.Clock = time.Now
	}
	if d.Metrics == nil {
		d.Metrics = NewMetrics()
	}
	a := &API{
		cfg: cfg, cmd: d.Commands, pool: d.Pool, keys: d.Keys, reads: d.Reads, audit: d.Audit,
		metrics: d.Metrics, log: d.Log, now: d.Clock, ready: d.Ready,
		keyLimiter: newLimiter(cfg.KeyRate, cfg.KeyBurst),
		ipLimiter:  newLimiter(cfg.IPRate, cfg.IPBurst),
	}
	if d.OperatorKey != "" {
		a.operatorKey = []byte(d.OperatorKey)
	}
	a.idem = &idempotency{pool: d.Pool, secrets: d.Secrets, ttl: cfg.IdempotencyTTL, now: d.Clock}
	bodies, queries, err := contractRoutes(OpenAPI)
	if err != nil {
		return nil, fmt.Errorf("handlers: openapi.yaml: %w", err)
	}
	a.bodies, a.queries = bodies, queries
	engine := gin.New()
	if err := engine.SetTrustedProxies(cfg.TrustedProxies); err != nil {
		return nil, fmt.Errorf("handlers: trusted proxies: %w", err)
	}
	engine.HandleMethodNotAllowed = true
	// No redirects: a path the contract does not list (a trailing slash, an
	// empty id) answers the documented 404 problem, not an HTML 301.
	engine.RedirectTrailingSlash = false
	engine.RedirectFixedPath = false
	// Raw paths keep %2F inside a user id from splitting the path.
	engine.UseRawPath = true
	engine.UnescapePathValues = true
	engine.ContextWithFallback = true
	a.engine = engine
	a.routes()
	return a, nil
}

// Handler is the http.Handler to serve.
func (a *API) Handler() http.Handler { return a.engine }

// Engine exposes the Gin engine (tests list its routes).
func (a *API) Engine() *gin.Engine { return a.engine }

// Metrics returns the registry holder, so other components can add collectors.
func (a *API) Metrics() *Metrics { return a.metrics }

// PurgeIdempotency deletes expired idempotency records; serve calls it periodically.
func (a *API) PurgeIdempotency(ctx context.Context) (int64, error) { return a.idem.purge(ctx) }

// NewServer wraps a handler in an http.Server with timeouts on every phase.
func NewServer(addr string, h http.Handler, requestTimeout time.Duration) *http.Server {
	if requestTimeout <= 0 {
		requestTimeout = DefaultConfig().RequestTimeout
	}
	return &http.Server{
		Addr:              addr,
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      requestTimeout + 10*time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    32 << 10,
	}
}
