package testenv

import (
	"io"
	"strings"
	"testing"
	"time"
)

func TestRedisPauseResumeDoFlushAll(t *testing.T) {
	t.Parallel()
	r := StartRedis(t)
	if r.Pid() <= 0 {
		t.Fatalf("Pid = %d", r.Pid())
	}
	if got := r.Do(t, "SET", "k", "v w", "PX", "60000"); got != "OK" {
		t.Fatalf("SET = %#v", got)
	}
	if got := r.Do(t, "GET", "k"); got != "v w" {
		t.Fatalf("GET = %#v", got)
	}
	if got := r.Do(t, "GET", "missing"); got != nil {
		t.Fatalf("GET missing = %#v", got)
	}
	if got, ok := r.Do(t, "PTTL", "k").(int64); !ok || got <= 0 {
		t.Fatalf("PTTL = %#v", got)
	}
	if got, ok := r.Do(t, "MGET", "k", "missing").([]any); !ok || len(got) != 2 || got[0] != "v w" || got[1] != nil {
		t.Fatalf("MGET = %#v", got)
	}
	if _, err := redisDo(t.Context(), r.Addr, "NOSUCHCOMMAND"); err == nil || !strings.Contains(err.Error(), "error reply") {
		t.Fatalf("unknown command: %v", err)
	}
	r.FlushAll(t)
	if got := r.Do(t, "DBSIZE"); got != int64(0) {
		t.Fatalf("DBSIZE after FLUSHALL = %#v", got)
	}

	r.Pause(t)
	start := time.Now()
	if err := r.Ping(); err == nil {
		t.Fatal("a paused redis-server answered PING")
	}
	t.Logf("PING to the paused server failed after %v", time.Since(start).Round(time.Millisecond))
	r.Resume(t)
	if err := r.Ping(); err != nil {
		t.Fatalf("PING after Resume: %v", err)
	}
	r.Pause(t) // the cleanup continues it before stopping it
}

func TestMetricValue(t *testing.T) {
	t.Parallel()
	write := func(w io.Writer) {
		io.WriteString(w, "a_total{op=\"x\"} 3\na_total 7\nb 1.5\n")
	}
	for series, want := range map[string]float64{`a_total{op="x"}`: 3, `a_total`: 7, `b`: 1.5} {
		if got := Metric(t, write, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	if _, ok := MetricValue(write, `a_total{op="y"}`); ok {
		t.Error("a missing series was found")
	}
	if _, ok := MetricValue(write, `a`); ok {
		t.Error("a name prefix matched another series")
	}
}
