// Package e2e tests the hub and the agent together over real sockets:
// in-process hubs and agents on random loopback ports, real slapd and
// ldapsearch, and the real binary where a process must die.
package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/agent"
	"github.com/nowconnect/nowconnect/hub"
	"github.com/nowconnect/nowconnect/internal/auth"
	"github.com/nowconnect/nowconnect/internal/testenv"
)

var testSecret = []byte("e2e-test-secret-0123456789abcdef")

type testHub struct {
	*hub.Hub
	Control string
	Addr    map[string]string // connector -> listener address
	Logs    *testenv.SyncBuffer
}

type hubOpt func(*hub.Config)

// startHub runs an in-process hub with one listener per connector.
func startHub(t testing.TB, connectors []string, opts ...hubOpt) *testHub {
	t.Helper()
	logs := &testenv.SyncBuffer{}
	v, err := auth.NewVerifier(auth.VerifierConfig{HS256Secret: testSecret, Audience: "nowconnect"})
	if err != nil {
		t.Fatal(err)
	}
	th := &testHub{Logs: logs}
	// The ports were free a moment ago (testenv.FreePort): a concurrent
	// test may take one first, and then the hub starts on new ones.
	var h *hub.Hub
	for try := 0; h == nil; try++ {
		th.Addr = map[string]string{}
		th.Control = fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
		cfg := hub.Config{
			Control:  th.Control,
			Verifier: v,
			Logger:   slog.New(slog.NewJSONHandler(io.MultiWriter(logs, testLogWriter()), &slog.HandlerOptions{Level: slog.LevelDebug})),
		}
		for _, c := range connectors {
			addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
			th.Addr[c] = addr
			cfg.Listeners = append(cfg.Listeners, hub.Listener{Name: "l-" + c, Bind: addr, Connector: c})
		}
		for _, o := range opts {
			o(&cfg)
		}
		nh, err := hub.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		err = nh.Start()
		var be *hub.BindError
		switch {
		case err == nil:
			h = nh
		case errors.As(err, &be) && errors.Is(err, syscall.EADDRINUSE) && try < 4:
			continue
		default:
			t.Fatal(err)
		}
	}
	th.Hub = h
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := h.Stop(ctx); err != nil {
			t.Errorf("hub stop: %v", err)
		}
	})
	return th
}

// testLogWriter shows logs when NC_TEST_LOGS is set.
func testLogWriter() io.Writer {
	if os.Getenv("NC_TEST_LOGS") != "" {
		return os.Stderr
	}
	return io.Discard
}

type testAgent struct {
	*agent.Agent
	cancel context.CancelFunc
	done   chan struct{} // closed when Run returned
	err    error         // Run's result, set before done is closed
}

// Stop cancels the agent and waits for Run to return.
func (a *testAgent) Stop(t testing.TB) {
	a.cancel()
	select {
	case <-a.done:
		if a.err != nil {
			t.Errorf("agent run: %v", a.err)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("agent did not stop:\n%s", strings.Join(ourGoroutines(), "\n\n"))
	}
}

func token(t testing.TB, agentID string, connectors []string) string {
	tok, err := auth.Mint(testSecret, agentID, connectors, time.Hour, "")
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// startAgent runs an in-process agent against th and waits for its tunnel.
func startAgent(t testing.TB, th *testHub, id string, targets map[string]string, mod ...func(*agent.Config)) *testAgent {
	t.Helper()
	names := make([]string, 0, len(targets))
	for n := range targets {
		names = append(names, n)
	}
	cfg := agent.Config{
		URLs:         []string{"ws://" + th.Control + "/tunnel"},
		AgentID:      id,
		Token:        token(t, id, names),
		Connectors:   targets,
		ReconnectMin: 20 * time.Millisecond,
		ReconnectMax: 200 * time.Millisecond,
		Logger:       slog.New(slog.NewJSONHandler(testLogWriter(), &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	for _, m := range mod {
		m(&cfg)
	}
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ta := &testAgent{Agent: a, cancel: cancel, done: make(chan struct{})}
	go func() { // agentRunLoop; Stop and the cleanup wait on done
		ta.err = a.Run(ctx)
		close(ta.done)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-ta.done:
		case <-time.After(15 * time.Second):
			t.Error("agent did not stop")
		}
	})
	testenv.WaitFor(t, 10*time.Second, "agent connected", a.Connected)
	return ta
}

// waitAgents polls until the hub counts n agents.
func waitAgents(t testing.TB, th *testHub, n int) {
	t.Helper()
	testenv.WaitFor(t, 10*time.Second, fmt.Sprintf("%d agents on hub", n), func() bool { return th.Agents() == n })
}

// ---- targets ----

// server is a real TCP target on 127.0.0.1:0 running handle per connection.
type server struct {
	ln    net.Listener
	wg    sync.WaitGroup
	conns atomic.Int64
}

func startServer(t testing.TB, handle func(net.Conn)) *server {
	t.Helper()
	return startServerWith(t, net.ListenConfig{}, handle)
}

// startServerWith is startServer with the listener's options (lc.Control
// applies to every accepted socket too).
func startServerWith(t testing.TB, lc net.ListenConfig, handle func(net.Conn)) *server {
	t.Helper()
	ln, err := lc.Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &server{ln: ln}
	s.wg.Add(1)
	go s.acceptLoop(handle)
	t.Cleanup(func() {
		ln.Close()
		s.wg.Wait()
	})
	return s
}

func (s *server) Addr() string { return s.ln.Addr().String() }

// smallRcvbuf is a Control for dialers and listeners: a 4 KiB SO_RCVBUF,
// set before connect or listen, so the window the socket advertises is
// small from its SYN on. What its peer sends then waits in the peer, not
// in this socket's kernel buffer.
func smallRcvbuf(_, _ string, rc syscall.RawConn) error {
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) }); err != nil {
		return err
	}
	return serr
}

