package agent

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nowconnect/nowconnect/codec"
	"github.com/nowconnect/nowconnect/internal/inq"
	"github.com/nowconnect/nowconnect/internal/testenv"
)

// Tests of the stream data path: OPEN, DATA, credit, FIN, RST.

func randBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// relay drives one stream from the hub side: it sends out (respecting the
// agent's window and returning credit to the agent as it consumes DATA) and
// collects what comes back until the agent's FIN.
type relay struct {
	t        *testing.T
	p        *peer
	cid      uint32
	agentWin int // credit the agent granted the hub
	hubWin   int // credit the hub granted the agent
	credit   int
	sent     int
	acc      int
	unacked  int // agent→hub bytes not yet credited back
	got      []byte
	gotFin   bool
	windows  []int
	// skip, when set, accepts a frame of another CID (else it fails the test).
	skip func(frame) bool
}

func (r *relay) handle(f frame) {
	r.t.Helper()
	if f.h.CID != r.cid {
		if r.skip != nil && r.skip(f) {
			return
		}
		r.t.Fatalf("frame for cid %d: %v", f.h.CID, f)
	}
	switch f.h.Type {
	case codec.FrameData:
		if r.gotFin {
			r.t.Fatal("DATA after FIN")
		}
		r.got = append(r.got, f.p...)
		r.unacked += len(f.p)
		if r.unacked > r.hubWin {
			r.t.Fatalf("agent has %d bytes in flight, window %d", r.unacked, r.hubWin)
		}
		r.acc += len(f.p)
		if r.acc >= r.hubWin/4 {
			r.p.window(r.cid, r.acc)
			r.unacked -= r.acc
			r.acc = 0
		}
	case codec.FrameWindow:
		n, err := codec.ParseWindow(f.p)
		if err != nil {
			r.t.Fatal(err)
		}
		r.windows = append(r.windows, int(n))
		r.credit += int(n)
	case codec.FrameFin:
		r.gotFin = true
	default:
		r.t.Fatalf("unexpected %v", f)
	}
}

// run sends out then FIN, and reads until the agent's FIN.
func (r *relay) run(out []byte) {
	r.t.Helper()
	r.credit = r.agentWin
	finSent := false
	for !r.gotFin || !finSent {
		for r.sent < len(out) && r.credit > 0 {
			n := min(r.credit, len(out)-r.sent, 60000)
			r.p.data(r.cid, out[r.sent:r.sent+n])
			r.sent += n
			r.credit -= n
		}
		if r.sent == len(out) && !finSent {
			r.p.fin(r.cid)
			finSent = true
			continue
		}
		r.handle(r.p.next(r.t))
	}
}

func TestEcho1MiB(t *testing.T) {
	checkLeaks(t)
	hub := newTestHub(t, hubOpts{window: 64 << 10})
	echo := newTarget(t, echoHandler)
	a := newAgent(t, testConfig([]string{hub.url}, map[string]string{"ldap": echo.addr()}, nil))
	runAgent(t, a)
	p := hub.nextPeer(t)
	p.open(7, "ldap")
	p.expect(t, codec.FrameOpenAck, 7)
	out := randBytes(1 << 20)
	r := &relay{t: t, p: p, cid: 7, agentWin: a.limits.Stream, hubWin: 64 << 10}
	r.run(out)
	if !bytes.Equal(r.got, out) {
		t.Fatalf("echo differs: got %d bytes, want %d", len(r.got), len(out))
	}
	for _, w := range r.windows {
		if w < a.limits.Stream/4 {
			t.Fatalf("WINDOW increment %d below a quarter window %d", w, a.limits.Stream/4)
		}
	}
	waitFor(t, "stream finished", func() bool { return a.ActiveStreams() == 0 })
}

