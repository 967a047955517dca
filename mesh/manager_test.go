package mesh_test

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/nowconnect/nowconnect/codec"
	"github.com/nowconnect/nowconnect/internal/auth"
	"github.com/nowconnect/nowconnect/internal/testenv"
	"github.com/nowconnect/nowconnect/mesh"
)

// TestManagerConfig: every bad field is refused with an error naming it.
func TestManagerConfig(t *testing.T) {
	cert := tls.Certificate{Certificate: [][]byte{{1}}}
	for _, tc := range []struct {
		name string
		edit func(*mesh.ManagerConfig)
		want string
	}{
		{"no replica", func(c *mesh.ManagerConfig) { c.ReplicaID = "" }, "ReplicaID"},
		{"replica with a pipe", func(c *mesh.ManagerConfig) { c.ReplicaID = "a|b" }, "ReplicaID"},
		{"no handler", func(c *mesh.ManagerConfig) { c.Handler = nil }, "Handler: required"},
		{"peer scheme", func(c *mesh.ManagerConfig) { c.Peers = []string{"http://x/mesh"} }, "Peers[0]"},
		{"peer without host", func(c *mesh.ManagerConfig) { c.Peers = []string{"ws:///mesh"} }, "Peers[0]"},
		{"peer twice", func(c *mesh.ManagerConfig) { c.Peers = []string{"ws://x/mesh", "ws://x/mesh"} }, "Peers[1]: ws://x/mesh is listed twice"},
		{"advertise without discovery", func(c *mesh.ManagerConfig) { c.AdvertiseURL = "ws://x/mesh" }, "AdvertiseURL: needs Discovery"},
		{"interval without discovery", func(c *mesh.ManagerConfig) { c.DiscoveryInterval = time.Second }, "DiscoveryInterval"},
		{"short secret", func(c *mesh.ManagerConfig) { c.Secret = []byte("short") }, "Secret: 5 bytes"},
		{"listen TLS without listen", func(c *mesh.ManagerConfig) { c.ListenTLS = &tls.Config{Certificates: []tls.Certificate{cert}} }, "ListenTLS: set without Listen"},
		{"listen TLS without cert", func(c *mesh.ManagerConfig) { c.Listen, c.ListenTLS = "127.0.0.1:0", &tls.Config{} }, "ListenTLS: no server certificate"},
		{"bad listen", func(c *mesh.ManagerConfig) { c.Listen = "nope" }, "Listen"},
		{"listen nobody can use", func(c *mesh.ManagerConfig) { c.Listen, c.Secret = "127.0.0.1:0", nil }, "Listen: 127.0.0.1:0 would refuse every peer"},
		{"ping timeout below interval", func(c *mesh.ManagerConfig) { c.PingInterval, c.PingTimeout = 2*time.Second, time.Second }, "PingTimeout"},
		{"tiny backoff", func(c *mesh.ManagerConfig) { c.BackoffMax = time.Millisecond }, "BackoffMax"},
		{"window above max", func(c *mesh.ManagerConfig) { c.Window, c.MaxWindow = 2<<20, 1<<20 }, "Window"},
		{"max window above link", func(c *mesh.ManagerConfig) { c.MaxWindow, c.LinkWindow = 2<<20, 1<<20 }, "MaxWindow"},
		{"link window too big", func(c *mesh.ManagerConfig) { c.LinkWindow = 2 << 30 }, "LinkWindow"},
		{"negative depth", func(c *mesh.ManagerConfig) { c.SendQueueDepth = -1 }, "SendQueueDepth"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := hubConfig("hub-a")
			cfg.Handler = &recorder{}
			tc.edit(&cfg)
			_, err := mesh.NewManager(cfg)
			if !errors.Is(err, mesh.ErrBadManagerConfig) || !strings.Contains(err.Error(), "ManagerConfig."+tc.want) {
				t.Errorf("err = %v, want ErrBadManagerConfig naming %q", err, tc.want)
			}
		})
	}
}

