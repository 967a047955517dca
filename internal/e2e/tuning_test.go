package e2e

import (
	"fmt"
	"testing"

	"github.com/nowconnect/nowconnect/agent"
	"github.com/nowconnect/nowconnect/hub"
)

// TestTuningExtremes: the data path stays byte-exact at the edges of the
// capacity knobs the sweeps explore (read buffer larger than the window,
// tiny windows and queues, one event loop).
func TestTuningExtremes(t *testing.T) {
	leakCheck(t)
	tgt := startServer(t, exchangeTarget)
	for _, tc := range []struct {
		name            string
		readBuf, window int
		depth, loops    int
	}{
		{"read buffer 256KiB", 256 << 10, 256 << 10, 64, 0},
		{"read buffer 16KiB", 16 << 10, 256 << 10, 64, 0},
		{"window 16KiB, depth 4", 64 << 10, 16 << 10, 4, 0},
		{"window 4MiB, one loop", 64 << 10, 4 << 20, 256, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			th := startHub(t, []string{"x"}, func(c *hub.Config) {
				c.ReadBufferBytes, c.Window, c.QueueDepth, c.EventLoops = tc.readBuf, tc.window, tc.depth, tc.loops
			})
			startAgent(t, th, "a1", map[string]string{"x": tgt.Addr()}, func(c *agent.Config) { c.Window = tc.window })
			for i := 0; i < 4; i++ {
				if err := exchange(th.Addr["x"], uint64(i), 8<<20, 8<<20); err != nil {
					t.Fatal(fmt.Errorf("exchange %d: %w", i, err))
				}
			}
		})
	}
}