func TestPipelinedDataAndFin(t *testing.T) {
	checkLeaks(t)
	hub := newTestHub(t, hubOpts{})
	echo := newTarget(t, echoHandler)
	a := newAgent(t, testConfig([]string{hub.url}, map[string]string{"ldap": echo.addr()}, nil))
	runAgent(t, a)
	p := hub.nextPeer(t)
	msg := randBytes(100 << 10)
	// OPEN, DATA and FIN in one write, before any OPEN_ACK.
	var b []byte
	f, _ := codec.AppendOpen(nil, 3, "ldap", "192.0.2.1:1234")
	b = append(codec.AppendWSHeader(b, codec.BinaryHeader(len(f))), f...)
	for rest := msg; len(rest) > 0; {
		n := min(len(rest), codec.MaxPayload)
		f := append(codec.AppendHeader(nil, codec.FrameData, 3), rest[:n]...)
		b = append(codec.AppendWSHeader(b, codec.BinaryHeader(len(f))), f...)
		rest = rest[n:]
	}
	f = codec.AppendEmpty(nil, codec.FrameFin, 3)
	b = append(codec.AppendWSHeader(b, codec.BinaryHeader(len(f))), f...)
	p.sendRaw(b)
	p.expect(t, codec.FrameOpenAck, 3)
	r := &relay{t: t, p: p, cid: 3, hubWin: 256 << 10}
	for !r.gotFin {
		r.handle(p.next(t))
	}
	if !bytes.Equal(r.got, msg) {
		t.Fatalf("echo differs: %d bytes, want %d", len(r.got), len(msg))
	}
	waitFor(t, "stream finished", func() bool { return a.ActiveStreams() == 0 })
}

func TestDialFailure(t *testing.T) {
	checkLeaks(t)
	hub := newTestHub(t, hubOpts{keepPongs: true})
	a := newAgent(t, testConfig([]string{hub.url}, map[string]string{"ldap": closedPort(t)}, nil))
	runAgent(t, a)
	p := hub.nextPeer(t)
	start := time.Now()
	p.open(5, "ldap")
	p.data(5, []byte("pipelined request"))
	p.expectReason(t, codec.FrameOpenErr, 5, codec.ReasonDialFailed)
	if d := time.Since(start); d > time.Second {
		t.Fatalf("OPEN_ERR took %s", d)
	}
	waitFor(t, "no streams", func() bool { return a.ActiveStreams() == 0 })
	// The dropped DATA got no answer: the PONG comes next.
	p.send(codec.AppendPing(nil, codec.FramePing, 42))
	p.expect(t, codec.FramePong, 0)
}

func TestUnknownConnector(t *testing.T) {
	checkLeaks(t)
	hub := newTestHub(t, hubOpts{keepPongs: true})
	a := newAgent(t, testConfig([]string{hub.url}, map[string]string{"ldap": "127.0.0.1:1"}, nil))
	runAgent(t, a)
	p := hub.nextPeer(t)
	p.open(9, "nope")
	p.data(9, []byte("pipelined request")) // sent behind the OPEN, before its answer
	p.expectReason(t, codec.FrameOpenErr, 9, codec.ReasonUnknownConnector)
	if a.ActiveStreams() != 0 {
		t.Fatal("stream kept")
	}
	// The refused CID ended: its late DATA is ignored, never reset. The
	// PONG comes next.
	p.send(codec.AppendPing(nil, codec.FramePing, 42))
	p.expect(t, codec.FramePong, 0)
}