// TestMeshOff: without a secret and without a TLS listener requiring certificates,
// the mesh is off: a warning says why, nothing is dialed (no dialing series),
// tokens and connections are refused.
func TestMeshOff(t *testing.T) {
	testenv.CheckGoroutines(t)
	a := listenHub(t, "hub-a", nil)
	off := newHub(t, mesh.ManagerConfig{ReplicaID: "hub-off", Peers: []string{a.url()}})
	if off.AcceptsPeers() {
		t.Fatal("AcceptsPeers with no credentials")
	}
	if !off.logged("mesh_off", "never an unauthenticated /mesh") {
		t.Errorf("no mesh_off warning:\n%s", off.logs.String())
	}
	if _, err := off.VerifyToken([]byte("Bearer x")); !errors.Is(err, mesh.ErrMeshAuth) {
		t.Errorf("VerifyToken = %v", err)
	}
	var buf bytes.Buffer
	off.cfg.Metrics.WritePrometheus(&buf)
	if strings.Contains(buf.String(), "nowconnect_mesh_links{") {
		t.Errorf("a mesh that is off exposes link states:\n%s", buf.String())
	}
	c1, c2 := net.Pipe()
	off.AcceptConn(c1, []byte("Bearer x"))
	if _, err := c2.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("AcceptConn with the mesh off: read %v, want the pipe closed", err)
	}
	if a.Link("hub-off") != nil {
		t.Error("a hub with the mesh off linked up")
	}
}

// controlPort stands in for the hub's control port: it upgrades /mesh after checking
// the token with VerifyToken (401 otherwise) and hands the connection to AcceptConn,
// as the engine does.
func controlPort(t *testing.T, m *mesh.Manager) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() { // controlPortLoop
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				var authz []byte
				u := ws.Upgrader{
					OnHeader: func(k, v []byte) error {
						if strings.EqualFold(string(k), "Authorization") {
							authz = append([]byte(nil), v...)
						}
						return nil
					},
					OnBeforeUpgrade: func() (ws.HandshakeHeader, error) {
						if _, err := m.VerifyToken(authz); err != nil {
							return nil, ws.RejectConnectionError(ws.RejectionStatus(http.StatusUnauthorized))
						}
						return nil, nil
					},
				}
				if _, err := u.Upgrade(c); err != nil {
					c.Close()
					return
				}
				m.AcceptConn(c, authz)
			})
		}
	})
	return "ws://" + ln.Addr().String() + "/mesh"
}

// TestAcceptConn: a peer reaches a hub through its control port (AcceptConn); an
// agent's token (aud nowconnect) never opens /mesh, and AcceptConn re-checks the
// token itself.
func TestAcceptConn(t *testing.T) {
	testenv.CheckGoroutines(t)
	a := newHub(t, mesh.ManagerConfig{ReplicaID: "hub-a", Secret: testSecret})
	url := controlPort(t, a.Manager)
	b := newHub(t, mesh.ManagerConfig{ReplicaID: "hub-b", Secret: testSecret, Peers: []string{url}})
	if l := a.waitLink(t, "hub-b"); l.Dialed() {
		t.Error("the accepted link says Dialed")
	}
	b.waitLink(t, "hub-a")

	agentTok, err := auth.Mint(testSecret, "agent-1", nil, time.Minute, "")
	if err != nil {
		t.Fatal(err)
	}
	_, err = a.VerifyToken([]byte("Bearer " + agentTok))
	if !errors.Is(err, mesh.ErrMeshAuth) || !errors.Is(err, auth.ErrAudience) {
		t.Errorf("agent token: %v, want ErrMeshAuth and auth.ErrAudience", err)
	}
	if strings.Contains(err.Error(), agentTok) {
		t.Error("the error quotes the token")
	}
	d := ws.Dialer{Header: ws.HandshakeHeaderHTTP(http.Header{"Authorization": {"Bearer " + agentTok}})}
	if _, _, _, err := d.Dial(t.Context(), url); !isStatus(err, 401) {
		t.Errorf("agent token on /mesh: %v, want 401", err)
	}
	// A hub that skipped the check: AcceptConn refuses by itself.
	c1, c2 := net.Pipe()
	a.AcceptConn(c1, []byte("Bearer "+agentTok))
	if _, err := c2.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("AcceptConn with an agent token: read %v, want closed", err)
	}
	if got := a.metric(t, `nowconnect_mesh_accept_errors_total{reason="auth"}`); got != 1 {
		t.Errorf("accept errors auth = %v", got)
	}
}