func (s *server) acceptLoop(handle func(net.Conn)) {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.conns.Add(1)
		s.wg.Add(1)
		go func() { // connLoop
			defer s.wg.Done()
			defer c.Close()
			handle(c)
		}()
	}
}

// exchangeTarget implements the checksummed exchange: the client sends
// seed:8 respLen:8, then its payload, then FIN; the target streams respLen
// bytes from the seed concurrently, and after the client's FIN appends the
// SHA-256 of everything it received, then FIN.
func exchangeTarget(c net.Conn) {
	var hdr [16]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return
	}
	seed := binary.BigEndian.Uint64(hdr[:8])
	n := int64(binary.BigEndian.Uint64(hdr[8:]))
	var wg sync.WaitGroup
	wg.Add(1)
	var werr error
	go func() { // writeLoop
		defer wg.Done()
		_, werr = io.CopyN(c, newPRNG(seed), n)
	}()
	h := sha256.New()
	_, rerr := io.Copy(h, c)
	wg.Wait()
	if rerr != nil || werr != nil {
		return
	}
	_, _ = c.Write(h.Sum(nil))
	_ = c.(*net.TCPConn).CloseWrite()
	_, _ = io.Copy(io.Discard, c)
}

func newPRNG(seed uint64) io.Reader {
	var s [32]byte
	binary.BigEndian.PutUint64(s[:], seed)
	return rand.NewChaCha8(s)
}

// exchangeDeadline bounds one exchange: a stream that stalls fails the
// test instead of hanging it.
const exchangeDeadline = 3 * time.Minute

// exchange runs one checksummed exchange through addr.
func exchange(addr string, seed uint64, up, down int64) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(exchangeDeadline))
	var hdr [16]byte
	binary.BigEndian.PutUint64(hdr[:8], seed)
	binary.BigEndian.PutUint64(hdr[8:], uint64(down))
	errc := make(chan error, 1)
	go func() { // uploadLoop; result collected below
		if _, err := c.Write(hdr[:]); err != nil {
			errc <- err
			return
		}
		if _, err := io.CopyN(c, newPRNG(seed+1), up); err != nil {
			errc <- fmt.Errorf("upload: %w", err)
			return
		}
		errc <- c.(*net.TCPConn).CloseWrite()
	}()
	want := sha256.New()
	_, _ = io.CopyN(want, newPRNG(seed), down)
	got := sha256.New()
	if n, err := io.CopyN(got, c, down); err != nil {
		return fmt.Errorf("download after %d/%d: %w", n, down, err)
	}
	if !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
		return fmt.Errorf("download of %d bytes corrupted", down)
	}
	if err := <-errc; err != nil {
		return err
	}
	upSum := sha256.New()
	_, _ = io.CopyN(upSum, newPRNG(seed+1), up)
	var remote [32]byte
	if _, err := io.ReadFull(c, remote[:]); err != nil {
		return fmt.Errorf("reading target checksum: %w", err)
	}
	if !bytes.Equal(remote[:], upSum.Sum(nil)) {
		return fmt.Errorf("upload of %d bytes corrupted", up)
	}
	if n, _ := io.Copy(io.Discard, c); n != 0 {
		return fmt.Errorf("%d extra bytes after the checksum", n)
	}
	return nil
}

// heapInUse returns the live heap after a GC.
func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// leakCheck records our goroutines now and, once every cleanup of the
// test has run (hubs, agents, servers), checks none was left behind.
func leakCheck(t testing.TB) {
	base := len(ourGoroutines())
	t.Cleanup(func() { waitGoroutines(t, base) })
}

// ourGoroutines returns the stacks of live goroutines, leaving out gnet's
// process-wide worker pool (ants), whose idle workers expire on their own.
func ourGoroutines() []string {
	buf := make([]byte, 4<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if !strings.Contains(g, "panjf2000/ants") {
			out = append(out, g)
		}
	}
	return out
}

// waitGoroutines polls until the goroutine count is back near base.
func waitGoroutines(t testing.TB, base int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		gs := ourGoroutines()
		if len(gs) <= base {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines left, started with %d:\n%s", len(gs), base, strings.Join(gs, "\n\n"))
		}
		time.Sleep(10 * time.Millisecond) // polling interval, not synchronisation
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }
