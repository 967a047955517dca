package agent

import (
	"bytes"
	"context"
	"io"
	"math"
	mrand "math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/gobwas/ws"

	"github.com/nowconnect/nowconnect/codec"
	"github.com/nowconnect/nowconnect/internal/testenv"
)

// Tests of the tunnel: handshake, malformed input, reconnect, liveness,
// shutdown, config and metrics.

func TestHelloAndToken(t *testing.T) {
	checkLeaks(t)
	hub := newTestHub(t, hubOpts{window: 100000})
	logs := &testenv.SyncBuffer{}
	cfg := testConfig([]string{hub.url}, map[string]string{"zeta": "127.0.0.1:1", "alpha": "127.0.0.1:2", "mid": "127.0.0.1:3"}, logs)
	cfg.Window = 12345
	a := newAgent(t, cfg)
	stop := runAgent(t, a)
	p := hub.nextPeer(t)
	if p.hello.Version != codec.Version1 || p.hello.Window != 12345 || p.hello.AgentID != "agent-1" {
		t.Fatalf("HELLO = %+v", p.hello)
	}
	if want := []string{"alpha", "mid", "zeta"}; !slices.Equal(p.hello.Connectors, want) {
		t.Fatalf("connectors %v, want %v", p.hello.Connectors, want)
	}
	waitFor(t, "connected", a.Connected)
	if a.Connects() != 1 {
		t.Fatalf("Connects = %d", a.Connects())
	}
	hub.mu.Lock()
	auth, uri := hub.auths[0], hub.uris[0]
	hub.mu.Unlock()
	if auth != "Bearer "+testToken {
		t.Fatalf("Authorization = %q", auth)
	}
	if uri != "/tunnel" {
		t.Fatalf("request URI %q", uri)
	}
	stop()
	if a.Connected() {
		t.Fatal("still connected after Run returned")
	}
	l := logs.String()
	for _, want := range []string{
		`"msg":"connecting to cloud"`,
		`"msg":"connection open"`,
		`"agent_id":"agent-1"`,
		`"msg":"tunnel closed"`,
		`"url":"` + hub.url + `"`,
	} {
		if !strings.Contains(l, want) {
			t.Errorf("logs lack %s:\n%s", want, l)
		}
	}
	if strings.Contains(l, testToken) {
		t.Fatal("token logged")
	}
}

// wsMsg encodes one unmasked WebSocket message.
func wsMsg(h ws.Header, p []byte) []byte {
	h.Length = int64(len(p))
	return append(codec.AppendWSHeader(nil, h), p...)
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestMalformedClosesTunnel(t *testing.T) {
	checkLeaks(t)
	hub := newTestHub(t, hubOpts{})
	logs := &testenv.SyncBuffer{}
	a := newAgent(t, testConfig([]string{hub.url}, map[string]string{"ldap": "127.0.0.1:1"}, logs))
	runAgent(t, a)
	ping := codec.AppendPing(nil, codec.FramePing, 1)
	mask := [4]byte{1, 2, 3, 4}
	mp := slices.Clone(ping)
	ws.Cipher(mp, mask, 0)
	maskedHdr := ws.Header{Fin: true, OpCode: ws.OpBinary, Masked: true, Mask: mask, Length: int64(len(mp))}
	hello := must(codec.AppendHello(nil, codec.Hello{Version: 1, Window: 10, AgentID: "x"}))
	cases := []struct {
		name string
		raw  []byte
		log  string // expected in the "tunnel closed" reason
	}{
		{
			name: "unknown frame type",
			raw:  wsMsg(codec.BinaryHeader(0), []byte{0x7f, 0, 0, 0, 1}),
			log:  "unknown frame type",
		},
		{
			name: "short frame",
			raw:  wsMsg(codec.BinaryHeader(0), []byte{6, 0}),
			log:  "short frame",
		},
		{
			name: "DATA on cid 0",
			raw:  wsMsg(codec.BinaryHeader(0), append(codec.AppendHeader(nil, codec.FrameData, 0), 1)),
			log:  "cid not allowed",
		},
		{
			name: "PING on a stream cid",
			raw:  wsMsg(codec.BinaryHeader(0), append(codec.AppendHeader(nil, codec.FramePing, 5), make([]byte, 8)...)),
			log:  "cid not allowed",
		},
		{
			name: "duplicate HELLO_ACK",
			raw:  wsMsg(codec.BinaryHeader(0), codec.AppendHelloAck(nil, codec.HelloAck{Version: codec.Version1, Window: 1000})),
			log:  "duplicate HELLO_ACK",
		},
		{
			name: "HELLO from hub",
			raw:  wsMsg(codec.BinaryHeader(0), hello),
			log:  "HELLO from hub",
		},
		{
			name: "fragmented",
			raw:  wsMsg(ws.Header{Fin: false, OpCode: ws.OpBinary}, ping),
			log:  "fragmented",
		},
		{
			name: "continuation",
			raw:  wsMsg(ws.Header{Fin: true, OpCode: ws.OpContinuation}, ping),
			log:  "fragmented",
		},
		{
			name: "text",
			raw:  wsMsg(ws.Header{Fin: true, OpCode: ws.OpText}, ping),
			log:  "text message",
		},
		{
			name: "masked",
			raw:  append(codec.AppendWSHeader(nil, maskedHdr), mp...),
			log:  "masked frame",
		},
		{
			name: "oversized",
			raw:  codec.AppendWSHeader(nil, codec.BinaryHeader(codec.MaxFrameLen+1)),
			log:  "exceeds",
		},
		{
			name: "reserved bits",
			raw:  wsMsg(ws.Header{Fin: true, Rsv: 4, OpCode: ws.OpBinary}, ping),
			log:  "websocket header",
		},
		{
			name: "bad window payload",
			raw:  wsMsg(codec.BinaryHeader(0), []byte{byte(codec.FrameWindow), 0, 0, 0, 1, 0, 0}),
			log:  "malformed payload",
		},
		{
			name: "hub close frame",
			raw:  wsMsg(ws.Header{Fin: true, OpCode: ws.OpClose}, []byte{0x03, 0xe8}),
			log:  "hub sent close 1000",
		},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := hub.nextPeer(t)
			waitFor(t, "connected", func() bool { return a.Connects() == uint64(i+1) })
			p.sendRaw(c.raw)
			p.waitClosed(t)
			if p.closeC.Load() == 0 {
				t.Error("no close frame from the agent")
			}
			waitFor(t, "logged", func() bool { return strings.Count(logs.String(), `"msg":"tunnel closed"`) == i+1 })
			l := logs.String()
			if last := l[strings.LastIndex(l, `"msg":"tunnel closed"`):]; !strings.Contains(last, c.log) {
				t.Errorf("close reason lacks %q: %s", c.log, last)
			}
		})
	}
	// And it reconnects after the last one.
	hub.nextPeer(t)
	waitFor(t, "reconnected", func() bool { return a.Connects() == uint64(len(cases)+1) })
}