// TestBackpressure: against a peer that stops reading, SendData refuses once LinkWindow
// plus a frame is queued (reason inflight) and SendControl once SendQueueDepth control
// frames are (reason queue_full); both are counted, the gauges show the queue, and it
// drains once the peer reads again.
func TestBackpressure(t *testing.T) {
	testenv.CheckGoroutines(t)
	const linkWindow = 1 << 20
	a := listenHub(t, "hub-a", func(c *mesh.ManagerConfig) {
		c.Window, c.MaxWindow, c.LinkWindow = 65536, linkWindow, linkWindow
		c.SendQueueDepth = 8
		c.PingInterval, c.PingTimeout = 20*time.Second, time.Minute
	})
	p := dialRaw(t, a.url(), "hub-raw")
	p.handshake(t, "hub-raw")
	l := a.waitLink(t, "hub-raw")

	payload := make([]byte, codec.MaxPayload)
	var seq, last uint64 = 1, 0 // last: the last seq SendData took
	var full error
	refused := 0
	// Fill until the kernel's buffers are full too and the queue stays at its bound
	// (the first refusals may come while the kernel still takes more).
	testenv.WaitFor(t, 30*time.Second, "SendData refuses with a full queue", func() bool {
		for range 64 {
			seq++
			if full = l.SendData(header(t, codec.MeshFrameData, 2, seq), payload); full == nil {
				last = seq
			} else {
				if !errors.Is(full, mesh.ErrBackpressure) {
					t.Fatalf("SendData: %v, want ErrBackpressure", full)
				}
				refused++
				return a.metric(t, `nowconnect_mesh_inflight_bytes{peer="hub-raw"}`) >= 2*linkWindow-2*codec.MaxMeshFrameLen
			}
		}
		return false
	})
	if got := a.metric(t, `nowconnect_mesh_backpressure_drops_total{peer="hub-raw",reason="inflight"}`); got != float64(refused) {
		t.Errorf("inflight drops = %v, want %d", got, refused)
	}
	// Whole frames are charged about their size: the budget (twice the link
	// window and a frame, for frames of any size) holds about twice the window.
	if inflight := a.metric(t, `nowconnect_mesh_inflight_bytes{peer="hub-raw"}`); inflight > 2*linkWindow+codec.MaxMeshFrameLen+codec.MaxWSHeaderLen {
		t.Errorf("inflight gauge %v, above twice the link window %d and a frame", inflight, linkWindow)
	}
	// The writer is stuck in a write: control frames pile up to SendQueueDepth (the
	// exact count is TestControlDepth's; here the kernel may still take a batch).
	win, _ := codec.AppendMeshWindow(nil, 3, 1, 7, "agent-1", "ldap", 1)
	var n int
	for n = 0; n < 10000; n++ {
		if full = l.SendControl(win); full != nil {
			break
		}
	}
	if !errors.Is(full, mesh.ErrBackpressure) || n < 8 {
		t.Fatalf("SendControl after %d frames: %v, want ErrBackpressure after at least 8", n, full)
	}
	if got := a.metric(t, `nowconnect_mesh_backpressure_drops_total{peer="hub-raw",reason="queue_full"}`); got != 1 {
		t.Errorf("queue_full drops = %v", got)
	}

	// The peer reads again: every frame SendData took arrives whole and in
	// order (written directly, partly directly, or by the writer), the queue
	// drains, and sends work again.
	readUpTo := func(want uint64) {
		t.Helper()
		prev := uint64(0)
		for prev < want {
			h, pl, err := codec.ParseMeshFrame(p.read(t))
			if err != nil {
				t.Fatalf("after DATA seq %d: %v", prev, err)
			}
			if h.Type != codec.MeshFrameData {
				continue
			}
			if h.Seq <= prev || len(pl) != len(payload) {
				t.Fatalf("DATA seq %d (%d bytes) after seq %d", h.Seq, len(pl), prev)
			}
			prev = h.Seq
		}
		if prev != want {
			t.Fatalf("DATA up to seq %d, want %d", prev, want)
		}
	}
	readUpTo(last)
	testenv.WaitFor(t, 30*time.Second, "the queue drains", func() bool {
		return a.metric(t, `nowconnect_mesh_inflight_bytes{peer="hub-raw"}`) == 0 &&
			a.metric(t, `nowconnect_mesh_send_queue_size{peer="hub-raw"}`) == 0
	})
	if err := l.SendData(header(t, codec.MeshFrameData, 2, seq+1), payload); err != nil {
		t.Errorf("SendData after draining: %v", err)
	}
	readUpTo(seq + 1)
	p.conn.Close()
}

