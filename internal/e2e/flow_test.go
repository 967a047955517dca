package e2e

import (
	"fmt"
	"io"
	"net"
	"os"
	"runtime/pprof"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/nowconnect/nowconnect/agent"
	"github.com/nowconnect/nowconnect/hub"
	"github.com/nowconnect/nowconnect/internal/testenv"
)

// Tests of the flow rules end to end: late frames never reset, windows of
// idle streams never grow, the tunnel-level window bounds a tunnel's
// memory, and protocol versions 1 and 2 interoperate.

// withAgentMetrics gives the agent a metric set the test can read.
func withAgentMetrics(set *metrics.Set) func(*agent.Config) {
	return func(c *agent.Config) { c.Metrics = set }
}

// TestHalfCloseNoResets: twenty clean half-close exchanges end with FIN
// both ways and not one RST on either side, however the late WINDOW frames
// and the FINs cross.
func TestHalfCloseNoResets(t *testing.T) {
	leakCheck(t)
	tgt := startServer(t, exchangeTarget)
	th := startHub(t, []string{"svc"})
	aset := metrics.NewSet()
	startAgent(t, th, "a1", map[string]string{"svc": tgt.Addr()}, withAgentMetrics(aset))
	for i := range 20 {
		// Sizes around the quarter-window credit batches, so that WINDOW
		// frames cross the FINs in both directions.
		if err := exchange(th.Addr["svc"], uint64(i), int64(60_000+i*7919), int64(70_000+i*104_729)); err != nil {
			t.Fatalf("exchange %d: %v", i, err)
		}
	}
	testenv.WaitFor(t, 5*time.Second, "streams to end", func() bool { return th.ActiveStreams() == 0 })
	hubSeries := []string{
		`nowconnect_tcp_rst_total{connector="svc",event="sent"}`,
		`nowconnect_tcp_rst_total{connector="svc",event="recv"}`,
		`nowconnect_tunnel_unknown_cid_total`,
	}
	for _, s := range hubSeries {
		if v := testenv.Metric(t, th.Metrics().WritePrometheus, s); v != 0 {
			t.Errorf("hub %s = %v, want 0", s, v)
		}
	}
	if v := testenv.Metric(t, th.Metrics().WritePrometheus, `nowconnect_tcp_fin_total{connector="svc",event="recv"}`); v != 20 {
		t.Errorf("hub saw %v FINs from the agent, want 20", v)
	}
	// The agent counts resets per reason on first use: none may exist.
	if v, ok := testenv.MetricValue(aset.WritePrometheus, `nowconnect_agent_stream_resets_total{connector="svc",reason="unknown_cid"}`); ok {
		t.Errorf("agent reset %v streams for unknown CIDs", v)
	}
	var b stringsBuilder
	aset.WritePrometheus(&b)
	if b.contains("nowconnect_agent_stream_resets_total") {
		t.Errorf("agent counted resets:\n%s", b.String())
	}
}

// stringsBuilder is a small io.Writer with contains, for expositions.
type stringsBuilder struct{ b []byte }

func (s *stringsBuilder) Write(p []byte) (int, error) { s.b = append(s.b, p...); return len(p), nil }
func (s *stringsBuilder) String() string              { return string(s.b) }
func (s *stringsBuilder) contains(sub string) bool    { return contains(string(s.b), sub) }

// TestIdleStreamsNeverGrow: 1000 streams on one tunnel exchange a few bytes
// and go idle; not one window grows, on the hub or on the agent.
func TestIdleStreamsNeverGrow(t *testing.T) {
	echo := startServer(t, func(c net.Conn) { _, _ = io.Copy(c, c) })
	th := startHub(t, []string{"echo"})
	aset := metrics.NewSet()
	a := startAgent(t, th, "a1", map[string]string{"echo": echo.Addr()}, withAgentMetrics(aset),
		func(c *agent.Config) { c.Tunnels = 1 })
	const n = 1000
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	buf := make([]byte, 64)
	for i := range n {
		c, err := net.Dial("tcp", th.Addr["echo"])
		if err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		conns = append(conns, c)
		if _, err := c.Write(buf); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatalf("echo %d: %v", i, err)
		}
	}
	testenv.WaitFor(t, 10*time.Second, "1000 streams", func() bool { return a.ActiveStreams() == n })
	// Idle for several ping rounds (RTT samples keep arriving meanwhile).
	pings := testenv.Metric(t, th.Metrics().WritePrometheus, `nowconnect_tunnel_rtt_seconds_count`)
	testenv.WaitFor(t, 10*time.Second, "two more pings", func() bool {
		return testenv.Metric(t, th.Metrics().WritePrometheus, `nowconnect_tunnel_rtt_seconds_count`) >= pings+2
	})
	if v := testenv.Metric(t, th.Metrics().WritePrometheus, `nowconnect_stream_window_growths_total`); v != 0 {
		t.Errorf("hub grew %v windows of idle streams", v)
	}
	if v := testenv.Metric(t, aset.WritePrometheus, `nowconnect_agent_stream_window_growths_total`); v != 0 {
		t.Errorf("agent grew %v windows of idle streams", v)
	}
}

