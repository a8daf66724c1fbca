package handlers

import (
	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/twofactor/twofactor/domain"
)

// Metrics holds the service's own Prometheus registry (never the global one),
// so tests and several servers in one process do not collide.
type Metrics struct {
	Registry        *prometheus.Registry
	requestDuration *prometheus.HistogramVec
	commandOutcomes *prometheus.CounterVec
	conflictRetries prometheus.Counter
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

func (m *Metrics) handler() gin.HandlerFunc {
	h := promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry})
	return gin.WrapH(h)
}