// TestDiscovery: three hubs that know each other only through a registry (the
// in-memory one, on a shared store) publish their URLs and link up in a full mesh; a
// hub that leaves the registry is no longer dialed and its series go away.
func TestDiscovery(t *testing.T) {
	testenv.CheckGoroutines(t)
	store := mesh.NewMemoryStore(nil)
	const hubTTL = 300 * time.Millisecond
	hubs := map[string]*hub{}
	for _, r := range []string{"hub-a", "hub-b", "hub-c"} {
		reg, err := mesh.NewMemory(mesh.MemoryConfig{Config: mesh.Config{ReplicaID: r, HubTTL: hubTTL}, Store: store})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(reg.Close)
		hubs[r] = startHub(t, func(addr string) mesh.ManagerConfig {
			return mesh.ManagerConfig{ReplicaID: r, Secret: testSecret, Listen: addr,
				Discovery: reg, AdvertiseURL: "ws://" + addr + "/mesh", DiscoveryInterval: 50 * time.Millisecond, HubTTL: hubTTL,
				BackoffMax: 500 * time.Millisecond}
		})
	}
	for r, h := range hubs {
		for p := range hubs {
			if p != r {
				h.waitLink(t, p)
			}
		}
	}
	for r, h := range hubs {
		if ups, _ := h.rec.counts(); ups != 2 {
			t.Errorf("%s: %d LinkUps, want 2", r, ups)
		}
	}
	hubs["hub-c"].Close()
	for _, r := range []string{"hub-a", "hub-b"} {
		h := hubs[r]
		h.waitNoLink(t, "hub-c", 5*time.Second)
		testenv.WaitFor(t, 5*time.Second, r+" stops dialing hub-c", func() bool {
			for _, s := range []string{"up", "dialing", "down"} {
				if _, ok := h.metricValue(`nowconnect_mesh_links{peer="hub-c",state="` + s + `"}`); ok {
					return false
				}
			}
			return h.logged("mesh_peer_removed", "hub-c")
		})
		if h.Link(map[string]string{"hub-a": "hub-b", "hub-b": "hub-a"}[r]) == nil {
			t.Errorf("%s lost its other link", r)
		}
	}
}

// TestDataNoAllocs: the steady-state DATA path (SendData, the writer's writev, the
// peer's read, parse and dedup, Handler.Frame) allocates nothing.
func TestDataNoAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items at random under -race")
	}
	got := make(chan struct{}, 1)
	a := listenHub(t, "hub-a", func(c *mesh.ManagerConfig) { c.Handler = &recorder{signal: got} })
	b := newHub(t, mesh.ManagerConfig{ReplicaID: "hub-b", Secret: testSecret, Peers: []string{a.url()}})
	l := b.waitLink(t, "hub-a")
	a.waitLink(t, "hub-b")
	hdr := make([]byte, 0, codec.MeshHeaderMax)
	payload := bytes.Repeat([]byte("x"), 1500)
	var seq uint64
	send := func() {
		seq++
		h, err := codec.AppendMeshHeader(hdr[:0], codec.MeshFrameData, 1, seq, 7, "agent-1", "ldap")
		if err != nil {
			panic(err)
		}
		if err := l.SendData(h, payload); err != nil {
			panic(err)
		}
		<-got
	}
	for range 200 {
		send()
	}
	if n := testing.AllocsPerRun(2000, send); n != 0 {
		t.Errorf("%v allocations per DATA frame, want 0", n)
	}
}

