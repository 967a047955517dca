package hub

import (
	"sync"
	"syscall"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// Descriptor budget. Running out of descriptors must never leave the hub
// alive but deaf, so it caps the client connections it holds below
// RLIMIT_NOFILE and keeps the rest for what must go on working: the control
// port (/healthz, /metrics, agents' tunnels), the descriptors a stream
// needs for a moment while it is handed to a loop, parked or half-closed,
// and the process's own files. A client beyond the cap is accepted and
// reset at once (counted as listener_errors_total{type="accept"}, logged at
// a limited rate); the engine's accept loops survive EMFILE anyway (see
// package engine), so a limit hit by something else costs only the
// connections that arrive meanwhile. Go raises the soft limit to the hard
// limit at start, so the budget is taken from the limit in force.
const (
	minFDReserve = 64
	maxFDReserve = 1024
)

// defaultMaxConnections derives the cap from RLIMIT_NOFILE: a quarter of it
// (64..1024 descriptors) is kept in reserve.
func defaultMaxConnections() int64 {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Cur == 0 {
		return 1 << 20
	}
	n := int64(rl.Cur)
	if rl.Cur > 1<<40 { // RLIM_INFINITY
		return 1 << 30
	}
	reserve := min(max(n/4, minFDReserve), maxFDReserve)
	return max(n-reserve, 1)
}

// rateLimit lets through at most n events per period and counts the rest in
// a metric and for the next line that goes through. Safe from any
// goroutine.
type rateLimit struct {
	n          int
	period     time.Duration
	suppressed *metrics.Counter

	mu      sync.Mutex // guards the fields below
	start   time.Time
	used    int
	dropped int
}

func newRateLimit(n int, period time.Duration, suppressed *metrics.Counter) *rateLimit {
	return &rateLimit{n: n, period: period, suppressed: suppressed}
}

// allow reports whether the event may be logged, and how many were
// suppressed since the last one that was.
func (r *rateLimit) allow() (suppressed int, ok bool) {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if now.Sub(r.start) >= r.period {
		r.start, r.used = now, 0
	}
	if r.used >= r.n {
		r.dropped++
		r.suppressed.Inc()
		return 0, false
	}
	r.used++
	d := r.dropped
	r.dropped = 0
	return d, true
}
