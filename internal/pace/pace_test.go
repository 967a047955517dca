package pace

import (
	"context"
	"errors"
	"runtime"
	"slices"
	"testing"
	"time"
)

// Until never returns before its time, in both of its stretches, and returns
// at once for a time that has passed.
func TestUntilNeverEarly(t *testing.T) {
	if runtime.GOOS == "linux" && !Precise() {
		t.Fatal("no precise sleep on Linux")
	}
	ctx := context.Background()
	for i := range 100 {
		// 0–300 µs (precise stretch only), and every tenth 2–5 ms (both)
		d := time.Duration(i%7) * 50 * time.Microsecond
		if i%10 == 0 {
			d = coarse + time.Duration(i%4)*time.Millisecond
		}
		at := time.Now().Add(d)
		if err := Until(ctx, at); err != nil {
			t.Fatal(err)
		}
		if now := time.Now(); now.Before(at) {
			t.Fatalf("wait %d of %v returned %v early", i, d, at.Sub(now))
		}
	}
	if err := Until(ctx, time.Now().Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
}

// A cancelled context ends a long wait at once, with its error.
func TestUntilCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- Until(ctx, time.Now().Add(time.Hour)) }()
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Until returned %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Until still sleeping 10 s after its context was cancelled")
	}
	if err := Until(ctx, time.Now().Add(100*time.Microsecond)); !errors.Is(err, context.Canceled) {
		t.Fatalf("Until on a done context returned %v", err)
	}
}

// BenchmarkLateness reports how late Until and time.Sleep wake for a 200 µs
// wait (the spacing of an open loop at 5000 req/s): p50 and p99 per method.
func BenchmarkLateness(b *testing.B) {
	ctx := context.Background()
	for _, m := range []struct {
		name  string
		sleep func(time.Time)
	}{
		{"Until", func(at time.Time) { _ = Until(ctx, at) }},
		{"time.Sleep", func(at time.Time) { time.Sleep(time.Until(at)) }},
	} {
		b.Run(m.name, func(b *testing.B) {
			late := make([]time.Duration, 0, b.N)
			for b.Loop() {
				at := time.Now().Add(200 * time.Microsecond)
				m.sleep(at)
				late = append(late, time.Since(at))
			}
			slices.Sort(late)
			b.ReportMetric(float64(late[len(late)/2].Microseconds()), "p50-late-µs")
			b.ReportMetric(float64(late[len(late)*99/100].Microseconds()), "p99-late-µs")
		})
	}
}