// TestAgentCreditLimit: the hub withholds WINDOW; the agent must stop at
// W_hub bytes in flight, then finish byte-exact once credit is granted.
func TestAgentCreditLimit(t *testing.T) {
	checkLeaks(t)
	const hubWin = 64 << 10
	const total = 1 << 20
	payload := randBytes(total)
	src := newTarget(t, func(c *net.TCPConn) {
		_, _ = c.Write(payload)
		_ = c.CloseWrite()
		_, _ = io.Copy(io.Discard, c)
	})
	hub := newTestHub(t, hubOpts{window: hubWin})
	a := newAgent(t, testConfig([]string{hub.url}, map[string]string{"src": src.addr()}, nil))
	runAgent(t, a)
	p := hub.nextPeer(t)
	p.open(11, "src")
	p.expect(t, codec.FrameOpenAck, 11)
	var got []byte
	readMin := min(16<<10, hubWin/4)
	for len(got) < hubWin-readMin+1 {
		f := p.expect(t, codec.FrameData, 11)
		got = append(got, f.p...)
		if len(got) > hubWin {
			t.Fatalf("agent sent %d bytes with a window of %d", len(got), hubWin)
		}
	}
	// Nothing more may come without credit (a bounded negative check).
	if f, ok := p.nextWithin(200 * time.Millisecond); ok {
		if f.h.Type == codec.FrameData && len(got)+len(f.p) > hubWin {
			t.Fatalf("agent exceeded its credit: %d+%d > %d", len(got), len(f.p), hubWin)
		}
		got = append(got, f.p...)
	}
	r := &relay{t: t, p: p, cid: 11, hubWin: hubWin, got: got}
	// Grant what was consumed, then keep granting as bytes arrive.
	p.window(11, len(got))
	for !r.gotFin {
		r.handle(p.next(t))
	}
	if !bytes.Equal(r.got, payload) {
		t.Fatalf("data differs: got %d bytes, want %d", len(r.got), total)
	}
	p.fin(11)
	waitFor(t, "stream finished", func() bool { return a.ActiveStreams() == 0 })
}

// TestAgentReturnsCredit: the hub sends a whole window to a sink; the agent
// returns it with WINDOW frames of at least a quarter window as it writes.
func TestAgentReturnsCredit(t *testing.T) {
	checkLeaks(t)
	var mu sync.Mutex
	var sunk int
	sink := newTarget(t, func(c *net.TCPConn) {
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Read(buf)
			mu.Lock()
			sunk += n
			mu.Unlock()
			if err != nil {
				return
			}
		}
	})
	hub := newTestHub(t, hubOpts{})
	cfg := testConfig([]string{hub.url}, map[string]string{"sink": sink.addr()}, nil)
	cfg.Window = 128 << 10
	a := newAgent(t, cfg)
	runAgent(t, a)
	p := hub.nextPeer(t)
	p.open(1, "sink")
	p.expect(t, codec.FrameOpenAck, 1)
	const rounds = 4
	credit, sent, granted := cfg.Window, 0, 0
	for sent < rounds*cfg.Window {
		if credit > 0 {
			n := min(credit, 40000)
			p.data(1, randBytes(n))
			sent += n
			credit -= n
			continue
		}
		f := p.expect(t, codec.FrameWindow, 1)
		n, _ := codec.ParseWindow(f.p)
		if int(n) < cfg.Window/4 {
			t.Fatalf("WINDOW %d below a quarter of %d", n, cfg.Window)
		}
		credit += int(n)
		granted += int(n)
	}
	for granted < sent-cfg.Window/4+1 {
		f := p.expect(t, codec.FrameWindow, 1)
		n, _ := codec.ParseWindow(f.p)
		granted += int(n)
	}
	waitFor(t, "sink got everything", func() bool { mu.Lock(); defer mu.Unlock(); return sunk == sent })
}

func TestWindowExceeded(t *testing.T) {
	checkLeaks(t)
	sink := newTarget(t, nil) // accepts and never reads
	hub := newTestHub(t, hubOpts{})
	cfg := testConfig([]string{hub.url}, map[string]string{"sink": sink.addr(), "stuck": unacceptingAddr(t)}, nil)
	cfg.Window = 4096
	a := newAgent(t, cfg)
	runAgent(t, a)
	p := hub.nextPeer(t)
	p.open(2, "sink")
	p.expect(t, codec.FrameOpenAck, 2)
	p.data(2, make([]byte, 4097))
	p.expectReason(t, codec.FrameRst, 2, codec.ReasonWindowExceeded)
	waitFor(t, "stream reset", func() bool { return a.ActiveStreams() == 0 })
	// Pipelined, before OPEN_ACK, the same bound applies. The connector's
	// dial hangs, so no byte can reach the target and no credit can come
	// back between the two DATA frames: their sum must trip the window.
	var b []byte
	f, _ := codec.AppendOpen(nil, 4, "stuck", "x")
	b = append(codec.AppendWSHeader(b, codec.BinaryHeader(len(f))), f...)
	f = append(codec.AppendHeader(nil, codec.FrameData, 4), make([]byte, 3000)...)
	b = append(codec.AppendWSHeader(b, codec.BinaryHeader(len(f))), f...)
	b = append(codec.AppendWSHeader(b, codec.BinaryHeader(len(f))), f...)
	p.sendRaw(b)
	p.expectReason(t, codec.FrameRst, 4, codec.ReasonWindowExceeded) // no OPEN_ACK first: the dial hangs
	waitFor(t, "stream reset", func() bool { return a.ActiveStreams() == 0 })
}

