package agent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/nowconnect/nowconnect/codec"
)

// This file holds the test peers: a hub that speaks the tunnel protocol over
// a real WebSocket (gobwas ws.Upgrade on a real TCP listener, frames built
// with package codec), and real TCP targets.

const testToken = "s3cret-token-value"

// frame is one tunnel frame received by the test hub (payload copied).
type frame struct {
	h codec.Header
	p []byte
}

func (f frame) String() string { return fmt.Sprintf("%s cid=%d len=%d", f.h.Type, f.h.CID, len(f.p)) }

// hubOpts configures a testHub.
type hubOpts struct {
	window     uint32 // HELLO_ACK window; default 256 KiB
	noAck      bool   // do not answer HELLO with HELLO_ACK
	noPong     bool   // do not answer PING
	rejectN    int    // refuse the first rejectN upgrades with 401
	rejectAuth string // refuse upgrades whose Authorization is this, with 401
	tls        *tls.Config
	keepPongs  bool // deliver PONG frames to the test
	keepPings  bool // deliver PING frames to the test (still answered unless noPong)
	sendBefore []byte
}

// testHub is an in-test hub peer.
type testHub struct {
	t     *testing.T
	opts  hubOpts
	ln    net.Listener
	url   string
	conns chan *peer
	wg    sync.WaitGroup

	rejected atomic.Int32
	mu       sync.Mutex
	auths    []string
	uris     []string
	peers    []*peer
	errs     []string
}