func TestBackoff(t *testing.T) {
	lo, hi := 500*time.Millisecond, 30*time.Second
	zero := func(int64) int64 { return 0 }
	top := func(n int64) int64 { return n - 1 }
	tests := []struct {
		attempt int
		wantMax time.Duration
	}{
		{attempt: 0, wantMax: time.Second},
		{attempt: 1, wantMax: 2 * time.Second},
		{attempt: 2, wantMax: 4 * time.Second},
		{attempt: 5, wantMax: 30 * time.Second},
		{attempt: 60, wantMax: 30 * time.Second},
		{attempt: 1000, wantMax: 30 * time.Second},
	}
	for _, tc := range tests {
		if got := backoff(tc.attempt, lo, hi, zero); got != lo {
			t.Errorf("attempt %d, rnd 0: %s, want %s", tc.attempt, got, lo)
		}
		if got := backoff(tc.attempt, lo, hi, top); got != tc.wantMax {
			t.Errorf("attempt %d, rnd max: %s, want %s", tc.attempt, got, tc.wantMax)
		}
	}
	for i := range 10000 {
		n := i % 70
		d := backoff(n, lo, hi, mrand.Int64N)
		if d < lo || d > hi {
			t.Fatalf("attempt %d: %s outside [%s, %s]", n, d, lo, hi)
		}
	}
	if d := backoff(3, time.Duration(math.MaxInt64/4), time.Duration(math.MaxInt64), top); d <= 0 {
		t.Fatalf("overflow: %s", d)
	}
}

func TestFailoverAndRefusal(t *testing.T) {
	checkLeaks(t)
	hub := newTestHub(t, hubOpts{rejectN: 2})
	logs := &testenv.SyncBuffer{}
	cfg := testConfig([]string{"ws://" + closedPort(t) + "/tunnel", hub.url}, map[string]string{"ldap": "127.0.0.1:1"}, logs)
	a := newAgent(t, cfg)
	runAgent(t, a)
	hub.nextPeer(t)
	waitFor(t, "connected", a.Connected)
	if hub.rejected.Load() != 2 {
		t.Fatalf("rejected %d", hub.rejected.Load())
	}
	l := logs.String()
	if !strings.Contains(l, `"msg":"tunnel refused by hub"`) || !strings.Contains(l, `"status":401`) {
		t.Fatalf("no 401 log:\n%s", l)
	}
	if !strings.Contains(l, `"msg":"tunnel dial failed"`) {
		t.Fatalf("no dial failure log:\n%s", l)
	}
	if strings.Contains(l, testToken) {
		t.Fatal("token logged")
	}
}

