package load

import (
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"
)

// Latencies collects durations from many goroutines.
type Latencies struct {
	mu sync.Mutex
	d  []time.Duration
}

// Add records one duration.
func (l *Latencies) Add(d time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d)
	l.mu.Unlock()
}

// Summary sorts what was recorded and returns its percentiles.
func (l *Latencies) Summary() LatencySummary {
	l.mu.Lock()
	d := slices.Clone(l.d)
	l.mu.Unlock()
	return Summarise(d)
}

// LatencySummary is the distribution of one set of durations.
type LatencySummary struct {
	Count int           `json:"count"`
	Mean  time.Duration `json:"mean_ns"`
	P50   time.Duration `json:"p50_ns"`
	P95   time.Duration `json:"p95_ns"`
	P99   time.Duration `json:"p99_ns"`
	Max   time.Duration `json:"max_ns"`
}

// Summarise computes the percentiles of d (nearest rank); d is sorted in place.
func Summarise(d []time.Duration) LatencySummary {
	if len(d) == 0 {
		return LatencySummary{}
	}
	slices.Sort(d)
	var sum time.Duration
	for _, x := range d {
		sum += x
	}
	return LatencySummary{
		Count: len(d), Mean: sum / time.Duration(len(d)),
		P50: percentile(d, 0.50), P95: percentile(d, 0.95), P99: percentile(d, 0.99), Max: d[len(d)-1],
	}
}

// percentile is the nearest-rank percentile of sorted d.
func percentile(sorted []time.Duration, p float64) time.Duration {
	rank := int(p*float64(len(sorted))+0.999999) - 1
	return sorted[max(0, min(len(sorted)-1, rank))]
}

// Outcomes counts responses by kind ("200", "422 otp_invalid", "transport: …").
type Outcomes struct {
	mu sync.Mutex
	m  map[string]int
}

// Add counts one outcome.
func (o *Outcomes) Add(kind string) {
	o.mu.Lock()
	if o.m == nil {
		o.m = map[string]int{}
	}
	o.m[kind]++
	o.mu.Unlock()
}

// Map returns a copy of the counts.
func (o *Outcomes) Map() map[string]int {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make(map[string]int, len(o.m))
	for k, v := range o.m {
		out[k] = v
	}
	return out
}

// Total is the sum of all counts.
func (o *Outcomes) Total() int {
	n := 0
	for _, v := range o.Map() {
		n += v
	}
	return n
}

// FormatCounts prints counts largest first: "422 otp_invalid ×12, 409 concurrent_change ×1".
func FormatCounts(m map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if m[keys[i]] != m[keys[j]] {
			return m[keys[i]] > m[keys[j]]
		}
		return keys[i] < keys[j]
	})
	s := ""
	for i, k := range keys {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprintf("%s ×%d", k, m[k])
	}
	return s
}

// ms formats a duration in milliseconds with two decimals.
func ms(d time.Duration) string {
	return fmt.Sprintf("%.2f", float64(d)/float64(time.Millisecond))
}
