package wanlink_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/internal/testenv"
	"github.com/nowconnect/nowconnect/internal/wanlink"
)

const pkgPrefix = "github.com/nowconnect/nowconnect/internal/wanlink."

// startLink starts a link; the cleanup closes it and fails the test if
// any goroutine of the package is still running.
func startLink(t testing.TB, cfg wanlink.Config) *wanlink.Link {
	t.Helper()
	l, err := wanlink.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		testenv.WaitGoroutinesGone(t, 5*time.Second, pkgPrefix)
	})
	return l
}

// server is a target: handle runs in a goroutine per accepted connection
// (which it closes when handle returns). The cleanup closes everything and
// waits for the handlers.
type server struct {
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns []net.Conn
}

func serve(t testing.TB, handle func(c *net.TCPConn)) *server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &server{ln: ln}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer c.Close()
				handle(c.(*net.TCPConn))
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		s.mu.Lock()
		for _, c := range s.conns {
			_ = c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func (s *server) addr() string { return s.ln.Addr().String() }

func (s *server) accepted() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// echo copies back until EOF, then closes its write side.
func echo(c *net.TCPConn) {
	_, _ = io.Copy(c, c)
	_ = c.CloseWrite()
}

func dial(t testing.TB, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c.(*net.TCPConn)
}

// roundTrip sends one byte and waits for it to come back.
func roundTrip(t testing.TB, c net.Conn) time.Duration {
	t.Helper()
	var b [1]byte
	start := time.Now()
	if _, err := c.Write(b[:]); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, b[:]); err != nil {
		t.Fatal(err)
	}
	return time.Since(start)
}

func median(ds []time.Duration) time.Duration {
	ds = slices.Clone(ds)
	slices.Sort(ds)
	return ds[len(ds)/2]
}

// TestDelayHonoured: every echo round trip takes at least 2×Delay, and
// the median not grossly more (a loose bound, slack = Delay, that a delay
// applied twice would break but a loaded machine under -race does not);
// SetDelay applies to the open connection. What the link really adds is
// measured by BenchmarkRoundTrip.
func TestDelayHonoured(t *testing.T) {
	echoSrv := serve(t, echo)
	const delay = 50 * time.Millisecond
	l := startLink(t, wanlink.Config{Target: echoSrv.addr(), Delay: delay})
	c := dial(t, l.Addr())
	check := func(d, slack time.Duration) {
		t.Helper()
		var rtts []time.Duration
		for range 10 {
			rtt := roundTrip(t, c)
			if rtt < 2*d {
				t.Errorf("delay %v: round trip %v, want ≥ %v", d, rtt, 2*d)
			}
			rtts = append(rtts, rtt)
		}
		m := median(rtts)
		t.Logf("delay %v: median round trip %v (%v over 2×Delay)", d, m, m-2*d)
		if m > 2*d+slack {
			t.Errorf("delay %v: median round trip %v, want ≤ %v", d, m, 2*d+slack)
		}
	}
	check(delay, delay)
	const shorter = 10 * time.Millisecond
	if err := l.SetDelay(shorter); err != nil {
		t.Fatal(err)
	}
	if got := l.Delay(); got != shorter {
		t.Fatalf("Delay() = %v after SetDelay(%v)", got, shorter)
	}
	check(shorter, 2*delay-2*shorter-time.Millisecond) // under the old round trip
}

