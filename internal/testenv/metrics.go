package testenv

import (
	"bytes"
	"io"
	"strconv"
	"strings"
	"testing"
)

// Metric returns the value of one series in the Prometheus text that write produces
// (e.g. (*metrics.Set).WritePrometheus). series is the name with its labels exactly as
// exposed: `nowconnect_registry_up`, `nowconnect_registry_errors_total{op="claim"}`.
// A missing series fails the test: a test must not pass by reading a metric that
// does not exist.
func Metric(t testing.TB, write func(io.Writer), series string) float64 {
	t.Helper()
	v, ok := MetricValue(write, series)
	if !ok {
		var buf bytes.Buffer
		write(&buf)
		t.Fatalf("testenv: metric series %s not exposed; exposition:\n%s", series, buf.String())
	}
	return v
}

// MetricValue is Metric without the test: it reports whether the series exists (for
// polling with WaitFor).
func MetricValue(write func(io.Writer), series string) (float64, bool) {
	var buf bytes.Buffer
	write(&buf)
	for _, line := range strings.Split(buf.String(), "\n") {
		rest, ok := strings.CutPrefix(line, series+" ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
		if err != nil {
			return 0, false
		}
		return v, true
	}
	return 0, false
}