// BenchmarkLinkData measures one M_DATA frame of 16 KiB through a loopback link
// (SendData to Handler.Frame, one at a time; not asserted).
func BenchmarkLinkData(b *testing.B) {
	got := make(chan struct{}, 1)
	a := listenHub(b, "hub-a", func(c *mesh.ManagerConfig) { c.Handler = &recorder{signal: got} })
	h := newHub(b, mesh.ManagerConfig{ReplicaID: "hub-b", Secret: testSecret, Peers: []string{a.url()}})
	l := h.waitLink(b, "hub-a")
	hdr := make([]byte, 0, codec.MeshHeaderMax)
	payload := make([]byte, 16<<10)
	b.SetBytes(int64(len(payload)))
	b.ReportAllocs()
	var seq uint64
	for b.Loop() {
		seq++
		f, _ := codec.AppendMeshHeader(hdr[:0], codec.MeshFrameData, 1, seq, 7, "agent-1", "ldap")
		if err := l.SendData(f, payload); err != nil {
			b.Fatal(err)
		}
		<-got
	}
}

// TestConcurrentSendersKeepOrder: senders on several goroutines, each its own
// stream, write the link themselves when nobody else does, or leave their frames
// to the writer, which also finishes what a full socket did not take. The peer
// reads in bursts, so the socket fills and drains over and over: every frame
// arrives whole, once, and in its stream's order, a stream's WINDOW behind its
// DATA.
func TestConcurrentSendersKeepOrder(t *testing.T) {
	testenv.CheckGoroutines(t)
	a := listenHub(t, "hub-a", func(c *mesh.ManagerConfig) {
		c.PingInterval, c.PingTimeout = 20*time.Second, time.Minute
	})
	p := dialRaw(t, a.url(), "hub-raw")
	p.handshake(t, "hub-raw")
	l := a.waitLink(t, "hub-raw")

	const senders, frames = 6, 600
	var wg sync.WaitGroup
	for s := range senders {
		cid := uint32(2 * (s + 1))
		// Half the streams send small frames, which their senders write
		// themselves; the others bulk, which go to the writer.
		maxLen := codec.MaxPayload
		if s%2 == 0 {
			maxLen = 1024
		}
		wg.Go(func() { // sender s; waited for below
			payload := make([]byte, codec.MaxPayload)
			for seq := uint64(1); seq <= frames; seq++ {
				var err error
				for {
					if seq%7 == 0 {
						f, _ := codec.AppendMeshWindow(nil, cid, seq, 7, "agent-1", "ldap", uint32(seq))
						err = l.SendControl(f)
					} else {
						n := 1 + int(seq*uint64(cid)*7919)%maxLen
						for i := range payload[:n] {
							payload[i] = byte(seq)
						}
						h, _ := codec.AppendMeshHeader(nil, codec.MeshFrameData, cid, seq, 7, "agent-1", "ldap")
						err = l.SendData(h, payload[:n]) // not header(): it may t.Fatal, off the test goroutine
					}
					if !errors.Is(err, mesh.ErrBackpressure) {
						break
					}
					time.Sleep(time.Millisecond) // the peer is not reading: back off
				}
				if err != nil {
					t.Errorf("stream %d seq %d: %v", cid, seq, err)
					return
				}
			}
		})
	}
	last := map[uint32]uint64{}
	for got := 0; got < senders*frames; got++ {
		if got%200 == 0 {
			// Every 200 frames, let the senders get ahead again until the
			// link's queue holds frames: the reader then finds a full
			// socket and a backlog, not one frame at a time.
			testenv.WaitFor(t, 5*time.Second, "the link's queue holds frames", func() bool {
				return a.metric(t, `nowconnect_mesh_send_queue_size{peer="hub-raw"}`) > 0 || got >= (senders-1)*frames
			})
		}
		h, pl, err := codec.ParseMeshFrame(p.read(t))
		if err != nil {
			t.Fatalf("frame %d: %v", got, err)
		}
		if h.Seq != last[h.CID]+1 {
			t.Fatalf("stream %d: seq %d after %d", h.CID, h.Seq, last[h.CID])
		}
		last[h.CID] = h.Seq
		if h.Type == codec.MeshFrameData && !bytes.Equal(pl, bytes.Repeat([]byte{byte(h.Seq)}, len(pl))) {
			t.Fatalf("stream %d seq %d: payload corrupted", h.CID, h.Seq)
		}
	}
	wg.Wait()
	for s := range senders {
		if cid := uint32(2 * (s + 1)); last[cid] != frames {
			t.Errorf("stream %d: %d frames, want %d", cid, last[cid], frames)
		}
	}
}

