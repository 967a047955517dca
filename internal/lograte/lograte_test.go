package lograte

import (
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// TestLimit: n lines a period go through; the next one after a suppressed
// run reports how many were dropped, and each drop is counted.
func TestLimit(t *testing.T) {
	for _, period := range []time.Duration{time.Second, time.Minute} {
		c := metrics.NewSet().GetOrCreateCounter("dropped")
		l := New(2, period, c)
		t0 := time.Unix(1000, 0)
		steps := []struct {
			at      time.Duration
			ok      bool
			reports int
		}{
			{0, true, 0},
			{period / 10, true, 0},
			{period / 5, false, 0},
			{period * 9 / 10, false, 0},
			{period, true, 2},
			{period + time.Millisecond, true, 0},
			{period + 2*time.Millisecond, false, 0},
			{5 * period, true, 1},
		}
		for i, s := range steps {
			sup, ok := l.Allow(t0.Add(s.at))
			if ok != s.ok || sup != s.reports {
				t.Fatalf("period %v step %d: Allow = %d %v, want %d %v", period, i, sup, ok, s.reports, s.ok)
			}
		}
		if c.Get() != 3 {
			t.Fatalf("period %v: counted %d drops, want 3", period, c.Get())
		}
	}
	if _, ok := New(0, time.Second, nil).Allow(time.Now()); ok {
		t.Fatal("a limit of 0 let a line through")
	}
}
