package agent

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/nowconnect/nowconnect/codec"
	"github.com/nowconnect/nowconnect/internal/proxyproto"
	"github.com/nowconnect/nowconnect/internal/testenv"
)

// firstBytes is what a target received first on one connection.
type firstBytes struct {
	b   []byte
	err error
}

// recordTarget reads n bytes from every connection into got.
func recordTarget(t *testing.T, n int, got chan<- firstBytes) *targetServer {
	return newTarget(t, func(c *net.TCPConn) {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		b := make([]byte, n)
		_, err := io.ReadFull(c, b)
		got <- firstBytes{b, err}
	})
}

// TestProxyProtocolV2: a connector with ProxyProtocol "v2" gets a PROXY v2
// header (the OPEN's client as source, the dialed target as destination)
// before the bytes the hub pipelined behind the OPEN; an OPEN whose client
// address does not parse gets LOCAL; other connectors get no header.
func TestProxyProtocolV2(t *testing.T) {
	checkLeaks(t)
	const req = "pipelined"
	got := make(chan firstBytes, 3)
	tcp4 := recordTarget(t, proxyproto.HeaderLen+proxyproto.LenIPv4+len(req), got)
	local := recordTarget(t, proxyproto.HeaderLen+len(req), got)
	plain := recordTarget(t, len(req), got)
	hub := newTestHub(t, hubOpts{})
	cfg := testConfig([]string{hub.url}, map[string]string{"pp": tcp4.addr(), "pplocal": local.addr(), "plain": plain.addr()}, nil)
	cfg.ProxyProtocol = map[string]string{"pp": ProxyV2, "pplocal": ProxyV2, "plain": ""}
	a := newAgent(t, cfg)
	runAgent(t, a)
	p := hub.nextPeer(t)

	next := func() []byte {
		t.Helper()
		select {
		case fb := <-got:
			if fb.err != nil {
				t.Fatalf("target read: %v", fb.err)
			}
			return fb.b
		case <-time.After(10 * time.Second):
			t.Fatal("nothing reached the target")
			return nil
		}
	}
	// OPEN and DATA back to back: the DATA waits for the dial.
	p.open(1, "pp") // client 192.0.2.7:40000
	p.data(1, []byte(req))
	b := next()
	h, n, err := proxyproto.Parse(b)
	if err != nil {
		t.Fatalf("header: %v (% X)", err, b)
	}
	if want := netip.MustParseAddrPort("192.0.2.7:40000"); h.Local || h.Src != want {
		t.Fatalf("header %+v, want source %s", h, want)
	}
	if h.Dst.String() != tcp4.addr() {
		t.Fatalf("header destination %s, want the target %s", h.Dst, tcp4.addr())
	}
	if string(b[n:]) != req {
		t.Fatalf("after the header: %q, want %q", b[n:], req)
	}
	p.expect(t, codec.FrameOpenAck, 1)

	open, err := codec.AppendOpen(nil, 2, "pplocal", "not an address")
	if err != nil {
		t.Fatal(err)
	}
	p.send(open)
	p.data(2, []byte(req))
	b = next()
	if h, n, err := proxyproto.Parse(b); err != nil || !h.Local || string(b[n:]) != req {
		t.Fatalf("unparsable client: %+v %v, bytes % X", h, err, b)
	}

	p.open(3, "plain")
	p.data(3, []byte(req))
	if b := next(); string(b) != req {
		t.Fatalf("plain connector got %q", b)
	}
}

func TestProxyProtocolConfig(t *testing.T) {
	cfg := testConfig([]string{"ws://127.0.0.1:1/tunnel"}, map[string]string{"ldap": "h:1"}, nil)
	cfg.ProxyProtocol = map[string]string{"ldap": "v1", "nope": ProxyV2}
	_, err := New(cfg)
	if !errors.Is(err, ErrConfig) {
		t.Fatalf("New: %v", err)
	}
	for _, want := range []string{`ProxyProtocol["ldap"]: unknown value "v1"`, `ProxyProtocol["nope"]: no such connector`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
}

// TestTargetDialFailedLog: dial failures are logged at warn with the
// connector, the reason and the client (masked with MaskClientAddr), at
// most dialLogPerSecond a second; the rest are counted and the next line
// says how many.
func TestTargetDialFailedLog(t *testing.T) {
	for _, mask := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "masked"}[mask], func(t *testing.T) {
			checkLeaks(t)
			hub := newTestHub(t, hubOpts{})
			logs := &testenv.SyncBuffer{}
			set := metrics.NewSet()
			cfg := testConfig([]string{hub.url}, map[string]string{"dead": closedPort(t)}, logs)
			cfg.MaskClientAddr, cfg.Metrics = mask, set
			a := newAgent(t, cfg)
			runAgent(t, a)
			p := hub.nextPeer(t)
			const n = 3 * dialLogPerSecond
			for cid := uint32(1); cid <= n; cid++ {
				p.open(cid, "dead")
			}
			for range n {
				f := p.next(t)
				if r, _, _ := codec.ParseReason(f.p); f.h.Type != codec.FrameOpenErr || r != codec.ReasonDialFailed {
					t.Fatalf("got %v (%s), want OPEN_ERR dial_failed", f, r)
				}
			}
			series := `nowconnect_agent_log_suppressed_total{event="target_dial_failed"}`
			var recs []map[string]any
			var suppressed float64
			// Each line is written just after its OPEN_ERR went out.
			waitFor(t, "every failure logged or counted", func() bool {
				recs = logRecords(t, logs.String(), "target_dial_failed")
				suppressed = testenv.Metric(t, set.WritePrometheus, series)
				return len(recs)+int(suppressed) >= n
			})
			if len(recs) == 0 || len(recs)+int(suppressed) != n {
				t.Fatalf("%d lines + %v suppressed, want %d in all", len(recs), suppressed, n)
			}
			if suppressed == 0 {
				t.Fatalf("%d failures in a burst, none suppressed", n)
			}
			wantClient := "192.0.2.7:40000"
			if mask {
				wantClient = "192.0.2.0/24"
			}
			for _, r := range recs {
				if r["level"] != "WARN" || r["connector"] != "dead" || r["reason"] != "dial_failed" ||
					r["client"] != wantClient || r["detail"] != "connection refused" {
					t.Fatalf("target_dial_failed = %v", r)
				}
			}
			if strings.Contains(logs.String(), "192.0.2.7") == mask {
				t.Fatalf("client address in the logs with mask %v:\n%s", mask, logs)
			}
		})
	}
}