// TestDirectWriteAfterWriteDeadline: a small frame that finds the socket full is
// handed to the writer part written, and the writer finishes it: every frame
// arrives whole and in order. That blocking write leaves the socket's write
// deadline behind; a sender that writes the link
// itself later, once that deadline has passed, must not fail on it (the link would
// go down with a write timeout while the peer reads everything).
func TestDirectWriteAfterWriteDeadline(t *testing.T) {
	testenv.CheckGoroutines(t)
	const writeTimeout = 200 * time.Millisecond
	a := listenHub(t, "hub-a", func(c *mesh.ManagerConfig) {
		c.PingInterval, c.PingTimeout, c.WriteTimeout = 20*time.Second, time.Minute, writeTimeout
	})
	p := dialRaw(t, a.url(), "hub-raw")
	p.handshake(t, "hub-raw")
	l := a.waitLink(t, "hub-raw")
	payload := make([]byte, 1000)
	seq := uint64(0)
	// The peer does not read. Small frames are written by this goroutine
	// until the socket is full; the frame that finds it full is handed to
	// the writer part written, and the writer blocks on its rest.
	testenv.WaitFor(t, 10*time.Second, "the link's queue holds frames", func() bool {
		for range 256 {
			seq++
			for i := range payload {
				payload[i] = byte(seq)
			}
			if err := l.SendData(header(t, codec.MeshFrameData, 2, seq), payload); err != nil {
				t.Fatalf("SendData: %v", err)
			}
		}
		return a.metric(t, `nowconnect_mesh_send_queue_size{peer="hub-raw"}`) > 0
	})
	blocked := time.Now()
	last := uint64(0)
	read := func(want uint64) {
		t.Helper()
		for last < want {
			h, pl, err := codec.ParseMeshFrame(p.read(t))
			if err != nil {
				t.Fatalf("after seq %d: %v", last, err)
			}
			if h.Seq != last+1 || !bytes.Equal(pl, bytes.Repeat([]byte{byte(h.Seq)}, len(pl))) {
				t.Fatalf("seq %d (%d bytes) after %d, or corrupted", h.Seq, len(pl), last)
			}
			last = h.Seq
		}
	}
	read(seq)
	testenv.WaitFor(t, 5*time.Second, "the blocked batch's deadline passes", func() bool {
		return time.Since(blocked) > 2*writeTimeout
	})
	for range 20 {
		seq++
		for i := range payload {
			payload[i] = byte(seq)
		}
		if err := l.SendData(header(t, codec.MeshFrameData, 2, seq), payload[:100]); err != nil {
			t.Fatalf("SendData after the deadline: %v", err)
		}
		read(seq)
	}
	if got := a.metric(t, `nowconnect_mesh_links{peer="hub-raw",state="up"}`); got != 1 {
		t.Errorf("links up: %v, want 1", got)
	}
}