// unacceptingAddr returns a loopback address whose accept queue is full
// (backlog 0 and one connection never accepted): the kernel drops further
// SYNs, so dialing it hangs until the dialer gives up or is cancelled.
func unacceptingAddr(t *testing.T) string {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*unix.SockaddrInet4).Port))
	filler, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = filler.Close() })
	return addr
}

// TestHalfCloseHubFirst: the client sends a request and FIN; the target
// answers only after its EOF, and the answer arrives whole.
func TestHalfCloseHubFirst(t *testing.T) {
	checkLeaks(t)
	srv := newTarget(t, func(c *net.TCPConn) {
		req, err := io.ReadAll(c) // until the agent's CloseWrite
		if err != nil {
			return
		}
		slices.Reverse(req)
		_, _ = c.Write(bytes.Repeat(req, 4))
		_ = c.Close()
	})
	hub := newTestHub(t, hubOpts{})
	a := newAgent(t, testConfig([]string{hub.url}, map[string]string{"svc": srv.addr()}, nil))
	runAgent(t, a)
	p := hub.nextPeer(t)
	req := randBytes(50000)
	p.open(21, "svc")
	p.expect(t, codec.FrameOpenAck, 21)
	r := &relay{t: t, p: p, cid: 21, agentWin: a.limits.Stream, hubWin: 256 << 10}
	r.run(req)
	want := slices.Clone(req)
	slices.Reverse(want)
	if !bytes.Equal(r.got, bytes.Repeat(want, 4)) {
		t.Fatalf("response differs: %d bytes", len(r.got))
	}
	waitFor(t, "stream finished", func() bool { return a.ActiveStreams() == 0 })
}

