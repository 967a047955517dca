package hub

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/nowconnect/nowconnect/codec"
	"github.com/nowconnect/nowconnect/internal/testenv"
)

// Tests of Reload and of GOAWAY against a real in-process hub on loopback,
// with a hand-driven agent (rawAgent) where the frames matter.

// subjectVerifier accepts "Bearer <agent id>" (the hub's token checks are
// internal/auth's, tested there).
type subjectVerifier struct{}

func (subjectVerifier) VerifyBearer(h []byte) (string, []string, error) {
	id, ok := strings.CutPrefix(string(h), "Bearer ")
	if !ok || id == "" {
		return "", nil, fmt.Errorf("no bearer")
	}
	return id, nil, nil
}

type testHub struct {
	*Hub
	logs *testenv.SyncBuffer
}

func addr(t *testing.T) string { return fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)) }

// startTestHub runs a hub with the listeners given; mod may change cfg.
func startTestHub(t *testing.T, lis []Listener, mod func(*Config)) *testHub {
	t.Helper()
	logs := &testenv.SyncBuffer{}
	cfg := Config{
		Control:   addr(t),
		Listeners: lis,
		Verifier:  subjectVerifier{},
		Logger:    slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		// short timers, so a retired tunnel closes within a test's patience
		PingInterval: 200 * time.Millisecond,
	}
	if mod != nil {
		mod(&cfg)
	}
	h, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := h.Stop(ctx); err != nil {
			t.Errorf("stop: %v", err)
		}
	})
	return &testHub{Hub: h, logs: logs}
}

func (th *testHub) metric(t *testing.T, series string) float64 {
	t.Helper()
	return testenv.Metric(t, th.Metrics().WritePrometheus, series)
}

// rawAgent is a hand-driven agent tunnel.
type rawAgent struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

// dialAgent upgrades /tunnel as agent id, offering protocol 2 when v2.
func dialAgent(t *testing.T, h *Hub, id string, v2 bool) *rawAgent {
	t.Helper()
	d := ws.Dialer{Timeout: 5 * time.Second,
		Header: ws.HandshakeHeaderHTTP(http.Header{"Authorization": {"Bearer " + id}})}
	if v2 {
		d.Protocols = []string{codec.Subprotocol}
	}
	c, br, hs, err := d.Dial(context.Background(), "ws://"+h.cfg.Control+"/tunnel")
	if err != nil {
		t.Fatal(err)
	}
	if v2 != (hs.Protocol == codec.Subprotocol) {
		t.Fatalf("upgrade settled %q", hs.Protocol)
	}
	t.Cleanup(func() { c.Close() })
	if br == nil {
		br = bufio.NewReader(c)
	}
	a := &rawAgent{t: t, c: c, br: br}
	hello := codec.Hello{Version: codec.Version1, Window: 256 << 10, AgentID: id, Connectors: []string{"svc"}}
	if v2 {
		hello.Version, hello.MaxWindow, hello.TunnelWindow, hello.Instance = codec.Version, 256<<10, 0, 1
	}
	b, err := codec.AppendHello(nil, hello)
	if err != nil {
		t.Fatal(err)
	}
	a.send(b)
	if fh, _ := a.next(codec.FrameHelloAck); fh.Type != codec.FrameHelloAck {
		t.Fatal("no HELLO_ACK")
	}
	return a
}

// send writes one masked binary message.
func (a *rawAgent) send(p []byte) {
	a.t.Helper()
	h := ws.Header{Fin: true, OpCode: ws.OpBinary, Masked: true, Length: int64(len(p)), Mask: ws.NewMask()}
	b := codec.AppendWSHeader(nil, h)
	q := append([]byte(nil), p...)
	ws.Cipher(q, h.Mask, 0)
	if _, err := a.c.Write(append(b, q...)); err != nil {
		a.t.Fatalf("send: %v", err)
	}
}

// read returns the next tunnel frame; err is io.EOF once the hub closed.
func (a *rawAgent) read(timeout time.Duration) (codec.Header, []byte, error) {
	_ = a.c.SetReadDeadline(time.Now().Add(timeout))
	h, err := ws.ReadHeader(a.br)
	if err != nil {
		return codec.Header{}, nil, err
	}
	p := make([]byte, h.Length)
	if _, err := io.ReadFull(a.br, p); err != nil {
		return codec.Header{}, nil, err
	}
	if h.OpCode == ws.OpClose {
		return codec.Header{}, p, io.EOF
	}
	return codec.ParseFrame(p)
}

