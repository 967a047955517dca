package agent

import (
	"sync"
	"time"
)

// dialLogPerSecond bounds the target_dial_failed lines: a dead target under
// a connection storm must not flood the log.
const dialLogPerSecond = 10

// logLimit lets at most n lines of one event through per second; the rest
// are counted (nowconnect_agent_log_suppressed_total{event}) and reported
// by the next line that goes through ("suppressed": k). Safe from any
// goroutine.
type logLimit struct {
	// set at construction
	n          int
	suppressed counter

	mu sync.Mutex
	// guarded by mu
	start   time.Time // of the current second
	used    int       // lines let through in it
	dropped int       // lines suppressed since the last one let through
}

func newLogLimit(n int, suppressed counter) *logLimit {
	return &logLimit{n: n, suppressed: suppressed}
}

// allow reports whether a line may be logged at now, and how many were
// suppressed since the last one that was.
func (l *logLimit) allow(now time.Time) (suppressed int, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.start) >= time.Second {
		l.start, l.used = now, 0
	}
	if l.used >= l.n {
		l.dropped++
		l.suppressed.inc()
		return 0, false
	}
	l.used++
	d := l.dropped
	l.dropped = 0
	return d, true
}