func TestRunCancelClosesStreams(t *testing.T) {
	checkLeaks(t)
	var mu sync.Mutex
	eofs := 0
	srv := newTarget(t, func(c *net.TCPConn) {
		_, _ = io.Copy(io.Discard, c)
		mu.Lock()
		eofs++
		mu.Unlock()
	})
	hub := newTestHub(t, hubOpts{})
	a := newAgent(t, testConfig([]string{hub.url}, map[string]string{"svc": srv.addr(), "dead": closedPort(t)}, nil))
	stop := runAgent(t, a)
	p := hub.nextPeer(t)
	for cid := uint32(1); cid <= 20; cid++ {
		p.open(cid, "svc")
		p.expect(t, codec.FrameOpenAck, cid)
		p.data(cid, []byte("hello"))
	}
	if a.ActiveStreams() != 20 {
		t.Fatalf("ActiveStreams = %d", a.ActiveStreams())
	}
	stop()
	if a.ActiveStreams() != 0 || a.Connected() {
		t.Fatalf("after Run: streams %d connected %v", a.ActiveStreams(), a.Connected())
	}
	waitFor(t, "targets closed", func() bool { mu.Lock(); defer mu.Unlock(); return eofs == 20 })
	p.waitClosed(t)
	if c := p.closeC.Load(); c != int32(ws.StatusGoingAway) {
		t.Errorf("close code %d, want %d", c, ws.StatusGoingAway)
	}
}

func TestShutdownGraceful(t *testing.T) {
	checkLeaks(t)
	echo := newTarget(t, echoHandler)
	hub := newTestHub(t, hubOpts{})
	logs := &testenv.SyncBuffer{}
	defer func() {
		if t.Failed() {
			t.Log(logs.String())
		}
	}()
	a := newAgent(t, testConfig([]string{hub.url}, map[string]string{"ldap": echo.addr()}, logs))
	runAgent(t, a)
	p := hub.nextPeer(t)
	p.open(1, "ldap")
	p.expect(t, codec.FrameOpenAck, 1)
	done := make(chan error, 1)
	go func() { done <- a.Shutdown(context.Background()) }() // shutdownLoop, joined below
	waitFor(t, "draining", a.draining.Load)
	p.open(2, "ldap")
	p.expectReason(t, codec.FrameOpenErr, 2, codec.ReasonShutdown)
	select {
	case <-done:
		t.Fatal("Shutdown returned with a live stream")
	default:
	}
	p.data(1, []byte("bye"))
	p.fin(1)
	r := &relay{t: t, p: p, cid: 1, hubWin: 256 << 10}
	for !r.gotFin {
		r.handle(p.next(t))
	}
	if string(r.got) != "bye" {
		t.Fatalf("got %q", r.got)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown did not return")
	}
	if err := a.Run(context.Background()); err != nil {
		t.Fatalf("Run after Shutdown: %v", err)
	}
}