// next skips PING/PONG (answering PINGs) until a frame of type want.
func (a *rawAgent) next(want codec.FrameType) (codec.Header, []byte) {
	a.t.Helper()
	for {
		fh, p, err := a.read(5 * time.Second)
		if err != nil {
			a.t.Fatalf("waiting for %v: %v", want, err)
		}
		switch fh.Type {
		case want:
			return fh, p
		case codec.FramePing:
			a.send(codec.AppendPing(nil, codec.FramePong, binaryOpaque(p)))
		case codec.FramePong, codec.FrameWindow:
		default:
			a.t.Fatalf("got %v, waiting for %v", fh.Type, want)
		}
	}
}

func binaryOpaque(p []byte) uint64 { v, _ := codec.ParsePing(p); return v }

// closedByHub reads until the hub closes the connection, answering PINGs.
func (a *rawAgent) closedByHub(timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		fh, p, err := a.read(time.Until(deadline))
		if err != nil {
			var ne net.Error
			if ok := asNetErr(err, &ne); ok && ne.Timeout() {
				return false
			}
			return true
		}
		if fh.Type == codec.FramePing {
			a.send(codec.AppendPing(nil, codec.FramePong, binaryOpaque(p)))
		}
	}
	return false
}

func asNetErr(err error, ne *net.Error) bool {
	e, ok := err.(net.Error)
	if ok {
		*ne = e
	}
	return ok
}

// TestGoAwayProtocol1 is a protocol error: the hub closes the tunnel.
func TestGoAwayProtocol1(t *testing.T) {
	testenv.CheckGoroutines(t)
	th := startTestHub(t, []Listener{{Name: "l1", Bind: addr(t), Connector: "svc"}}, nil)
	a := dialAgent(t, th.Hub, "v1-agent", false)
	a.send(codec.AppendEmpty(nil, codec.FrameGoAway, 0))
	if !a.closedByHub(5 * time.Second) {
		t.Fatal("GOAWAY on protocol 1 did not close the tunnel")
	}
	testenv.WaitFor(t, 5*time.Second, "the close counted as a protocol error", func() bool {
		return th.metric(t, `nowconnect_tunnel_closes_total{reason="protocol"}`) == 1
	})
	if th.metric(t, `nowconnect_tunnel_goaways_total`) != 0 {
		t.Error("a GOAWAY on protocol 1 was counted as a retirement")
	}
}

// TestGoAwayRetires: on protocol 2, GOAWAY bars the tunnel (new clients
// are refused: no other agent), its stream carries on both ways to the
// end, and the tunnel closes once that stream is done (superseded).
func TestGoAwayRetires(t *testing.T) {
	testenv.CheckGoroutines(t)
	lis := addr(t)
	th := startTestHub(t, []Listener{{Name: "l1", Bind: lis, Connector: "svc"}}, nil)
	a := dialAgent(t, th.Hub, "v2-agent", true)

	client, err := net.Dial("tcp", lis)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	fh, _ := a.next(codec.FrameOpen)
	cid := fh.CID
	a.send(codec.AppendEmpty(nil, codec.FrameOpenAck, cid))

	a.send(codec.AppendEmpty(nil, codec.FrameGoAway, 0))
	testenv.WaitFor(t, 5*time.Second, "agent_goaway logged", func() bool {
		return strings.Contains(th.logs.String(), `"msg":"agent_goaway"`)
	})
	// No new stream for the retired tunnel.
	c2, err := net.Dial("tcp", lis)
	if err != nil {
		t.Fatal(err)
	}
	_ = c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c2.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("a client after GOAWAY was served: %d, %v", n, err)
	}
	c2.Close()
	if th.metric(t, `nowconnect_listener_errors_total{connector="svc",type="no_agent"}`) != 1 {
		t.Error("the client after GOAWAY was not refused as no_agent")
	}

	// The stream in flight still works both ways.
	if _, err := client.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if _, p := a.next(codec.FrameData); string(p) != "ping" {
		t.Fatalf("agent got %q", p)
	}
	data := append(codec.AppendHeader(nil, codec.FrameData, cid), "pong"...)
	a.send(data)
	a.send(codec.AppendEmpty(nil, codec.FrameFin, cid))
	got, err := io.ReadAll(client)
	if err != nil || string(got) != "pong" {
		t.Fatalf("client read %q, %v", got, err)
	}
	if a.closedByHub(300 * time.Millisecond) {
		t.Fatal("the tunnel closed while its stream was half open")
	}
	_ = client.(*net.TCPConn).CloseWrite()
	if !a.closedByHubAfterFin(t, cid) {
		t.Fatal("the retired tunnel did not close once its stream ended")
	}
	testenv.WaitFor(t, 5*time.Second, "closed as superseded", func() bool {
		return th.metric(t, `nowconnect_tunnel_closes_total{reason="superseded"}`) == 1
	})
	if th.metric(t, `nowconnect_tunnel_goaways_total`) != 1 {
		t.Error("GOAWAY not counted")
	}
	if n := th.metric(t, `nowconnect_tcp_rst_total{connector="svc",event="sent"}`); n != 0 {
		t.Errorf("%v RST sent: a stream was cut", n)
	}
}