// TestBytesExact moves random bytes both ways at once over several
// connections; the target answers late, only after the client's FIN came
// through, with the hash of what it read; the client's read side then
// ends with the target's FIN. Small chunks (MaxInflight 64 KiB) make the
// streams cross many buffer boundaries.
func TestBytesExact(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  wanlink.Config
	}{
		{"small chunks", wanlink.Config{Delay: 2 * time.Millisecond, MaxInflight: 64 << 10}},
		{"defaults", wanlink.Config{Delay: 5 * time.Millisecond}},
		{"no delay", wanlink.Config{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const upSize, downSize = 3<<20 + 12345, 2<<20 + 777
			srv := serve(t, func(c *net.TCPConn) {
				var wg sync.WaitGroup
				wg.Go(func() { writeRandom(c, 99, downSize) })
				h := sha256.New()
				_, err := io.Copy(h, c)
				wg.Wait()
				if err != nil {
					return
				}
				_, _ = c.Write(h.Sum(nil)) // the late response
				_ = c.CloseWrite()
				_, _ = io.Copy(io.Discard, c)
			})
			cfg := tc.cfg
			cfg.Target = srv.addr()
			l := startLink(t, cfg)
			var wg sync.WaitGroup
			for i := range 4 {
				wg.Go(func() {
					c, err := net.Dial("tcp", l.Addr())
					if err != nil {
						t.Error(err)
						return
					}
					defer c.Close()
					tc := c.(*net.TCPConn)
					sent := make(chan []byte, 1)
					go func() {
						sum := writeRandom(tc, uint64(i), upSize)
						_ = tc.CloseWrite()
						sent <- sum
					}()
					got, err := io.ReadAll(c)
					if err != nil {
						t.Errorf("conn %d: read: %v", i, err)
						return
					}
					upSum := <-sent
					if len(got) != downSize+sha256.Size {
						t.Errorf("conn %d: got %d bytes, want %d", i, len(got), downSize+sha256.Size)
						return
					}
					want := sha256.Sum256(randomBytes(99, downSize))
					if d := sha256.Sum256(got[:downSize]); d != want {
						t.Errorf("conn %d: download differs", i)
					}
					if !bytes.Equal(got[downSize:], upSum) {
						t.Errorf("conn %d: the target hashed other bytes than were sent", i)
					}
				})
			}
			wg.Wait()
			st := l.Stats()
			if st.Up.Bytes != 4*upSize || st.Down.Bytes != 4*(downSize+sha256.Size) {
				t.Errorf("stats: up %d down %d bytes, want %d and %d", st.Up.Bytes, st.Down.Bytes, 4*upSize, 4*(downSize+sha256.Size))
			}
			testenv.WaitFor(t, 5*time.Second, "connections closed", func() bool { return l.Stats().Conns == 0 })
			if st := l.Stats(); st.Up.Inflight != 0 || st.Down.Inflight != 0 || st.Accepted != 4 {
				t.Errorf("after the connections: %+v", st)
			}
		})
	}
}

func randomBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, 1))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// writeRandom writes n seeded random bytes in writes of random sizes and
// returns their sha256.
func writeRandom(c net.Conn, seed uint64, n int) []byte {
	data := randomBytes(seed, n)
	r := rand.New(rand.NewPCG(seed, 2))
	for off := 0; off < n; {
		k := min(n-off, 1+r.IntN(200<<10))
		if _, err := c.Write(data[off : off+k]); err != nil {
			return nil
		}
		off += k
	}
	s := sha256.Sum256(data)
	return s[:]
}

