package pace

import (
	"runtime"
	"slices"
	"testing"
	"time"
)

// Until never returns before its time, whatever the platform, and returns at
// once for a time that has passed.
func TestUntilNeverEarly(t *testing.T) {
	s := NewSleeper()
	defer s.Close()
	if runtime.GOOS == "linux" && !s.Precise() {
		t.Fatal("no precise sleep on Linux")
	}
	for i := range 200 {
		at := time.Now().Add(time.Duration(i%7) * 50 * time.Microsecond)
		s.Until(at)
		if now := time.Now(); now.Before(at) {
			t.Fatalf("sleep %d returned %v early", i, at.Sub(now))
		}
	}
	past := time.Now().Add(-time.Hour)
	s.Until(past) // would sleep forever if it took the negative span as unsigned
}

// BenchmarkLateness reports how late Until and time.Sleep wake for a 200 µs
// wait (the spacing of an open loop at 5000 req/s): p50 and p99 per method.
func BenchmarkLateness(b *testing.B) {
	for _, m := range []struct {
		name  string
		sleep func(*Sleeper, time.Time)
	}{
		{"Sleeper", func(s *Sleeper, at time.Time) { s.Until(at) }},
		{"time.Sleep", func(_ *Sleeper, at time.Time) { time.Sleep(time.Until(at)) }},
	} {
		b.Run(m.name, func(b *testing.B) {
			s := NewSleeper()
			defer s.Close()
			late := make([]time.Duration, 0, b.N)
			for b.Loop() {
				at := time.Now().Add(200 * time.Microsecond)
				m.sleep(s, at)
				late = append(late, time.Since(at))
			}
			slices.Sort(late)
			b.ReportMetric(float64(late[len(late)/2].Microseconds()), "p50-late-µs")
			b.ReportMetric(float64(late[len(late)*99/100].Microseconds()), "p99-late-µs")
		})
	}
}