// closedByHubAfterFin expects the hub's FIN for cid, then the close.
func (a *rawAgent) closedByHubAfterFin(t *testing.T, cid uint32) bool {
	t.Helper()
	fh, _ := a.next(codec.FrameFin)
	if fh.CID != cid {
		t.Fatalf("FIN for cid %d, want %d", fh.CID, cid)
	}
	return a.closedByHub(5 * time.Second)
}

// dialRefused reports whether a connection to addr is refused at once.
func dialRefused(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err == nil {
		c.Close()
		return false
	}
	return true
}

// TestReloadListeners: a listener added, one removed, one moved and one
// changed in place; a bind that fails is reported while the rest applies,
// and a moved listener whose new address is taken stays where it was.
func TestReloadListeners(t *testing.T) {
	testenv.CheckGoroutines(t)
	keep, gone, move := addr(t), addr(t), addr(t)
	base := []Listener{
		{Name: "keep", Bind: keep, Connector: "svc"},
		{Name: "gone", Bind: gone, Connector: "svc"},
		{Name: "move", Bind: move, Connector: "svc"},
	}
	h, err := New(Config{Control: addr(t), Listeners: base, Verifier: subjectVerifier{},
		Logger: slog.New(slog.NewJSONHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.Reload(Config{Listeners: base}); err != ErrNotRunning {
		t.Fatalf("Reload before Start: %v", err)
	}
	th := startTestHub(t, base, nil)

	added, moved := addr(t), addr(t)
	next := []Listener{
		{Name: "keep", Bind: keep, Connector: "other", Allow: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}},
		{Name: "move", Bind: moved, Connector: "svc"},
		{Name: "added", Bind: added, Connector: "svc"},
	}
	changes, err := th.Reload(Config{Listeners: next})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("changes: %q", changes)
	if len(changes) != 4 {
		t.Errorf("%d changes, want 4 (removed, moved, changed, added)", len(changes))
	}
	for _, a := range []string{added, moved} { // keep: below
		if dialRefused(a) {
			t.Errorf("%s refuses after the reload", a)
		}
	}
	for _, a := range []string{gone, move} {
		if !dialRefused(a) {
			t.Errorf("%s still accepts after the reload", a)
		}
	}
	// keep serves, with its new allowlist and connector.
	c, err := net.Dial("tcp", keep)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _ = c.Read(make([]byte, 1))
	c.Close()
	testenv.WaitFor(t, 5*time.Second, "cidr_blocked under the new allowlist", func() bool {
		return th.metric(t, `nowconnect_listener_errors_total{connector="other",type="cidr"}`) == 1
	})

	// A bind that fails: the address is taken by someone else.
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	again := []Listener{
		{Name: "keep", Bind: keep, Connector: "svc"},
		{Name: "move", Bind: taken.Addr().String(), Connector: "svc"},
		{Name: "added", Bind: added, Connector: "svc"},
		{Name: "blocked", Bind: taken.Addr().String(), Connector: "svc"},
	}
	changes, err = th.Reload(Config{Listeners: again})
	if err == nil {
		t.Fatal("binding a taken address was not reported")
	}
	t.Logf("changes %q, err %v", changes, err)
	if !strings.Contains(err.Error(), "listener move: kept on "+moved) || !strings.Contains(err.Error(), "listener blocked (bind") {
		t.Errorf("error does not name both listeners: %v", err)
	}
	if len(changes) != 1 || !strings.Contains(changes[0], "listener keep: connector other → svc") {
		t.Errorf("the rest of the reload was not applied: %q", changes)
	}
	if dialRefused(moved) {
		t.Error("the listener that could not move stopped serving")
	}
}

// TestReloadPDP swaps the policy client while clients arrive: decisions
// follow the new PDP, the old one drains and nothing leaks; pdp off lets
// clients through to routing.
func TestReloadPDP(t *testing.T) {
	testenv.CheckGoroutines(t)
	var allow atomic.Bool
	var asked [2]atomic.Int64
	pdpSrv := func(i int) *httptest.Server {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			asked[i].Add(1)
			fmt.Fprintf(w, `{"decision": %v}`, allow.Load())
		}))
		t.Cleanup(s.Close)
		return s
	}
	p0, p1 := pdpSrv(0), pdpSrv(1)
	lis := addr(t)
	base := []Listener{{Name: "l1", Bind: lis, Connector: "svc", PDP: true}}
	th := startTestHub(t, base, func(c *Config) { c.PDP = &PDPConfig{URL: p0.URL, CacheTTL: time.Hour} })
	refused := func() {
		t.Helper()
		c, err := net.Dial("tcp", lis)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil {
			t.Fatalf("client not closed: %d %v", n, err)
		}
	}
	refused()
	if asked[0].Load() != 1 {
		t.Fatalf("pdp 0 asked %d times", asked[0].Load())
	}
	changes, err := th.Reload(Config{Listeners: base, PDP: &PDPConfig{URL: p1.URL, CacheTTL: time.Hour}})
	if err != nil || len(changes) != 1 {
		t.Fatalf("reload: %q, %v", changes, err)
	}
	refused() // not from pdp 0's cache: pdp 1 is asked
	if asked[1].Load() != 1 || asked[0].Load() != 1 {
		t.Fatalf("asked pdp0 %d, pdp1 %d times", asked[0].Load(), asked[1].Load())
	}
	// Unchanged settings keep the client (and its cache).
	if changes, err := th.Reload(Config{Listeners: base, PDP: &PDPConfig{URL: p1.URL, CacheTTL: time.Hour}}); err != nil || len(changes) != 0 {
		t.Fatalf("no-op reload: %q, %v", changes, err)
	}
	refused()
	if asked[1].Load() != 1 {
		t.Fatal("an unchanged PDP lost its cache")
	}
	// PDP off: the listener's pdp flag goes off with it (cmd: UsePDP).
	off := []Listener{{Name: "l1", Bind: lis, Connector: "svc"}}
	if changes, err := th.Reload(Config{Listeners: off}); err != nil || len(changes) != 2 {
		t.Fatalf("pdp off: %q, %v", changes, err)
	}
	refused() // no agent now, but routed: counted as no_agent, not asked
	if asked[0].Load()+asked[1].Load() != 2 {
		t.Fatal("a PDP was asked after pdp off")
	}
	if th.metric(t, `nowconnect_listener_errors_total{connector="svc",type="no_agent"}`) != 1 {
		t.Fatal("the client was not routed after pdp off")
	}
}

// TestReloadModeAndMask: ha.mode off → shadow needs a restart (error,
// the rest applies); the mask applies at once.
func TestReloadModeAndMask(t *testing.T) {
	lis := []Listener{{Name: "l1", Bind: addr(t), Connector: "svc"}}
	th := startTestHub(t, lis, nil)
	changes, err := th.Reload(Config{Listeners: lis, MaskClientAddr: true, HA: &HAConfig{Mode: ModeShadow}})
	if err == nil || !strings.Contains(err.Error(), "needs a restart") {
		t.Fatalf("mode off → shadow: %v", err)
	}
	if len(changes) != 1 || !th.mask.Load() {
		t.Fatalf("mask not applied: %q", changes)
	}
	if th.Mode() != ModeOff {
		t.Fatal("mode changed")
	}
}