func TestShutdownDeadline(t *testing.T) {
	checkLeaks(t)
	echo := newTarget(t, echoHandler)
	hub := newTestHub(t, hubOpts{})
	a := newAgent(t, testConfig([]string{hub.url}, map[string]string{"ldap": echo.addr()}, nil))
	runAgent(t, a)
	p := hub.nextPeer(t)
	p.open(1, "ldap")
	p.expect(t, codec.FrameOpenAck, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := a.Shutdown(ctx); err != context.DeadlineExceeded {
		t.Fatalf("Shutdown = %v", err)
	}
	if a.ActiveStreams() != 0 {
		t.Fatal("streams left")
	}
}

func TestPingTimeout(t *testing.T) {
	checkLeaks(t)
	hub := newTestHub(t, hubOpts{noPong: true, keepPings: true})
	cfg := testConfig([]string{hub.url}, map[string]string{"ldap": "127.0.0.1:1"}, nil)
	cfg.PingInterval = 20 * time.Millisecond
	cfg.PingTimeout = 300 * time.Millisecond
	a := newAgent(t, cfg)
	runAgent(t, a)
	p := hub.nextPeer(t)
	p.expect(t, codec.FramePing, 0)
	p.waitClosed(t)
	hub.nextPeer(t)
	waitFor(t, "reconnect", func() bool { return a.Connects() >= 2 })
}

func TestPingKeepsAlive(t *testing.T) {
	checkLeaks(t)
	hub := newTestHub(t, hubOpts{keepPings: true})
	cfg := testConfig([]string{hub.url}, map[string]string{"ldap": "127.0.0.1:1"}, nil)
	cfg.PingInterval = 10 * time.Millisecond
	cfg.PingTimeout = 100 * time.Millisecond
	a := newAgent(t, cfg)
	runAgent(t, a)
	p := hub.nextPeer(t)
	start := time.Now()
	var last uint64
	for time.Since(start) < 400*time.Millisecond {
		f := p.expect(t, codec.FramePing, 0)
		o, _ := codec.ParsePing(f.p)
		if o <= last {
			t.Fatalf("opaque %d after %d", o, last)
		}
		last = o
	}
	if a.Connects() != 1 {
		t.Fatalf("reconnected while PONGs flowed: %d", a.Connects())
	}
}

func TestHandshakeTimeout(t *testing.T) {
	checkLeaks(t)
	hub := newTestHub(t, hubOpts{noAck: true})
	cfg := testConfig([]string{hub.url}, map[string]string{"ldap": "127.0.0.1:1"}, nil)
	cfg.HandshakeTimeout = 200 * time.Millisecond
	a := newAgent(t, cfg)
	runAgent(t, a)
	p1 := hub.nextPeer(t)
	p1.waitClosed(t)
	hub.nextPeer(t) // it retries
	if a.Connects() != 0 {
		t.Fatal("counted a connect without HELLO_ACK")
	}
}

// TestHelloAckInUpgradeBuffer: the hub sends HELLO_ACK right behind the 101
// response, so the bytes may land in Dial's bufio.Reader.
func TestHelloAckInUpgradeBuffer(t *testing.T) {
	checkLeaks(t)
	ack := codec.AppendHelloAck(nil, codec.HelloAck{Version: codec.Version1, Window: 4096})
	hub := newTestHub(t, hubOpts{noAck: true, sendBefore: append(codec.AppendWSHeader(nil, codec.BinaryHeader(len(ack))), ack...)})
	a := newAgent(t, testConfig([]string{hub.url}, map[string]string{"ldap": "127.0.0.1:1"}, nil))
	runAgent(t, a)
	hub.nextPeer(t)
	waitFor(t, "connected", a.Connected)
}

func TestConfigValidation(t *testing.T) {
	_, err := New(Config{URLs: []string{"http://x/tunnel"}, Window: -1, Connectors: map[string]string{"a": "nohost"}})
	if err == nil {
		t.Fatal("accepted a bad config")
	}
	for _, want := range []string{"AgentID", "scheme", "Window", "target"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	a, err := New(Config{URLs: []string{"wss://u:pw@hub/tunnel"}, AgentID: "a", Connectors: map[string]string{"c": "h:1"}})
	if err != nil {
		t.Fatal(err)
	}
	if a.cfg.Window != DefaultWindow || a.cfg.DialTimeout != DefaultDialTimeout || a.cfg.PingTimeout != DefaultPingTimeout {
		t.Fatalf("defaults not applied: %+v", a.cfg)
	}
	if strings.Contains(a.logURLs[0], "pw") {
		t.Fatalf("password in log URL %s", a.logURLs[0])
	}
}

func TestMetrics(t *testing.T) {
	checkLeaks(t)
	echo := newTarget(t, echoHandler)
	hub := newTestHub(t, hubOpts{})
	set := metrics.NewSet()
	cfg := testConfig([]string{hub.url}, map[string]string{"ldap": echo.addr(), "dead": closedPort(t)}, nil)
	cfg.Metrics = set
	a := newAgent(t, cfg)
	runAgent(t, a)
	p := hub.nextPeer(t)
	p.open(1, "ldap")
	p.expect(t, codec.FrameOpenAck, 1)
	p.open(2, "dead")
	p.expectReason(t, codec.FrameOpenErr, 2, codec.ReasonDialFailed)
	r := &relay{t: t, p: p, cid: 1, agentWin: a.limits.Stream, hubWin: 256 << 10}
	r.run([]byte("hello"))
	waitFor(t, "stream done", func() bool { return a.ActiveStreams() == 0 })
	var b bytes.Buffer
	set.WritePrometheus(&b)
	m := b.String()
	for _, want := range []string{
		"nowconnect_agent_tunnel_up 1",
		"nowconnect_agent_streams_active 0",
		`nowconnect_agent_dial_seconds_bucket{connector="ldap",le="`,
		`nowconnect_agent_dial_seconds_count{connector="ldap"} 1`,
		`nowconnect_agent_dial_errors_total{connector="dead",reason="dial_failed"} 1`,
		`nowconnect_agent_dial_errors_total{connector="dead",reason="dial_timeout"} 0`,
		`nowconnect_agent_bytes_total{direction="c2a",connector="ldap"} 5`,
		`nowconnect_agent_bytes_total{direction="a2c",connector="ldap"} 5`,
		"nowconnect_agent_reconnects_total 0",
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s:\n%s", want, m)
		}
	}
}
