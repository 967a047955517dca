package agent

import (
	"net"
	"runtime"
	"testing"

	"github.com/nowconnect/nowconnect/codec"
)

// memNow returns live heap and stack bytes after two collections (the
// second empties sync.Pool victim caches).
func memNow() uint64 {
	for range 5 {
		runtime.GC() // each cycle also halves oversized idle stacks
	}
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	lastStack = m.StackInuse
	return m.HeapAlloc + m.StackInuse
}

var lastStack uint64

// TestIdleStreamMemory measures heap+stack per idle tunneled connection:
// 2000 streams opened to a target that never sends, measured once right
// after OPEN_ACK and once after each stream relayed a small request (the
// writer ran and exited, the queue's slot array stays). The figure includes
// the test target's accepted net.TCPConn; the control measurement below
// (plain connection pairs) tells how much that is.
func TestIdleStreamMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	checkLeaks(t)
	const n = 2000
	sink := newTarget(t, nil) // accepts and holds connections, no goroutine each
	hub := newTestHub(t, hubOpts{})
	a := newAgent(t, testConfig([]string{hub.url}, map[string]string{"sink": sink.addr()}, nil))
	stop := runAgent(t, a)
	p := hub.nextPeer(t)
	waitFor(t, "connected", a.Connected)

	// Warm up code paths and pools with one stream.
	p.open(n+1, "sink")
	p.expect(t, codec.FrameOpenAck, n+1)
	p.data(n+1, make([]byte, 100))
	p.send(codec.AppendReason(nil, codec.FrameRst, n+1, codec.ReasonClientReset, ""))
	waitFor(t, "warm-up stream gone", func() bool { return a.ActiveStreams() == 0 })
	sink.mu.Lock()
	sink.conns = make([]net.Conn, 0, n+8)
	sink.mu.Unlock()

	g0 := runtime.NumGoroutine()
	m0 := memNow()
	// One at a time, as clients arrive: a burst of 2000 simultaneous dials
	// would leave 2000 dead goroutine descriptors (the runtime keeps them
	// for reuse), which is not the cost of an idle stream.
	for cid := uint32(1); cid <= n; cid++ {
		p.open(cid, "sink")
		p.expect(t, codec.FrameOpenAck, cid)
	}
	waitFor(t, "accepted", func() bool { sink.mu.Lock(); defer sink.mu.Unlock(); return len(sink.conns) == n })
	s0 := lastStack
	m1 := memNow()
	t.Logf("stack per stream %d B", (lastStack-s0)/n)
	g1 := runtime.NumGoroutine()

	req := make([]byte, 100)
	for cid := uint32(1); cid <= n; cid++ {
		p.data(cid, req)
		if cid%20 == 0 {
			// Writers exit once their queue is empty.
			waitFor(t, "writers idle", func() bool { return runtime.NumGoroutine() <= g1 })
		}
	}
	waitFor(t, "writers idle", func() bool { return runtime.NumGoroutine() <= g1 })
	m2 := memNow()

	perOpen := float64(int64(m1)-int64(m0)) / n
	perUsed := float64(int64(m2)-int64(m0)) / n
	t.Logf("goroutines per idle stream: %.2f", float64(g1-g0)/n)
	t.Logf("heap+stack per idle stream: %.0f B after OPEN, %.0f B after a request (includes the target's accepted conn)", perOpen, perUsed)

	// Control: what one plain loopback connection end costs.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	conns := make([]net.Conn, 0, 2*n)
	c0 := memNow()
	for range n {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c, s)
	}
	perEnd := float64(int64(memNow())-int64(c0)) / (2 * n)
	for _, c := range conns {
		_ = c.Close()
	}
	t.Logf("a plain net.TCPConn end costs %.0f B: agent-only ≈ %.0f B per idle stream", perEnd, perUsed-perEnd)
	// The target is 4 KiB. With targets read by the epoll pollers an idle
	// stream holds no goroutine: measurements run ≈600 B (the stream struct,
	// the target's net.TCPConn with its addresses, the map entry). The
	// guard catches a per-stream goroutine or buffer coming back.
	if !raceEnabled && perUsed-perEnd > 1536 {
		t.Errorf("idle stream costs %.0f B, guard 1536", perUsed-perEnd)
	}
	if g1-g0 > n/100 {
		t.Errorf("%d goroutines for %d idle streams, want none per stream", g1-g0, n)
	}
	stop()
}
