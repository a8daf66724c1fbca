package projections

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics exports, per read model, the applied position and the lag behind the
// head of the log (read from the database at each scrape, so every process
// reports the same values), and the projector's own counters.
type Metrics struct {
	pool    *pgxpool.Pool
	timeout time.Duration

	events   *prometheus.CounterVec
	batch    *prometheus.HistogramVec
	written  *prometheus.CounterVec
	isolated *prometheus.CounterVec
	heldBack *prometheus.CounterVec

	head    *prometheus.Desc
	applied *prometheus.Desc
	lag     *prometheus.Desc
	lagSecs *prometheus.Desc
	up      *prometheus.Desc
	stalled *prometheus.Desc
}

// NewMetrics registers the read-side metrics on reg (never the global registry).
func NewMetrics(pool *pgxpool.Pool, reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		pool:    pool,
		timeout: 2 * time.Second,
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "twofactor_read_model_events_total",
			Help: "Events handled by this process's projector and committed, by outcome (applied, duplicate).",
		}, []string{"read_model", "outcome"}),
		batch: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "twofactor_read_model_write_seconds",
			Help:    "Time to write one batch of read-model changes.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1},
		}, []string{"read_model"}),
		written: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "twofactor_read_model_rows_written_total",
			Help: "Rows written by this process's projector, by table.",
		}, []string{"read_model", "table"}),
		isolated: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "twofactor_consumer_isolated_events_total",
			Help: "Events this process's consumers could never apply and isolated, stalling their tenant (alert when it grows).",
		}, []string{"consumer"}),
		heldBack: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "twofactor_consumer_held_back_events_total",
			Help: "Events of a stalled tenant this process's consumers held back.",
		}, []string{"consumer"}),
		stalled: prometheus.NewDesc("twofactor_consumer_stalled",
			"Tenants a consumer is stalled for (an isolated event, see consumer_stalls); alert when above 0.", []string{"consumer"}, nil),
		head: prometheus.NewDesc("twofactor_event_log_head_position",
			"Highest position in the event log.", nil, nil),
		applied: prometheus.NewDesc("twofactor_read_model_applied_position",
			"Position of the last event the read model applied (in log order: every event before it is applied).", []string{"read_model"}, nil),
		lag: prometheus.NewDesc("twofactor_read_model_lag_events",
			"Committed events the read model has not applied yet.", []string{"read_model"}, nil),
		lagSecs: prometheus.NewDesc("twofactor_read_model_lag_seconds",
			"Age of the oldest committed event the read model has not applied (0 when caught up).", []string{"read_model"}, nil),
		up: prometheus.NewDesc("twofactor_read_model_scrape_ok",
			"1 if the read-model positions could be read at this scrape.", nil, nil),
	}
	for _, c := range []prometheus.Collector{m.events, m.batch, m.written, m.isolated, m.heldBack, m} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *Metrics) observeBatch(applied, duplicates int, w written, d time.Duration, wrote bool) {
	m.events.WithLabelValues(UserStatusModel, "applied").Add(float64(applied))
	m.events.WithLabelValues(UserStatusModel, "duplicate").Add(float64(duplicates))
	if wrote {
		m.batch.WithLabelValues(UserStatusModel).Observe(d.Seconds())
	}
	m.written.WithLabelValues(UserStatusModel, "user_status").Add(float64(w.rows + w.deleted))
	m.written.WithLabelValues(UserStatusModel, "user_status_state").Add(float64(w.states))
}

func (m *Metrics) observeStalls(consumer string, isolated, heldBack int) {
	m.isolated.WithLabelValues(consumer).Add(float64(isolated))
	m.heldBack.WithLabelValues(consumer).Add(float64(heldBack))
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.stalled
	ch <- m.head
	ch <- m.applied
	ch <- m.lag
	ch <- m.lagSecs
	ch <- m.up
}

// Collect implements prometheus.Collector: one query per scrape.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), m.timeout)
	defer cancel()
	rows, err := m.pool.Query(ctx, `SELECT c.read_model, c.position,
			(SELECT coalesce(max(position), 0) FROM events),
			(SELECT count(*) FROM events e WHERE (e.transaction_id, e.position) > (c.transaction_id, c.position)),
			coalesce(extract(epoch FROM now() - (SELECT min(recorded_at) FROM (
				SELECT recorded_at FROM events e WHERE (e.transaction_id, e.position) > (c.transaction_id, c.position)
				ORDER BY e.transaction_id, e.position LIMIT 1) f)), 0)::float8
		FROM read_model_checkpoints c ORDER BY c.read_model`)
	ok := 0.0
	if err == nil {
		defer rows.Close()
		var head int64
		for rows.Next() {
			var name string
			var pos, lag int64
			var lagSecs float64
			if err = rows.Scan(&name, &pos, &head, &lag, &lagSecs); err != nil {
				break
			}
			ch <- prometheus.MustNewConstMetric(m.applied, prometheus.GaugeValue, float64(pos), name)
			ch <- prometheus.MustNewConstMetric(m.lag, prometheus.GaugeValue, float64(lag), name)
			ch <- prometheus.MustNewConstMetric(m.lagSecs, prometheus.GaugeValue, max(lagSecs, 0), name)
		}
		if err == nil {
			err = rows.Err()
		}
		if err == nil {
			ok = 1
			ch <- prometheus.MustNewConstMetric(m.head, prometheus.GaugeValue, float64(head))
		}
	}
	if ok == 1 {
		ok = m.collectStalls(ctx, ch)
	}
	ch <- prometheus.MustNewConstMetric(m.up, prometheus.GaugeValue, ok)
}

// collectStalls reports every consumer group known to the database, 0 when it
// is not stalled, so an alert has a series to watch before the first stall.
func (m *Metrics) collectStalls(ctx context.Context, ch chan<- prometheus.Metric) float64 {
	rows, err := m.pool.Query(ctx, `SELECT g.consumer, count(s.tenant_id)
		FROM (SELECT consumer_group AS consumer FROM watermill_offsets_twofactor_events
			UNION SELECT $1 UNION SELECT consumer FROM consumer_stalls) g
		LEFT JOIN consumer_stalls s ON s.consumer = g.consumer
		WHERE g.consumer NOT LIKE 'forwarder%'
		GROUP BY g.consumer ORDER BY g.consumer`, UserStatusGroup)
	if err != nil {
		return 0
	}
	defer rows.Close()
	for rows.Next() {
		var name string
		var n int64
		if err := rows.Scan(&name, &n); err != nil {
			return 0
		}
		ch <- prometheus.MustNewConstMetric(m.stalled, prometheus.GaugeValue, float64(n), name)
	}
	if rows.Err() != nil {
		return 0
	}
	return 1
}