// TestTunnelWindowHolds: 512 streams whose clients (or targets) do not read
// while the other side sends. Their stream windows add up to 128 MiB; the
// tunnel-level window (8 MiB here) bounds what the receiving side holds,
// and once they read again every byte arrives.
func TestTunnelWindowHolds(t *testing.T) {
	const (
		streams = 512
		each    = 320 << 10 // more than a stream window (256 KiB)
		tunnelW = 8 << 20
	)
	src := startServer(t, func(c net.Conn) { _, _ = io.CopyN(c, newPRNG(3), each) })
	th := startHub(t, []string{"src"}, func(c *hub.Config) {
		c.TunnelWindow, c.MaxWindow = tunnelW, 1<<20
		c.SocketSendBuffer = 4096 // the kernel must not absorb what the windows hold back
	})
	startAgent(t, th, "a1", map[string]string{"src": src.Addr()}, func(c *agent.Config) { c.Tunnels = 1 })
	idle := heapInUse()

	// Clients with a tiny receive buffer that read nothing yet: the hub
	// cannot hand their bytes to the kernel, so what it holds is what the
	// windows let in.
	d := net.Dialer{Control: smallRcvbuf}
	conns := make([]net.Conn, streams)
	for i := range conns {
		c, err := d.Dial("tcp", th.Addr["src"])
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns[i] = c
	}
	// The agent stops reading once the tunnel window is used up: the
	// total a2c bytes settle at about the tunnel window plus what the
	// clients' kernels took.
	a2c := `nowconnect_tcp_bytes_total{direction="a2c",connector="src"}`
	settled := waitStable(t, 30*time.Second, 500*time.Millisecond, "a2c bytes settle", func() int64 {
		return int64(testenv.Metric(t, th.Metrics().WritePrometheus, a2c))
	})
	held := int64(heapInUse()) - int64(idle)
	t.Logf("a2c settled at %d MiB of %d MiB; heap above idle: %d MiB", settled>>20, streams*each>>20, held>>20)
	if settled >= streams*each/4 {
		t.Fatalf("%d MiB went through with no client reading: the tunnel window did not hold", settled>>20)
	}
	if held > 3*tunnelW {
		t.Fatalf("heap grew by %d MiB; the tunnel window is %d MiB", held>>20, tunnelW>>20)
	}
	if testenv.Metric(t, th.Metrics().WritePrometheus, `nowconnect_tunnel_credit_waits_total`) == 0 {
		t.Log("no stream waited for tunnel credit (the agent was held back by the tunnel window before any stream ran out of its own)")
	}
	// Now everybody reads: all the bytes arrive, byte-exact.
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	for i, c := range conns {
		wg.Go(func() {
			if err := readSame(c, newPRNG(3), each); err != nil {
				errs <- fmt.Errorf("stream %d: %w", i, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// TestTunnelWindowHoldsUploads is TestTunnelWindowHolds the other way: 512
// clients upload to targets that read nothing yet. The agent writes to
// the targets with a 4 KiB send buffer (target_send_buffer) and the
// targets' receive buffers are 4 KiB, so the kernel absorbs little; the
// agent's tunnel window (8 MiB) bounds what it holds for them, and the
// hub stops reading its clients.
func TestTunnelWindowHoldsUploads(t *testing.T) {
	const (
		streams = 512
		each    = 320 << 10 // more than a stream window (256 KiB)
		tunnelW = 8 << 20
		// readBuffer is the hub's engine.read_buffer_bytes default.
		readBuffer = 64 << 10
	)
	release := make(chan struct{})
	var freeOnce sync.Once
	free := func() { freeOnce.Do(func() { close(release) }) }
	defer free() // a failure must not leave the targets waiting
	var got sync.WaitGroup
	got.Add(streams)
	errs := make(chan error, streams)
	dst := startServerWith(t, net.ListenConfig{Control: smallRcvbuf}, func(c net.Conn) {
		defer got.Done()
		<-release
		if err := readSame(c, newPRNG(5), each); err != nil {
			errs <- err
		}
	})
	th := startHub(t, []string{"dst"})
	startAgent(t, th, "a1", map[string]string{"dst": dst.Addr()}, func(c *agent.Config) {
		c.Tunnels, c.TunnelWindow, c.MaxWindow, c.TargetSendBuffer = 1, tunnelW, 1<<20, 4096
	})
	// One payload for every client, so that the clients' own buffers do
	// not count in the heap below.
	payload := make([]byte, each)
	_, _ = io.ReadFull(newPRNG(5), payload)
	idle := heapInUse()

	conns := make([]net.Conn, streams)
	var sent sync.WaitGroup
	for i := range conns {
		c, err := net.Dial("tcp", th.Addr["dst"])
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns[i] = c
		sent.Go(func() { _, _ = c.Write(payload) })
	}
	c2a := `nowconnect_tcp_bytes_total{direction="c2a",connector="dst"}`
	settled := waitStable(t, 30*time.Second, 500*time.Millisecond, "c2a bytes settle", func() int64 {
		return int64(testenv.Metric(t, th.Metrics().WritePrometheus, c2a))
	})
	held := int64(heapInUse()) - int64(idle)
	if f, err := os.Create("/tmp/heap.prof"); err == nil {
		_ = pprof.WriteHeapProfile(f)
		f.Close()
	}
	t.Logf("c2a settled at %d MiB of %d MiB; heap above idle: %d MiB", settled>>20, streams*each>>20, held>>20)
	if settled >= streams*each/4 {
		t.Fatalf("%d MiB went through with no target reading: the agent's tunnel window did not hold", settled>>20)
	}
	// The agent holds what the tunnel window let in. The hub holds, for
	// each client it was reading when the credit ran out, at most that
	// one read (gnet reads a whole read buffer before the hub sees it):
	// the bytes past the credit wait in the stream until it returns.
	if bound := 3*tunnelW + streams*readBuffer; held > int64(bound) {
		t.Fatalf("heap grew by %d MiB; the tunnel window is %d MiB, plus one %d KiB read per client: %d MiB",
			held>>20, tunnelW>>20, readBuffer>>10, bound>>20)
	}
	// Now the targets read: every byte arrives, byte-exact.
	free()
	done := make(chan struct{})
	go func() { got.Wait(); sent.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(exchangeDeadline):
		t.Fatal("the uploads did not complete once the targets read")
	}
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}
