// Package lograte keeps one log event from flooding the log: at most n
// lines per period go through, the rest are counted in a metric and
// reported by the next line that goes through ("suppressed": k). The hub
// and the agent use it for every line a client or a target can trigger at
// will (connection refused, dial failed, open timeout…).
package lograte

import (
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// Limit is the limiter of one event. Safe from any goroutine.
type Limit struct {
	// set at construction
	n          int
	period     time.Duration
	suppressed *metrics.Counter // may be nil

	mu sync.Mutex
	// guarded by mu
	start   time.Time // of the current period
	used    int       // lines let through in it
	dropped int       // lines suppressed since the last one let through
}

// New returns a limit of n lines per period; suppressed (nil: none)
// counts the lines it holds back.
func New(n int, period time.Duration, suppressed *metrics.Counter) *Limit {
	return &Limit{n: n, period: period, suppressed: suppressed}
}

// Allow reports whether a line may be logged at now, and how many were
// suppressed since the last one that was.
func (l *Limit) Allow(now time.Time) (suppressed int, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.start) >= l.period {
		l.start, l.used = now, 0
	}
	if l.used >= l.n {
		l.dropped++
		if l.suppressed != nil {
			l.suppressed.Inc()
		}
		return 0, false
	}
	l.used++
	d := l.dropped
	l.dropped = 0
	return d, true
}