// TestHalfCloseTargetFirst: the target sends and half-closes; the hub
// still sends afterwards and the target receives it.
func TestHalfCloseTargetFirst(t *testing.T) {
	checkLeaks(t)
	payload := randBytes(300 << 10)
	received := make(chan []byte, 1)
	srv := newTarget(t, func(c *net.TCPConn) {
		_, _ = c.Write(payload)
		_ = c.CloseWrite()
		b, _ := io.ReadAll(c)
		received <- b
	})
	hub := newTestHub(t, hubOpts{})
	a := newAgent(t, testConfig([]string{hub.url}, map[string]string{"svc": srv.addr()}, nil))
	runAgent(t, a)
	p := hub.nextPeer(t)
	p.open(8, "svc")
	p.expect(t, codec.FrameOpenAck, 8)
	r := &relay{t: t, p: p, cid: 8, hubWin: 256 << 10}
	for !r.gotFin {
		r.handle(p.next(t))
	}
	if !bytes.Equal(r.got, payload) {
		t.Fatalf("got %d bytes, want %d", len(r.got), len(payload))
	}
	if a.ActiveStreams() != 1 {
		t.Fatal("stream ended after only one FIN")
	}
	late := []byte("sent after the target's FIN")
	p.data(8, late)
	p.fin(8)
	select {
	case b := <-received:
		if !bytes.Equal(b, late) {
			t.Fatalf("target got %q", b)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("target got nothing")
	}
	waitFor(t, "stream finished", func() bool { return a.ActiveStreams() == 0 })
	// Credit for the finished stream is ignored, not answered with RST:
	// the next frame is the RST for cid 99.
	p.window(8, 1000)
	p.data(99, []byte("x"))
	p.expectReason(t, codec.FrameRst, 99, codec.ReasonUnknownCID)
}

func TestUnknownCID(t *testing.T) {
	checkLeaks(t)
	hub := newTestHub(t, hubOpts{keepPongs: true})
	a := newAgent(t, testConfig([]string{hub.url}, map[string]string{"ldap": "127.0.0.1:1"}, nil))
	runAgent(t, a)
	p := hub.nextPeer(t)
	p.data(77, []byte("hi"))
	p.expectReason(t, codec.FrameRst, 77, codec.ReasonUnknownCID)
	p.window(78, 100)
	p.expectReason(t, codec.FrameRst, 78, codec.ReasonUnknownCID)
	p.fin(79)
	p.expectReason(t, codec.FrameRst, 79, codec.ReasonUnknownCID)
	p.send(codec.AppendEmpty(nil, codec.FrameOpenAck, 80))
	p.expectReason(t, codec.FrameRst, 80, codec.ReasonUnknownCID)
	// RST for an unknown cid is ignored: the PONG comes next.
	p.send(codec.AppendReason(nil, codec.FrameRst, 81, codec.ReasonClientReset, ""))
	p.send(codec.AppendPing(nil, codec.FramePing, 0xabcdef))
	f := p.expect(t, codec.FramePong, 0)
	if o, _ := codec.ParsePing(f.p); o != 0xabcdef {
		t.Fatalf("PONG opaque %x", o)
	}
	if a.Connects() != 1 {
		t.Fatal("tunnel reconnected")
	}
}

// TestNoHeadOfLineBlocking: a target that never reads holds a full window
// of queued bytes; another stream on the same tunnel still echoes 1 MiB.
func TestNoHeadOfLineBlocking(t *testing.T) {
	checkLeaks(t)
	stalled := newTarget(t, nil) // accepts, never reads
	echo := newTarget(t, echoHandler)
	hub := newTestHub(t, hubOpts{})
	a := newAgent(t, testConfig([]string{hub.url}, map[string]string{"stalled": stalled.addr(), "echo": echo.addr()}, nil))
	runAgent(t, a)
	p := hub.nextPeer(t)
	p.open(1, "stalled")
	p.expect(t, codec.FrameOpenAck, 1)
	// Fill the kernel buffers and the agent's queue: keep sending as credit
	// comes back until no WINDOW arrives for a while.
	credit := a.limits.Stream
	for {
		if credit > 0 {
			p.data(1, make([]byte, credit))
			credit = 0
		}
		f, ok := p.nextWithin(300 * time.Millisecond)
		if !ok {
			break // stalled: the agent holds a full window for cid 1
		}
		if f.h.Type != codec.FrameWindow || f.h.CID != 1 {
			t.Fatalf("unexpected %v", f)
		}
		n, _ := codec.ParseWindow(f.p)
		credit += int(n)
	}
	p.open(2, "echo")
	p.expect(t, codec.FrameOpenAck, 2)
	out := randBytes(1 << 20)
	r := &relay{t: t, p: p, cid: 2, agentWin: a.limits.Stream, hubWin: 256 << 10}
	// The quiet period above is a heuristic: on a loaded machine a last
	// WINDOW for the stalled stream may still come. Anything else for cid 1
	// (a FIN, an RST) fails the test.
	r.skip = func(f frame) bool { return f.h.CID == 1 && f.h.Type == codec.FrameWindow }
	r.run(out)
	if !bytes.Equal(r.got, out) {
		t.Fatal("echo differs")
	}
	// The echo stream's teardown after both FINs is asynchronous; the
	// stalled stream must outlive it.
	waitFor(t, "echo stream finished, stalled one left", func() bool { return a.ActiveStreams() == 1 })
	// The one left is the stalled stream: an RST or FIN for it would have
	// been queued before it left the count (a bounded negative check).
	for {
		f, ok := p.nextWithin(200 * time.Millisecond)
		if !ok {
			break
		}
		if f.h.CID != 1 || f.h.Type != codec.FrameWindow {
			t.Fatalf("unexpected %v after the echo finished", f)
		}
	}
	if n := a.ActiveStreams(); n != 1 {
		t.Fatalf("ActiveStreams = %d, want the stalled one", n)
	}
}

func TestDuplicateOpen(t *testing.T) {
	checkLeaks(t)
	var mu sync.Mutex
	closed := 0
	srv := newTarget(t, func(c *net.TCPConn) {
		_, _ = io.Copy(io.Discard, c)
		mu.Lock()
		closed++
		mu.Unlock()
	})
	hub := newTestHub(t, hubOpts{})
	a := newAgent(t, testConfig([]string{hub.url}, map[string]string{"svc": srv.addr()}, nil))
	runAgent(t, a)
	p := hub.nextPeer(t)
	p.open(5, "svc")
	p.expect(t, codec.FrameOpenAck, 5)
	p.open(5, "svc")
	p.expectReason(t, codec.FrameRst, 5, codec.ReasonProtocol)
	waitFor(t, "stream gone", func() bool { return a.ActiveStreams() == 0 })
	waitFor(t, "target closed", func() bool { mu.Lock(); defer mu.Unlock(); return closed == 1 })
	// The cid is free again.
	p.open(5, "svc")
	p.expect(t, codec.FrameOpenAck, 5)
}

func TestDialReason(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want codec.Reason
		msg  string
	}{
		{
			name: "refused",
			err:  &net.OpError{Op: "dial", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)},
			want: codec.ReasonDialFailed,
			msg:  "connection refused",
		},
		{
			name: "timeout",
			err:  &net.OpError{Op: "dial", Err: os.ErrDeadlineExceeded},
			want: codec.ReasonDialTimeout,
			msg:  "dial timeout",
		},
		{
			name: "no host",
			err:  &net.OpError{Op: "dial", Err: &net.DNSError{Err: "no such host", Name: "secret.internal", IsNotFound: true}},
			want: codec.ReasonDialFailed,
			msg:  "no such host",
		},
		{
			name: "other",
			err:  io.ErrUnexpectedEOF,
			want: codec.ReasonDialFailed,
			msg:  "dial failed",
		},
	}
	for _, tc := range tests {
		r, msg := dialReason(tc.err)
		if r != tc.want || msg != tc.msg {
			t.Errorf("%s: %s %q, want %s %q", tc.name, r, msg, tc.want, tc.msg)
		}
	}
}

