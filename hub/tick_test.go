package hub

import (
	"testing"
	"time"
)

func TestTickFor(t *testing.T) {
	def := Config{PingInterval: 15 * time.Second, PingTimeout: 45 * time.Second,
		HandshakeTimeout: 10 * time.Second, RequestTimeout: 10 * time.Second}
	short := def
	short.PingInterval = 200 * time.Millisecond
	idle := def
	idle.IdleTimeout = 400 * time.Millisecond // walked by streamScan, not the tick
	tiny := def
	tiny.RequestTimeout = time.Millisecond
	for _, tc := range []struct {
		name string
		cfg  Config
		want time.Duration
	}{
		{"defaults", def, maxTick},
		{"short pings", short, 50 * time.Millisecond},
		{"idle timeout", idle, maxTick},
		{"floor", tiny, minTick},
	} {
		if got := tickFor(tc.cfg); got != tc.want {
			t.Errorf("%s: tickFor = %v, want %v", tc.name, got, tc.want)
		}
	}
}