// TestRateCap: 8 MiB at 80 Mbit/s takes 0.84 s; two connections share
// the cap. A loose bound: it is a property, not a performance figure.
func TestRateCap(t *testing.T) {
	var got atomic.Int64
	sink := serve(t, func(c *net.TCPConn) {
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Read(buf)
			got.Add(int64(n))
			if err != nil {
				return
			}
		}
	})
	l := startLink(t, wanlink.Config{Target: sink.addr(), RateBitsPerSec: 80e6})
	const total = 8 << 20
	start := time.Now()
	var wg sync.WaitGroup
	for range 2 {
		c := dial(t, l.Addr())
		wg.Go(func() {
			if _, err := c.Write(make([]byte, total/2)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	testenv.WaitFor(t, 20*time.Second, "the sink got everything", func() bool { return got.Load() == total })
	el := time.Since(start)
	t.Logf("8 MiB at 80 Mbit/s in %v (%.1f Mbit/s)", el, total*8/el.Seconds()/1e6)
	if el < 700*time.Millisecond {
		t.Errorf("8 MiB at 80 Mbit/s took %v, want ≥ 0.7 s", el)
	}
}

// blockedWriter writes up to total bytes to c in the background and
// counts them.
type blockedWriter struct {
	n    atomic.Int64
	done chan struct{}
}

func writeInBackground(c net.Conn, total int) *blockedWriter {
	w := &blockedWriter{done: make(chan struct{})}
	go func() {
		defer close(w.done)
		buf := make([]byte, 64<<10)
		for w.n.Load() < int64(total) {
			n, err := c.Write(buf)
			w.n.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	return w
}

// waitStalled polls until the writer's count has not moved for 300 ms.
func (w *blockedWriter) waitStalled(t *testing.T) {
	t.Helper()
	last, since := int64(-1), time.Now()
	testenv.WaitFor(t, 15*time.Second, "the sender blocks", func() bool {
		if n := w.n.Load(); n != last {
			last, since = n, time.Now()
		}
		return time.Since(since) > 300*time.Millisecond
	})
}

// TestMemoryBounded: a target that never reads. The sender blocks, and
// the link never holds more than MaxInflight for the connection, both
// while the bytes are not yet due (the link itself is full) and once the
// writer is stuck on the stalled receiver.
func TestMemoryBounded(t *testing.T) {
	stall := make(chan struct{})
	srv := serve(t, func(c *net.TCPConn) {
		_ = c.SetReadBuffer(64 << 10)
		<-stall
	})
	t.Cleanup(func() { close(stall) }) // before the server's cleanup waits for its handlers
	const maxInflight = 1 << 20
	const total = 256 << 20
	for _, tc := range []struct {
		name  string
		delay time.Duration
		full  bool // the link holds exactly MaxInflight
	}{
		{"not yet due", time.Hour, true}, // set once the target is connected
		{"stalled receiver", 20 * time.Millisecond, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := startLink(t, wanlink.Config{Target: srv.addr(), MaxInflight: maxInflight})
			before := srv.accepted()
			c := dial(t, l.Addr())
			testenv.WaitFor(t, 5*time.Second, "target dialled", func() bool { return srv.accepted() > before })
			if err := l.SetDelay(tc.delay); err != nil {
				t.Fatal(err)
			}
			_ = c.SetWriteBuffer(64 << 10)
			w := writeInBackground(c, total)
			testenv.WaitFor(t, 10*time.Second, "the link holds bytes", func() bool {
				in := l.Stats().Up.Inflight
				return in == maxInflight || (!tc.full && in > 0)
			})
			w.waitStalled(t)
			select {
			case <-w.done:
				t.Fatalf("the sender finished (%d bytes): nothing pushed back", w.n.Load())
			default:
			}
			st := l.Stats()
			t.Logf("sender blocked after %d bytes; link holds %d (peak %d)", w.n.Load(), st.Up.Inflight, st.Up.PeakInflight)
			if st.Up.PeakInflight > maxInflight {
				t.Errorf("peak inflight %d > MaxInflight %d", st.Up.PeakInflight, maxInflight)
			}
			if tc.full && st.Up.Inflight != maxInflight {
				t.Errorf("inflight %d, want exactly MaxInflight %d (nothing is due yet)", st.Up.Inflight, maxInflight)
			}
			if st.Up.Inflight <= 0 {
				t.Errorf("inflight %d: the link holds nothing", st.Up.Inflight)
			}
			if w.n.Load() > 64<<20 {
				t.Errorf("the sender wrote %d bytes before blocking", w.n.Load())
			}
			_ = c.Close()
			<-w.done
		})
	}
}

// TestResetPropagates: a reset on either side reaches the other (after
// the delay), and a refused dial resets the client.
func TestResetPropagates(t *testing.T) {
	const delay = 10 * time.Millisecond
	t.Run("target resets", func(t *testing.T) {
		srv := serve(t, func(c *net.TCPConn) {
			var b [1]byte
			_, _ = io.ReadFull(c, b[:])
			_ = c.SetLinger(0) // the deferred close sends RST
		})
		l := startLink(t, wanlink.Config{Target: srv.addr(), Delay: delay})
		c := dial(t, l.Addr())
		if _, err := c.Write([]byte{1}); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := c.Read(make([]byte, 1))
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("client read: %v, want ECONNRESET", err)
		}
	})
	t.Run("client resets", func(t *testing.T) {
		got := make(chan error, 1)
		srv := serve(t, func(c *net.TCPConn) {
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err := io.Copy(io.Discard, c)
			got <- err
		})
		l := startLink(t, wanlink.Config{Target: srv.addr(), Delay: delay})
		c := dial(t, l.Addr())
		if _, err := c.Write([]byte("hello")); err != nil {
			t.Fatal(err)
		}
		testenv.WaitFor(t, 5*time.Second, "bytes reach the target", func() bool { return l.Stats().Up.Bytes == 5 })
		_ = c.SetLinger(0)
		_ = c.Close()
		if err := <-got; !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("target read: %v, want ECONNRESET", err)
		}
	})
	t.Run("dial refused", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		_ = ln.Close()
		l := startLink(t, wanlink.Config{Target: addr, Delay: delay})
		c := dial(t, l.Addr())
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = c.Read(make([]byte, 1))
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("client read: %v, want ECONNRESET", err)
		}
	})
}