// TestDialTimeout: a real dial whose timeout (1ns) expires before it
// completes.
func TestDialTimeout(t *testing.T) {
	checkLeaks(t)
	hub := newTestHub(t, hubOpts{})
	cfg := testConfig([]string{hub.url}, map[string]string{"slow": "127.0.0.1:1"}, nil)
	cfg.DialTimeout = time.Nanosecond
	a := newAgent(t, cfg)
	runAgent(t, a)
	p := hub.nextPeer(t)
	p.open(3, "slow")
	p.expectReason(t, codec.FrameOpenErr, 3, codec.ReasonDialTimeout)
}

// A tunnel idle past PingTimeout is silent only when nothing waits in its
// socket: after a pause the hub's pings are there, unread, and the tunnel
// stays (session.silentFor).
func TestSilentForCountsWaitingBytes(t *testing.T) {
	tun, hubEnd := testenv.TCPPair(t)
	s := newBareSession(t, tun)
	s.a.cfg.PingTimeout = time.Second
	s.start = time.Now().Add(-time.Minute) // nothing read for a minute
	now := time.Now()
	if idle, silent := s.silentFor(now); !silent || idle < 59*time.Second {
		t.Fatalf("idle %v with nothing waiting: silent %v, want true", idle, silent)
	}
	if _, err := hubEnd.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 5*time.Second, "the hub's bytes in the socket", func() bool { return inq.Pending(tun) })
	if _, silent := s.silentFor(now); silent {
		t.Fatal("silent with the hub's bytes waiting in the socket")
	}
}
