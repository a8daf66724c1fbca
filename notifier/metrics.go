package notifier

import (
	"context"
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the notifier's Prometheus collectors.
//
//	twofactor_notifications_sent_total{kind,channel}      delivered (handed to SMTP / the SMS provider)
//	twofactor_notifications_failures_total{kind}           failed attempts (retried, or the last one)
//	twofactor_notifications_dead_total{kind}               notifications that gave up, by this process
//	twofactor_notifications_skipped_total{kind,reason}     nothing to send (no address, code expired, erased)
//	twofactor_notifications{status}                        pending, sending and dead ledger rows, all workers (refreshed periodically)
//	twofactor_notification_delivery_seconds{channel}       from the event to its delivery
type metrics struct {
	sent     *prometheus.CounterVec
	failures *prometheus.CounterVec
	dead     *prometheus.CounterVec
	skipped  *prometheus.CounterVec
	ledger   *prometheus.GaugeVec
	latency  *prometheus.HistogramVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "twofactor_notifications_sent_total", Help: "Notifications handed to the SMTP server or SMS provider.",
		}, []string{"kind", "channel"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "twofactor_notifications_failures_total", Help: "Failed delivery attempts.",
		}, []string{"kind"}),
		dead: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "twofactor_notifications_dead_total", Help: "Notifications given up after the maximum number of attempts.",
		}, []string{"kind"}),
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "twofactor_notifications_skipped_total", Help: "Notifications with nothing to send.",
		}, []string{"kind", "reason"}),
		ledger: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "twofactor_notifications", Help: "Pending, sending and dead notifications in the ledger (all workers). Alert on status=\"dead\" > 0.",
		}, []string{"status"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "twofactor_notification_delivery_seconds",
			Help:    "Time from the event to the delivery of its notification.",
			Buckets: []float64{0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600},
		}, []string{"channel"}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.sent, m.failures, m.dead, m.skipped, m.ledger, m.latency} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return nil, errors.New("notifier: metrics already registered (one notifier per registry)")
			}
			return nil, err
		}
	}
	return m, nil
}

// refreshLedger sets the ledger gauge from the table.
func (n *Notifier) refreshLedger(ctx context.Context) error {
	rows, err := n.pool.Query(ctx, `SELECT status, count(*) FROM notifications
		WHERE status IN ('pending', 'sending', 'dead') GROUP BY status`)
	if err != nil {
		return err
	}
	defer rows.Close()
	// Only the open and dead rows: both are served by partial indexes.
	counts := map[string]float64{"pending": 0, "sending": 0, "dead": 0}
	for rows.Next() {
		var status string
		var count int64
		if err := rows.Scan(&status, &count); err != nil {
			return err
		}
		counts[status] = float64(count)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	for status, c := range counts {
		n.metrics.ledger.WithLabelValues(status).Set(c)
	}
	return nil
}