func newTestHub(t *testing.T, o hubOpts) *testHub {
	t.Helper()
	if o.window == 0 {
		o.window = 256 << 10
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	scheme := "ws"
	if o.tls != nil {
		ln = tls.NewListener(ln, o.tls)
		scheme = "wss"
	}
	h := &testHub{t: t, opts: o, ln: ln, conns: make(chan *peer, 16),
		url: scheme + "://" + ln.Addr().String() + "/tunnel"}
	h.wg.Add(1)
	go h.acceptLoop()
	t.Cleanup(h.close)
	return h
}

func (h *testHub) errorf(format string, args ...any) {
	h.mu.Lock()
	h.errs = append(h.errs, fmt.Sprintf(format, args...))
	h.mu.Unlock()
}

func (h *testHub) close() {
	_ = h.ln.Close()
	h.mu.Lock()
	for _, p := range h.peers {
		_ = p.c.Close()
	}
	h.mu.Unlock()
	h.wg.Wait()
	for _, e := range h.errs {
		h.t.Errorf("hub peer: %s", e)
	}
}

func (h *testHub) acceptLoop() {
	defer h.wg.Done()
	for {
		c, err := h.ln.Accept()
		if err != nil {
			return
		}
		h.wg.Add(1)
		go h.serveLoop(c)
	}
}

func (h *testHub) serveLoop(c net.Conn) {
	defer h.wg.Done()
	var auth, uri string
	u := ws.Upgrader{
		OnRequest: func(b []byte) error { uri = string(b); return nil },
		OnHeader: func(k, v []byte) error {
			if strings.EqualFold(string(k), "Authorization") {
				auth = string(v)
			}
			return nil
		},
		OnBeforeUpgrade: func() (ws.HandshakeHeader, error) {
			if h.rejected.Load() < int32(h.opts.rejectN) || (h.opts.rejectAuth != "" && auth == h.opts.rejectAuth) {
				h.rejected.Add(1)
				return nil, ws.RejectConnectionError(ws.RejectionStatus(http.StatusUnauthorized))
			}
			return ws.HandshakeHeaderString(""), nil
		},
	}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := u.Upgrade(c); err != nil {
		_ = c.Close()
		return
	}
	_ = c.SetDeadline(time.Time{})
	p := &peer{hub: h, c: c, frames: make(chan frame, 4096), done: make(chan struct{}), br: bufio.NewReader(c)}
	h.mu.Lock()
	h.auths = append(h.auths, auth)
	h.uris = append(h.uris, uri)
	h.peers = append(h.peers, p)
	h.mu.Unlock()
	if len(h.opts.sendBefore) > 0 {
		p.sendRaw(h.opts.sendBefore)
	}
	// HELLO first.
	f, err := p.readFrame()
	if err != nil || f.h.Type != codec.FrameHello {
		h.errorf("first frame: %v %v", f, err)
		_ = c.Close()
		return
	}
	hello, err := codec.ParseHello(f.p)
	if err != nil {
		h.errorf("HELLO: %v", err)
	}
	p.hello = hello
	if !h.opts.noAck {
		p.send(codec.AppendHelloAck(nil, codec.HelloAck{Version: codec.Version1, Window: uint32(h.opts.window)}))
	}
	h.conns <- p
	p.readLoop()
}

// nextPeer waits for the next tunnel to be established with the hub.
func (h *testHub) nextPeer(t *testing.T) *peer {
	t.Helper()
	select {
	case p := <-h.conns:
		return p
	case <-time.After(10 * time.Second):
		t.Fatal("no tunnel from the agent")
		return nil
	}
}

// peer is one agent tunnel as seen by the test hub.
type peer struct {
	hub    *testHub
	c      net.Conn
	br     *bufio.Reader
	hello  codec.Hello
	frames chan frame
	done   chan struct{} // closed when the agent's side is gone
	wmu    sync.Mutex
	closeC atomic.Int32 // close code received from the agent
}

// readFrame reads one WebSocket message and parses it as a tunnel frame,
// checking the client-side rules (masked, binary, FIN).
func (p *peer) readFrame() (frame, error) {
	for {
		h, err := ws.ReadHeader(p.br)
		if err != nil {
			return frame{}, err
		}
		if !h.Masked {
			p.hub.errorf("unmasked frame from agent")
		}
		if !h.Fin {
			p.hub.errorf("fragmented frame from agent")
		}
		b := make([]byte, h.Length)
		if _, err := io.ReadFull(p.br, b); err != nil {
			return frame{}, err
		}
		ws.Cipher(b, h.Mask, 0)
		switch h.OpCode {
		case ws.OpBinary:
		case ws.OpClose:
			if len(b) >= 2 {
				p.closeC.Store(int32(b[0])<<8 | int32(b[1]))
			}
			return frame{}, io.EOF
		default:
			p.hub.errorf("opcode %v from agent", h.OpCode)
			continue
		}
		hd, pl, err := codec.ParseFrame(b)
		if err != nil {
			p.hub.errorf("bad frame from agent: %v", err)
			return frame{}, err
		}
		return frame{h: hd, p: bytes.Clone(pl)}, nil
	}
}

func (p *peer) readLoop() {
	defer close(p.done)
	defer close(p.frames)
	for {
		f, err := p.readFrame()
		if err != nil {
			return
		}
		switch f.h.Type {
		case codec.FramePing:
			if !p.hub.opts.noPong {
				o, _ := codec.ParsePing(f.p)
				p.send(codec.AppendPing(nil, codec.FramePong, o))
			}
			if !p.hub.opts.keepPings {
				continue
			}
		case codec.FramePong:
			if !p.hub.opts.keepPongs {
				continue
			}
		}
		p.frames <- f
	}
}

// send writes one tunnel frame as an unmasked binary message.
func (p *peer) send(f []byte) {
	b := codec.AppendWSHeader(nil, codec.BinaryHeader(len(f)))
	p.sendRaw(append(b, f...))
}

func (p *peer) sendRaw(b []byte) {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	_ = p.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, _ = p.c.Write(b)
}

func (p *peer) open(cid uint32, connector string) {
	f, _ := codec.AppendOpen(nil, cid, connector, "192.0.2.7:40000")
	p.send(f)
}

func (p *peer) data(cid uint32, b []byte) {
	for len(b) > 0 {
		n := min(len(b), codec.MaxPayload)
		p.send(append(codec.AppendHeader(nil, codec.FrameData, cid), b[:n]...))
		b = b[n:]
	}
}

func (p *peer) fin(cid uint32) { p.send(codec.AppendEmpty(nil, codec.FrameFin, cid)) }

func (p *peer) window(cid uint32, n int) { p.send(codec.AppendWindow(nil, cid, uint32(n))) }

// next returns the next frame from the agent.
func (p *peer) next(t *testing.T) frame {
	t.Helper()
	f, ok := p.nextWithin(10 * time.Second)
	if !ok {
		t.Fatal("no frame from the agent")
	}
	return f
}

func (p *peer) nextWithin(d time.Duration) (frame, bool) {
	select {
	case f, ok := <-p.frames:
		return f, ok
	case <-time.After(d):
		return frame{}, false
	}
}

// expect returns the next frame and checks its type and cid.
func (p *peer) expect(t *testing.T, typ codec.FrameType, cid uint32) frame {
	t.Helper()
	f := p.next(t)
	if f.h.Type != typ || f.h.CID != cid {
		t.Fatalf("got %v, want %s cid=%d", f, typ, cid)
	}
	return f
}

func (p *peer) expectReason(t *testing.T, typ codec.FrameType, cid uint32, r codec.Reason) {
	t.Helper()
	f := p.expect(t, typ, cid)
	got, msg, err := codec.ParseReason(f.p)
	if err != nil || got != r {
		t.Fatalf("%s reason %s (%q), want %s", typ, got, msg, r)
	}
}

// waitClosed waits until the agent closed this tunnel.
func (p *peer) waitClosed(t *testing.T) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case _, ok := <-p.frames:
			if !ok {
				return
			}
		case <-deadline:
			t.Fatal("agent did not close the tunnel")
		}
	}
}

