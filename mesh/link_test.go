package mesh_test

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/nowconnect/nowconnect/codec"
	"github.com/nowconnect/nowconnect/internal/testenv"
	"github.com/nowconnect/nowconnect/mesh"
)

// TestLinkFramesAndReconnect: a hub dials another; both see one link up with the
// right direction and M_HELLO; stream frames arrive whole and in order (control
// frames of a stream that has DATA queued stay behind it); RTT is measured; when the
// accepting hub goes away the dialer gets LinkDown at once, its sends fail, and it
// redials the restarted hub by itself (LinkUp again, a reconnect counted).
func TestLinkFramesAndReconnect(t *testing.T) {
	testenv.CheckGoroutines(t)
	a := listenHub(t, "hub-a", func(c *mesh.ManagerConfig) { c.Window, c.MaxWindow, c.LinkWindow = 65536, 1<<20, 4<<20 })
	active := true
	b := newHub(t, mesh.ManagerConfig{ReplicaID: "hub-b", Secret: testSecret, Peers: []string{a.url()},
		Active: func() bool { return active }, BackoffMax: 500 * time.Millisecond, PingInterval: 50 * time.Millisecond})

	ab := a.waitLink(t, "hub-b")
	ba := b.waitLink(t, "hub-a")
	if ab.Dialed() || !ba.Dialed() {
		t.Fatalf("Dialed: a→b %v, b→a %v; want false, true", ab.Dialed(), ba.Dialed())
	}
	if h := ba.PeerHello(); h.Replica != "hub-a" || h.Window != 65536 || h.MaxWindow != 1<<20 || h.LinkWindow != 4<<20 || h.Active {
		t.Errorf("b sees a's M_HELLO %+v", h)
	}
	if h := ab.PeerHello(); h.Replica != "hub-b" || !h.Active || h.Window != mesh.DefaultWindow || h.LinkWindow != mesh.DefaultLinkWindow {
		t.Errorf("a sees b's M_HELLO %+v", h)
	}
	if got := b.metric(t, `nowconnect_mesh_links{peer="hub-a",state="up"}`); got != 1 {
		t.Errorf("b: links up = %v", got)
	}

	// b → a: OPEN, DATA, DATA, FIN, and a WINDOW of another stream.
	open, _ := codec.AppendMeshOpen(nil, 1, 7, "agent-1", "ldap", "10.0.0.1:5000")
	fin, _ := codec.AppendMeshHeader(nil, codec.MeshFrameFin, 1, 4, 7, "agent-1", "ldap")
	win, _ := codec.AppendMeshWindow(nil, 3, 1, 7, "agent-1", "ldap", 4096)
	big := strings.Repeat("x", codec.MaxPayload)
	for i, err := range []error{
		ba.SendControl(open),
		ba.SendData(header(t, codec.MeshFrameData, 1, 2), []byte("hello")),
		ba.SendData(header(t, codec.MeshFrameData, 1, 3), []byte(big)),
		ba.SendControl(fin),
		ba.SendControl(win),
	} {
		if err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	testenv.WaitFor(t, 5*time.Second, "a receives 5 frames", func() bool { return len(a.rec.got()) == 5 })
	got := a.rec.got()
	// WINDOW of cid 3 may overtake cid 1's DATA; cid 1's frames keep their order.
	var cid1 []frameRec
	for _, f := range got {
		if f.CID == 1 {
			cid1 = append(cid1, f)
		}
	}
	want1 := []frameRec{
		{codec.MeshFrameOpen, 1, 1, 7, "agent-1", "ldap", "\x0d10.0.0.1:5000"},
		{codec.MeshFrameData, 1, 2, 7, "agent-1", "ldap", "hello"},
		{codec.MeshFrameData, 1, 3, 7, "agent-1", "ldap", big},
		{codec.MeshFrameFin, 1, 4, 7, "agent-1", "ldap", ""},
	}
	if !reflect.DeepEqual(cid1, want1) {
		t.Errorf("cid 1 frames at a:\n got %.200v\nwant %.200v", cid1, want1)
	}

	// a → b: a link-level WINDOW (CID 0, never deduplicated).
	lw, _ := codec.AppendMeshWindow(nil, 0, 0, 0, "", "", 1<<20)
	for range 2 {
		if err := ab.SendControl(lw); err != nil {
			t.Fatal(err)
		}
	}
	testenv.WaitFor(t, 5*time.Second, "b receives 2 link WINDOWs", func() bool { return len(b.rec.got()) == 2 })

	// Frames the link does not send.
	for name, f := range map[string][]byte{"DATA via SendControl": header(t, codec.MeshFrameData, 1, 5), "M_HELLO": helloFrame(t, "x"), "garbage": {0x99}} {
		if err := ba.SendControl(f); !errors.Is(err, mesh.ErrBadFrame) {
			t.Errorf("SendControl(%s) = %v, want ErrBadFrame", name, err)
		}
	}
	if err := ba.SendData(fin, []byte("x")); !errors.Is(err, mesh.ErrBadFrame) {
		t.Errorf("SendData with a FIN header = %v", err)
	}
	if err := ba.SendData(header(t, codec.MeshFrameData, 1, 5), nil); !errors.Is(err, mesh.ErrBadFrame) {
		t.Errorf("SendData without payload = %v", err)
	}

	// RTT from M_PING/M_PONG.
	testenv.WaitFor(t, 5*time.Second, "b measures an RTT", func() bool {
		v, ok := b.metricValue(`nowconnect_mesh_rtt_seconds_count{peer="hub-a"}`)
		return ok && v > 0 && ba.RTT() > 0
	})
	if ba.RTT() > time.Second {
		t.Errorf("loopback RTT %v", ba.RTT())
	}

	// a goes away: b's link drops at once, sends fail.
	addr := a.ListenAddr().String()
	a.Close()
	testenv.WaitFor(t, 3*time.Second, "b's LinkDown", func() bool { _, d := b.rec.counts(); return d == 1 })
	if err := b.rec.lastDown(); !errors.Is(err, mesh.ErrLinkDown) || !errors.Is(err, mesh.ErrPeerClosed) {
		t.Errorf("b's LinkDown error %v", err)
	}
	if err := ba.SendData(header(t, codec.MeshFrameData, 1, 9), []byte("x")); !errors.Is(err, mesh.ErrLinkDown) {
		t.Errorf("SendData on a dead link = %v", err)
	}
	if b.Link("hub-a") != nil || len(b.Links()) != 0 {
		t.Error("b still lists a link to a")
	}

	// a comes back on the same address: b redials, LinkUp again, a reconnect.
	a2 := newHub(t, mesh.ManagerConfig{ReplicaID: "hub-a", Secret: testSecret, Listen: addr})
	b.waitLink(t, "hub-a")
	a2.waitLink(t, "hub-b")
	if ups, _ := b.rec.counts(); ups != 2 {
		t.Errorf("b: %d LinkUps, want 2", ups)
	}
	if got := b.metric(t, `nowconnect_mesh_link_reconnects_total{peer="hub-a"}`); got != 1 {
		t.Errorf("reconnects = %v, want 1", got)
	}
	b.rec.check(t)
	a.rec.check(t)
}

// TestCrossingDials: two hubs that list each other start at the same instant, 200
// times. Every time, each ends with exactly one link, the same connection, and each
// saw exactly one LinkUp: the losing link is refused before it is up.
func TestCrossingDials(t *testing.T) {
	testenv.CheckGoroutines(t)
	runs := 200
	if testing.Short() {
		runs = 20
	}
	crossLowerWins = 0
	for i := range runs {
		for try := 0; !crossOnce(t, i); try++ {
			if try == 5 {
				t.Fatalf("run %d: no free ports", i)
			}
		}
		if t.Failed() {
			return
		}
	}
	// Normally hub-a's dial wins (hub-b's is refused while it is in flight); the
	// link dialed by hub-b survives when hub-a's first dial found hub-b not yet
	// listening.
	t.Logf("%d of %d runs kept the link dialed by hub-a", crossLowerWins, runs)
}

var crossLowerWins int

// crossOnce runs one crossing start; it reports false when a port it picked was taken
// meanwhile (testenv.FreePort's caveat) and the run must be redone.
func crossOnce(t *testing.T, i int) bool {
	addrA := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	addrB := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	mk := func(replica, listen, peer string) (*mesh.Manager, *recorder) {
		rec := &recorder{}
		m, err := mesh.NewManager(mesh.ManagerConfig{ReplicaID: replica, Secret: testSecret, Listen: listen,
			Peers: []string{"ws://" + peer + "/mesh"}, Handler: rec})
		if err != nil {
			t.Fatal(err)
		}
		return m, rec
	}
	a, ra := mk("hub-a", addrA, addrB)
	b, rb := mk("hub-b", addrB, addrA)
	var wg sync.WaitGroup
	start := make(chan struct{})
	errs := make([]error, 2)
	for j, m := range []*mesh.Manager{a, b} {
		wg.Go(func() { <-start; errs[j] = m.Start() })
	}
	close(start)
	wg.Wait()
	defer a.Close()
	defer b.Close()
	if errors.Is(errs[0], syscall.EADDRINUSE) || errors.Is(errs[1], syscall.EADDRINUSE) {
		return false
	}
	if errs[0] != nil || errs[1] != nil {
		t.Fatalf("run %d: Start: %v, %v", i, errs[0], errs[1])
	}
	testenv.WaitFor(t, 10*time.Second, "both links up", func() bool {
		return a.Link("hub-b") != nil && b.Link("hub-a") != nil
	})
	la, lb := a.Link("hub-b"), b.Link("hub-a")
	if la.Dialed() == lb.Dialed() {
		t.Fatalf("run %d: a's link dialed=%v, b's dialed=%v: two different connections", i, la.Dialed(), lb.Dialed())
	}
	if la.Dialed() {
		crossLowerWins++
	}
	// The loser is refused before it is up; once b's own dial has learned that,
	// nothing changes any more. Close and count.
	a.Close()
	b.Close()
	for name, r := range map[string]*recorder{"hub-a": ra, "hub-b": rb} {
		ups, downs := r.counts()
		if ups != 1 || downs != 1 {
			t.Errorf("run %d: %s saw %d LinkUp and %d LinkDown, want 1 and 1", i, name, ups, downs)
		}
		r.check(t)
	}
	return true
}

// TestDedup: a raw peer sends duplicate stream frames; the hub gives the Handler each
// frame once and counts the rest in nowconnect_cid_dedup_dropped_total. Link-level
// M_WINDOWs (CID 0, seq 0) are never deduplicated.
func TestDedup(t *testing.T) {
	testenv.CheckGoroutines(t)
	a := listenHub(t, "hub-a", nil)
	p := dialRaw(t, a.url(), "hub-raw")
	p.handshake(t, "hub-raw")
	a.waitLink(t, "hub-raw")

	open, _ := codec.AppendMeshOpen(nil, 2, 7, "agent-1", "ldap", "")
	open4, _ := codec.AppendMeshOpen(nil, 4, 7, "agent-1", "ldap", "")
	data := func(cid uint32, seq uint64, s string) []byte {
		f, _ := codec.AppendMeshData(nil, cid, seq, 7, "agent-1", "ldap", []byte(s))
		return f
	}
	lw, _ := codec.AppendMeshWindow(nil, 0, 0, 0, "", "", 100)
	sent := [][]byte{
		open, data(2, 2, "a"), data(2, 2, "a-dup"), data(2, 1, "old"), data(2, 3, "b"),
		open4, open4, lw, lw, data(4, 2, "c"), open, data(2, 4, "d"),
	}
	for _, f := range sent {
		p.send(t, f)
	}
	want := []string{"open2", "2:a", "2:b", "open4", "win", "win", "4:c", "2:d"}
	testenv.WaitFor(t, 5*time.Second, "the new frames arrive", func() bool { return len(a.rec.got()) >= len(want) })
	var got []string
	for _, f := range a.rec.got() {
		switch f.Type {
		case codec.MeshFrameOpen:
			got = append(got, fmt.Sprintf("open%d", f.CID))
		case codec.MeshFrameWindow:
			got = append(got, "win")
		case codec.MeshFrameData:
			got = append(got, fmt.Sprintf("%d:%s", f.CID, f.Payload))
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("frames given to the Handler %v, want %v", got, want)
	}
	if got := a.metric(t, `nowconnect_cid_dedup_dropped_total`); got != 4 {
		t.Errorf("dedup dropped %v, want 4", got)
	}
	if got := a.metric(t, `nowconnect_mesh_frames_total{dir="in",type="M_DATA"}`); got != 6 {
		t.Errorf("frames in M_DATA = %v, want 6 (duplicates are counted as received)", got)
	}
}

// TestProtocolViolations: what a raw peer must not send closes the link with a close
// frame saying why, and counts a link error.
func TestProtocolViolations(t *testing.T) {
	testenv.CheckGoroutines(t)
	a := listenHub(t, "hub-a", nil)
	for _, tc := range []struct {
		name   string
		hello  bool // handshake first
		send   func(t *testing.T, p *rawPeer)
		code   ws.StatusCode
		reason string
	}{
		{"text message", true, func(t *testing.T, p *rawPeer) {
			if err := wsutil.WriteClientText(p.conn, []byte("hi")); err != nil {
				t.Fatal(err)
			}
		}, ws.StatusUnsupportedData, "text messages are not accepted"},
		{"fragmented message", true, func(t *testing.T, p *rawPeer) {
			f := ws.MaskFrameInPlace(ws.NewFrame(ws.OpBinary, false, []byte{byte(codec.MeshFramePing)}))
			if err := ws.WriteFrame(p.conn, f); err != nil {
				t.Fatal(err)
			}
		}, ws.StatusUnsupportedData, "fragmented messages are not accepted"},
		{"oversized message", true, func(t *testing.T, p *rawPeer) {
			h := ws.Header{Fin: true, OpCode: ws.OpBinary, Masked: true, Length: codec.MaxMeshFrameLen + 1}
			if err := ws.WriteHeader(p.conn, h); err != nil {
				t.Fatal(err)
			}
		}, ws.StatusMessageTooBig, "at most"},
		{"unmasked frame", true, func(t *testing.T, p *rawPeer) {
			if err := ws.WriteFrame(p.conn, ws.NewBinaryFrame([]byte{byte(codec.MeshFramePing), 0, 0, 0, 0, 0, 0, 0, 0})); err != nil {
				t.Fatal(err)
			}
		}, ws.StatusProtocolError, "unmasked frame"},
		{"unknown frame type", true, func(t *testing.T, p *rawPeer) { p.send(t, []byte{0x06, 1, 2}) },
			ws.StatusProtocolError, "malformed mesh frame"},
		{"second M_HELLO", true, func(t *testing.T, p *rawPeer) { p.send(t, helloFrame(t, "hub-raw")) },
			ws.StatusProtocolError, "M_HELLO after the handshake"},
		{"stream frame before M_HELLO", false, func(t *testing.T, p *rawPeer) {
			f, _ := codec.AppendMeshData(nil, 1, 1, 1, "a", "c", []byte("x"))
			p.send(t, f)
		}, ws.StatusProtocolError, "expected M_HELLO"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, _ := a.metricValue(`nowconnect_mesh_link_errors_total{peer="hub-raw"}`)
			p := dialRaw(t, a.url(), "hub-raw")
			if tc.hello {
				p.handshake(t, "hub-raw")
			}
			tc.send(t, p)
			ce := p.readClose(t)
			if ce.Code != tc.code || !strings.Contains(ce.Reason, tc.reason) {
				t.Errorf("close %d %q, want %d containing %q", ce.Code, ce.Reason, tc.code, tc.reason)
			}
			if tc.hello {
				testenv.WaitFor(t, 5*time.Second, "the link error is counted", func() bool {
					v, _ := a.metricValue(`nowconnect_mesh_link_errors_total{peer="hub-raw"}`)
					return v == before+1
				})
				a.waitNoLink(t, "hub-raw", 5*time.Second)
			}
		})
	}
	a.rec.check(t)
}

// TestHelloChecks: a peer claiming this hub's replica id, or another one than its
// token names, is refused with the reason; a peer of a later version is served in
// version 1.
func TestHelloChecks(t *testing.T) {
	testenv.CheckGoroutines(t)
	a := listenHub(t, "hub-a", nil)

	p := dialRaw(t, a.url(), "hub-a")
	p.send(t, helloFrame(t, "hub-a"))
	if ce := p.readClose(t); ce.Code != ws.StatusPolicyViolation || ce.Reason != "self" {
		t.Errorf("self: close %d %q", ce.Code, ce.Reason)
	}

	p = dialRaw(t, a.url(), "hub-x")
	p.send(t, helloFrame(t, "hub-y"))
	if ce := p.readClose(t); ce.Code != ws.StatusPolicyViolation || !strings.Contains(ce.Reason, "token names hub-x") {
		t.Errorf("token mismatch: close %d %q", ce.Code, ce.Reason)
	}

	// Version 2 (unknown to this build) with a field appended: the link speaks 1.
	v2 := helloFrame(t, "hub-v2")
	v2[1] = 2
	v2 = append(v2, 0xde, 0xad)
	p = dialRaw(t, a.url(), "hub-v2")
	p.send(t, v2)
	if h := p.read(t); codec.MeshFrameType(h[0]) != codec.MeshFrameHello || h[1] != codec.MeshVersion {
		t.Fatalf("v2 peer: answer %x", h)
	}
	if l := a.waitLink(t, "hub-v2"); l.PeerHello().Version != 2 {
		t.Errorf("PeerHello().Version = %d", l.PeerHello().Version)
	}

	// A token that does not verify: 401 at the upgrade.
	d := ws.Dialer{Header: ws.HandshakeHeaderHTTP(map[string][]string{"Authorization": {"Bearer x.y.z"}})}
	if _, _, _, err := d.Dial(t.Context(), a.url()); !isStatus(err, 401) {
		t.Errorf("bad token: dial error %v, want HTTP 401", err)
	}
	if _, _, _, err := (ws.Dialer{}).Dial(t.Context(), a.url()); !isStatus(err, 401) {
		t.Errorf("no token: dial error %v, want HTTP 401", err)
	}
	if _, _, _, err := (ws.Dialer{}).Dial(t.Context(), strings.TrimSuffix(a.url(), "/mesh")+"/tunnel"); !isStatus(err, 404) {
		t.Errorf("/tunnel on the mesh listener: %v, want HTTP 404", err)
	}
	// Counted once the 401 is written, so maybe just after the dialer read it.
	testenv.WaitFor(t, 5*time.Second, "2 accept errors with reason auth", func() bool {
		v, _ := a.metricValue(`nowconnect_mesh_accept_errors_total{reason="auth"}`)
		return v == 2
	})
	a.rec.check(t)
}

func isStatus(err error, code int) bool {
	var se ws.StatusError
	return errors.As(err, &se) && int(se) == code
}

// TestSilentPeer: a peer that completes the handshake and then sends nothing (no
// M_PING either) is closed after PingTimeout with ErrPingTimeout, whoever reads
// the link.
func TestSilentPeer(t *testing.T) {
	bothReadPaths(t, func(t *testing.T, readOn bool) {
		a := listenHub(t, "hub-a", func(c *mesh.ManagerConfig) {
			c.PingInterval, c.PingTimeout = 50*time.Millisecond, 400*time.Millisecond
			c.Handler = &recorder{readOn: readOn}
		})
		p := dialRaw(t, a.url(), "hub-raw")
		p.handshake(t, "hub-raw")
		a.waitLink(t, "hub-raw")
		start := time.Now()
		testenv.WaitFor(t, 5*time.Second, "LinkDown of the silent peer", func() bool { _, d := a.rec.counts(); return d == 1 })
		took := time.Since(start)
		if err := a.rec.lastDown(); !errors.Is(err, mesh.ErrPingTimeout) {
			t.Errorf("LinkDown error %v, want ErrPingTimeout", err)
		}
		if took < 300*time.Millisecond {
			t.Errorf("closed after %v, before PingTimeout", took)
		}
		if got := a.metric(t, `nowconnect_mesh_link_errors_total{peer="hub-raw"}`); got != 1 {
			t.Errorf("link errors = %v", got)
		}
		if readOn && a.rec.readsMoved() != 1 {
			t.Errorf("reading moved %d times, want 1", a.rec.readsMoved())
		}
		a.rec.check(t)
	})
}

// TestLinkClose: Link.Close ends the link on both hubs with the right causes (the
// peer reads the close frame), and the dialer redials.
func TestLinkClose(t *testing.T) {
	bothReadPaths(t, func(t *testing.T, readOn bool) {
		a := listenHub(t, "hub-a", func(c *mesh.ManagerConfig) { c.Handler = &recorder{readOn: readOn} })
		b := newHub(t, mesh.ManagerConfig{ReplicaID: "hub-b", Secret: testSecret, Peers: []string{a.url()}, BackoffMax: time.Second,
			Handler: &recorder{readOn: readOn}})
		ab := a.waitLink(t, "hub-b")
		b.waitLink(t, "hub-a")
		cause := errors.New("resync failed")
		ab.Close(cause)
		<-ab.Done()
		if err := a.rec.lastDown(); !errors.Is(err, mesh.ErrLinkDown) || !errors.Is(err, cause) {
			t.Errorf("a's LinkDown error %v", err)
		}
		testenv.WaitFor(t, 5*time.Second, "b's LinkDown", func() bool { _, d := b.rec.counts(); return d >= 1 })
		if err := b.rec.lastDown(); !errors.Is(err, mesh.ErrPeerClosed) {
			t.Errorf("b's LinkDown error %v", err)
		}
		testenv.WaitFor(t, 5*time.Second, "b redials", func() bool { ups, _ := b.rec.counts(); return ups == 2 && b.Link("hub-a") != nil })
		if got := a.metric(t, `nowconnect_mesh_link_errors_total{peer="hub-b"}`); got != 0 {
			t.Errorf("a closing a link on purpose counted %v errors", got)
		}
		if readOn {
			testenv.WaitFor(t, 5*time.Second, "the redialed link read elsewhere too", func() bool { return b.rec.readsMoved() == 2 })
		}
		a.rec.check(t)
		b.rec.check(t)
	})
}

// TestSelfPeer: a peer URL that leads to this hub is refused and no longer dialed.
func TestSelfPeer(t *testing.T) {
	testenv.CheckGoroutines(t)
	var addr string
	a := startHub(t, func(ad string) mesh.ManagerConfig {
		addr = ad
		return mesh.ManagerConfig{ReplicaID: "hub-a", Secret: testSecret, Listen: addr, Peers: []string{"ws://" + addr + "/mesh"}}
	})
	testenv.WaitFor(t, 5*time.Second, "mesh_peer_is_self logged", func() bool { return a.logged("mesh_peer_is_self", addr) })
	testenv.WaitFor(t, 5*time.Second, "no links series for the self URL", func() bool {
		_, ok := a.metricValue(`nowconnect_mesh_links{peer="` + addr + `",state="down"}`)
		return !ok
	})
	if ups, _ := a.rec.counts(); ups != 0 {
		t.Errorf("%d LinkUps", ups)
	}
}

// TestMetricFamilies: every nowconnect_* family a linked pair of hubs exposes has a
// type and help text in MetricFamilies (the hub's /metrics needs them), and the
// histogram is a Prometheus one (le buckets).
func TestMetricFamilies(t *testing.T) {
	testenv.CheckGoroutines(t)
	a := listenHub(t, "hub-a", nil)
	b := newHub(t, mesh.ManagerConfig{ReplicaID: "hub-b", Secret: testSecret, Peers: []string{a.url()}})
	l := b.waitLink(t, "hub-a")
	testenv.WaitFor(t, 5*time.Second, "an RTT sample", func() bool { return l.RTT() > 0 })
	fams := mesh.MetricFamilies()
	var buf strings.Builder
	for _, h := range []*hub{a, b} {
		h.cfg.Metrics.WritePrometheus(&buf)
	}
	seen := map[string]bool{}
	for _, line := range strings.Split(buf.String(), "\n") {
		name, _, _ := strings.Cut(line, "{")
		name, _, _ = strings.Cut(name, " ")
		if !strings.HasPrefix(name, "nowconnect_") {
			continue
		}
		for _, suf := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(name, suf); ok && fams[base][0] == "histogram" {
				name = base
			}
		}
		seen[name] = true
		if _, ok := fams[name]; !ok {
			t.Errorf("family %s exposed but not in MetricFamilies", name)
		}
	}
	for _, want := range []string{"nowconnect_mesh_links", "nowconnect_mesh_frames_total", "nowconnect_mesh_rtt_seconds",
		"nowconnect_mesh_send_queue_size", "nowconnect_mesh_inflight_bytes", "nowconnect_mesh_backpressure_drops_total",
		"nowconnect_cid_dedup_dropped_total", "nowconnect_mesh_link_errors_total"} {
		if !seen[want] {
			t.Errorf("%s not exposed", want)
		}
	}
	if !strings.Contains(buf.String(), `nowconnect_mesh_rtt_seconds_bucket{peer="hub-a",le="0.02"}`) {
		t.Error("the RTT histogram has no le=\"0.02\" bucket")
	}
}

