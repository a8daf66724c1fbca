package handlers

import (
	"context"
	"net/http"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/handlers/api"
)

// Metrics holds the service's own Prometheus registry (never the global one),
// so tests and several servers in one process do not collide.
type Metrics struct {
	Registry        *prometheus.Registry
	requestDuration *prometheus.HistogramVec
	commandOutcomes *prometheus.CounterVec
	conflictRetries prometheus.Counter
	handler         http.Handler
}

// NewMetrics creates the registry with the HTTP and command metrics and the Go
// and process collectors.
func NewMetrics() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		requestDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "twofactor_http_request_duration_seconds",
			Help:    "HTTP request latency by method, route template and status.",
			Buckets: []float64{.002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"method", "route", "status"}),
		commandOutcomes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "twofactor_command_outcomes_total",
			Help: "Commands run by the API, by command and outcome (ok, a domain error code, or error).",
		}, []string{"command", "outcome"}),
		conflictRetries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "twofactor_command_conflicts_retried_total",
			Help: "Commands decided again after losing an optimistic-concurrency race.",
		}),
	}
	m.Registry.MustRegister(m.requestDuration, m.commandOutcomes, m.conflictRetries,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.handler = promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry})
	return m
}

// ConflictRetried counts one retry after a concurrency conflict (wired to the command service).
func (m *Metrics) ConflictRetried() { m.conflictRetries.Inc() }

func (m *Metrics) command(name string, err error) {
	outcome := "ok"
	if err != nil {
		outcome = "error"
		if de, ok := domain.AsError(err); ok {
			outcome = de.Code
		}
	}
	m.commandOutcomes.WithLabelValues(name, outcome).Inc()
}

// Metrics answers in Prometheus' text format only, the content type the
// contract lists: the request goes on without its Accept header, which would
// let promhttp answer protobuf to a scraper that asks for it.
func (s strictServer) Metrics(ctx context.Context, _ api.MetricsRequestObject) (api.MetricsResponseObject, error) {
	r := ctx.(*gin.Context).Request.Clone(ctx)
	r.Header.Del("Accept")
	return scrape{h: s.a.metrics.handler, r: r}, nil
}

// scrape writes promhttp's answer (compressed when the scraper accepts it).
type scrape struct {
	h http.Handler
	r *http.Request
}

func (s scrape) VisitMetricsResponse(w http.ResponseWriter) error {
	s.h.ServeHTTP(w, s.r)
	return nil
}