// ---- targets ----

// targetServer is a real TCP server used as a connector target.
type targetServer struct {
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns []net.Conn
}

// newTarget starts a TCP server that runs handle for every connection.
func newTarget(t *testing.T, handle func(c *net.TCPConn)) *targetServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &targetServer{ln: ln}
	s.wg.Add(1)
	go func() { // targetAcceptLoop
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
			if handle == nil {
				continue
			}
			s.wg.Add(1)
			go func() { // targetConnLoop
				defer s.wg.Done()
				handle(c.(*net.TCPConn))
			}()
		}
	}()
	t.Cleanup(s.close)
	return s
}

func (s *targetServer) addr() string { return s.ln.Addr().String() }

func (s *targetServer) close() {
	_ = s.ln.Close()
	s.mu.Lock()
	for _, c := range s.conns {
		_ = c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// echoHandler echoes until EOF, then half-closes.
func echoHandler(c *net.TCPConn) {
	_, _ = io.Copy(c, c)
	_ = c.CloseWrite()
}

// closedPort returns an address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := ln.Addr().String()
	_ = ln.Close()
	return a
}

// ---- agent harness ----

// testConfig returns a config with fast timers for tests.
func testConfig(urls []string, connectors map[string]string, logs io.Writer) Config {
	if logs == nil {
		logs = io.Discard
	}
	return Config{
		URLs:             urls,
		AgentID:          "agent-1",
		Token:            testToken,
		Connectors:       connectors,
		DialTimeout:      2 * time.Second,
		ReconnectMin:     5 * time.Millisecond,
		ReconnectMax:     50 * time.Millisecond,
		HandshakeTimeout: 5 * time.Second,
		Tunnels:          1, // the fake hub speaks to one tunnel at a time
		Logger:           slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
}

// runAgent starts a.Run and registers its stop; it returns a stop function
// that cancels Run and waits for it to return nil.
func runAgent(t *testing.T, a *Agent) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }() // runLoop, joined by stop
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Error("Run did not return after cancel")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func newAgent(t *testing.T, cfg Config) *Agent {
	t.Helper()
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// checkLeaks fails the test if goroutines outlive it. Call it first so its
// cleanup runs last.
func checkLeaks(t *testing.T) {
	t.Helper()
	base := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(10 * time.Second)
		for runtime.NumGoroutine() > base {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				n := runtime.Stack(buf, true)
				t.Errorf("goroutines leaked: %d > %d\n%s", runtime.NumGoroutine(), base, buf[:n])
				return
			}
			time.Sleep(5 * time.Millisecond) // polling, not synchronisation
		}
	})
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