// TestDuplicateRules: an inbound link from a peer this hub already dialed is refused
// ("duplicate <this hub>", before it is up); an inbound link from a peer that dialed
// before replaces the older one (the peer restarted unnoticed): LinkDown of the old
// link, then LinkUp of the new.
func TestDuplicateRules(t *testing.T) {
	testenv.CheckGoroutines(t)
	b := listenHub(t, "hub-b", nil)
	a := listenHub(t, "hub-a", func(c *mesh.ManagerConfig) { c.Peers = []string{b.url()} })
	ab := a.waitLink(t, "hub-b")
	if !ab.Dialed() {
		t.Fatal("a's link to b is not dialed by a")
	}

	// Something claiming to be hub-b dials a: a keeps the link it dialed.
	p := dialRaw(t, a.url(), "hub-b")
	p.send(t, helloFrame(t, "hub-b"))
	if ce := p.readClose(t); ce.Code != ws.StatusNormalClosure || ce.Reason != "duplicate hub-a" {
		t.Errorf("close %d %q, want 1000 \"duplicate hub-a\"", ce.Code, ce.Reason)
	}
	if a.Link("hub-b") != ab {
		t.Error("a's link to b was replaced")
	}

	// hub-c dials b twice in a row (a restart b did not notice): the newer link wins.
	p1 := dialRaw(t, b.url(), "hub-c")
	p1.handshake(t, "hub-c")
	l1 := b.waitLink(t, "hub-c")
	p2 := dialRaw(t, b.url(), "hub-c")
	p2.handshake(t, "hub-c")
	if ce := p1.readClose(t); ce.Reason != "duplicate hub-b" {
		t.Errorf("old link closed with %q", ce.Reason)
	}
	testenv.WaitFor(t, 5*time.Second, "the new link is up", func() bool { l := b.Link("hub-c"); return l != nil && l != l1 })
	ups, downs := b.rec.counts()
	if ups != 3 || downs != 1 || !errors.Is(b.rec.lastDown(), mesh.ErrDuplicateLink) {
		t.Errorf("b: %d LinkUps, %d LinkDowns (last %v), want 3, 1, ErrDuplicateLink", ups, downs, b.rec.lastDown())
	}
	b.rec.check(t)
	a.rec.check(t)
}