// TestCloseStopsEverything: Close with connections in every state (dial
// pending, mid-transfer, idle, half-closed) returns once every goroutine
// is gone (the cleanup checks), and the clients see their connection end.
func TestCloseStopsEverything(t *testing.T) {
	stall := make(chan struct{})
	srv := serve(t, func(c *net.TCPConn) { <-stall })
	t.Cleanup(func() { close(stall) })
	l, err := wanlink.Start(wanlink.Config{Target: srv.addr(), Delay: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	var clients []*net.TCPConn
	for range 3 {
		clients = append(clients, dial(t, l.Addr()))
	}
	testenv.WaitFor(t, 5*time.Second, "targets dialled", func() bool { return srv.accepted() == 3 })
	w := writeInBackground(clients[0], 1<<30) // mid-transfer
	// Mid-transfer for real: the link holds bytes when Close comes (a Close
	// before the writer's first bytes tested nothing of the counters).
	testenv.WaitFor(t, 5*time.Second, "bytes in flight", func() bool { return l.Stats().Up.Inflight > 0 })
	_ = clients[1].CloseWrite() // half-closed
	clients = append(clients, dial(t, l.Addr()))
	testenv.WaitFor(t, 5*time.Second, "4 accepted", func() bool { return l.Stats().Accepted == 4 }) // the 4th: dial pending
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	testenv.WaitGoroutinesGone(t, 5*time.Second, pkgPrefix)
	<-w.done
	for i, c := range clients {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.Copy(io.Discard, c); err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("client %d: %v, want EOF or reset", i, err)
		}
	}
	if err := l.SetDelay(time.Millisecond); !errors.Is(err, wanlink.ErrClosed) {
		t.Errorf("SetDelay after Close: %v, want ErrClosed", err)
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if st := l.Stats(); st.Conns != 0 || st.Up.Inflight != 0 || st.Down.Inflight != 0 {
		t.Errorf("after Close: %+v, want no connections and nothing in flight", st)
	}
	if st := l.Stats(); st.Up.PeakInflight == 0 {
		t.Errorf("after Close: %+v: the transfer held nothing, so the test proves nothing about the counters", st)
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		cfg  wanlink.Config
		want string
	}{
		{wanlink.Config{}, "Target is required"},
		{wanlink.Config{Target: "127.0.0.1:1", Delay: -time.Millisecond}, "Delay -1ms is negative"},
		{wanlink.Config{Target: "127.0.0.1:1", RateBitsPerSec: -1}, "RateBitsPerSec -1 is negative"},
		{wanlink.Config{Target: "127.0.0.1:1", MaxInflight: 100}, "MaxInflight 100 is below 4096"},
		{wanlink.Config{Target: "127.0.0.1:1", DialTimeout: -time.Second}, "DialTimeout -1s is negative"},
		{wanlink.Config{Target: "127.0.0.1:1", Listen: "256.0.0.1:0"}, "listen 256.0.0.1:0"},
	} {
		l, err := wanlink.Start(tc.cfg)
		if err == nil {
			_ = l.Close()
			t.Errorf("%+v: no error", tc.cfg)
			continue
		}
		if !bytes.Contains([]byte(err.Error()), []byte(tc.want)) {
			t.Errorf("%+v: %v, want it to say %q", tc.cfg, err, tc.want)
		}
	}
	echoSrv := serve(t, echo)
	l := startLink(t, wanlink.Config{Target: echoSrv.addr()})
	if err := l.SetDelay(-time.Second); !errors.Is(err, wanlink.ErrConfig) {
		t.Errorf("SetDelay(-1s): %v, want ErrConfig", err)
	}
}
