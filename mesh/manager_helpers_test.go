package mesh_test

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/nowconnect/nowconnect/codec"
	"github.com/nowconnect/nowconnect/internal/testenv"
	"github.com/nowconnect/nowconnect/mesh"
)

// testSecret is the mesh secret of the tests' hubs.
var testSecret = []byte("0123456789abcdef0123456789abcdef")

// frameRec is one frame a recorder received, copied.
type frameRec struct {
	Type      codec.MeshFrameType
	CID       uint32
	Seq       uint64
	Epoch     uint64
	Agent     string
	Connector string
	Payload   string
}

// recorder is a Handler that records what it is told. signal, when set, receives a
// value per Frame (without blocking: it must have room).
type recorder struct {
	mu     sync.Mutex
	ups    []*mesh.Link
	downs  []error
	frames []frameRec
	signal chan struct{}
	// checks run on every LinkUp/LinkDown; a violation is recorded in bad
	bad []string
	up  map[*mesh.Link]bool
	// readOn: LinkUp moves the link's reading to a goroutine of the test
	// (chunkReader), as the hub moves it to an event loop; moved counts them
	readOn bool
	moved  int
	stops  []func() // of the chunkReaders started
}

func (r *recorder) LinkUp(l *mesh.Link) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.up == nil {
		r.up = map[*mesh.Link]bool{}
	}
	for o := range r.up {
		if o.Peer() == l.Peer() {
			r.bad = append(r.bad, "LinkUp for "+l.Peer()+" while another link to it is up")
		}
	}
	r.up[l] = true
	r.ups = append(r.ups, l)
	if r.readOn && !l.ReadOn(r.chunkReader) {
		r.bad = append(r.bad, "ReadOn refused a TCP link")
	}
}

// chunkReader is a mesh.ReadStart that reads the link's socket on a goroutine
// of its own in reads of random sizes (1 byte to more than a message), so
// that feed sees messages split anywhere, and keeps what feed did not use, as
// the hub's event loop does.
func (r *recorder) chunkReader(fd int, feed func([]byte) (int, error), ended func(error)) (func(), error) {
	nfd, err := syscall.Dup(fd)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(nfd), "chunkReader")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, err
	}
	var stopped atomic.Bool
	stop := func() {
		stopped.Store(true)
		_ = c.SetReadDeadline(time.Unix(1, 0))
	}
	r.mu.Lock()
	r.moved++
	seed := uint64(r.moved)
	r.stops = append(r.stops, stop)
	r.mu.Unlock()
	go func() {
		defer c.Close()
		rnd := rand.New(rand.NewPCG(seed, 7))
		chunk := make([]byte, codec.MaxMeshFrameLen+100)
		var held []byte
		for {
			n, err := c.Read(chunk[:1+rnd.IntN(len(chunk)-1)])
			if n > 0 {
				held = append(held, chunk[:n]...)
				used, ferr := feed(held)
				held = held[:copy(held, held[used:])]
				if ferr != nil {
					ended(ferr)
					return
				}
			}
			if err != nil {
				if stopped.Load() {
					err = nil // our own stop, as gnet reports it
				}
				ended(err)
				return
			}
		}
	}()
	return stop, nil
}

// stopReaders stops every chunkReader as its host would by itself (an event
// loop going away): the links are not told first.
func (r *recorder) stopReaders() {
	r.mu.Lock()
	stops := append([]func(){}, r.stops...)
	r.mu.Unlock()
	for _, stop := range stops {
		stop()
	}
}

// bothReadPaths runs test twice: the links read by their reader goroutines,
// then by chunkReader (Link.ReadOn), each with its own goroutine check.
func bothReadPaths(t *testing.T, test func(t *testing.T, readOn bool)) {
	for _, readOn := range []bool{false, true} {
		name := "goroutine"
		if readOn {
			name = "read_on"
		}
		t.Run(name, func(t *testing.T) {
			testenv.CheckGoroutines(t)
			test(t, readOn)
		})
	}
}

func (r *recorder) readsMoved() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.moved
}

func (r *recorder) Frame(l *mesh.Link, h codec.MeshHeader, payload []byte) {
	if r.signal != nil {
		r.signal <- struct{}{}
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.up[l] {
		r.bad = append(r.bad, "Frame on a link that is not up")
	}
	r.frames = append(r.frames, frameRec{h.Type, h.CID, h.Seq, h.Epoch, string(h.Agent), string(h.Connector), string(payload)})
}

func (r *recorder) LinkDown(l *mesh.Link, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.up[l] {
		r.bad = append(r.bad, "LinkDown without LinkUp")
	}
	delete(r.up, l)
	r.downs = append(r.downs, err)
}

func (r *recorder) counts() (ups, downs int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.ups), len(r.downs)
}

func (r *recorder) lastDown() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.downs) == 0 {
		return nil
	}
	return r.downs[len(r.downs)-1]
}

func (r *recorder) got() []frameRec {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]frameRec(nil), r.frames...)
}

func (r *recorder) check(t *testing.T) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, b := range r.bad {
		t.Error(b)
	}
}

// hub is a Manager under test with its recorder, metrics and logs.
type hub struct {
	*mesh.Manager
	rec  *recorder
	cfg  mesh.ManagerConfig
	logs *testenv.SyncBuffer
}

// hubConfig is the base config of a test hub: replica and a token secret; newHub
// adds a recorder, a private metrics set and a JSON log.
func hubConfig(replica string) mesh.ManagerConfig {
	return mesh.ManagerConfig{ReplicaID: replica, Secret: testSecret}
}

// newHub builds and starts a Manager from cfg (filled in from hubConfig where
// unset) and closes it at cleanup.
func newHub(t testing.TB, cfg mesh.ManagerConfig) *hub {
	t.Helper()
	h, err := tryHub(t, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// tryHub is newHub returning Start's error (the manager is closed then).
func tryHub(t testing.TB, cfg mesh.ManagerConfig) (*hub, error) {
	t.Helper()
	logs := &testenv.SyncBuffer{}
	if cfg.Logger == nil {
		cfg.Logger = jsonLogger(logs)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.NewSet()
	}
	if cfg.Handler == nil {
		cfg.Handler = &recorder{}
	}
	m, err := mesh.NewManager(cfg)
	if err != nil {
		t.Fatalf("NewManager(%s): %v", cfg.ReplicaID, err)
	}
	if err := m.Start(); err != nil {
		m.Close()
		return nil, err
	}
	t.Cleanup(m.Close)
	if os.Getenv("NC_TEST_LOGS") != "" {
		t.Cleanup(func() { t.Logf("logs of %s:\n%s", cfg.ReplicaID, logs.String()) })
	}
	rec, _ := cfg.Handler.(*recorder)
	return &hub{Manager: m, rec: rec, cfg: cfg, logs: logs}, nil
}

// listenHub starts a hub with a plain ws:// listener on a random loopback port.
func listenHub(t testing.TB, replica string, edit func(*mesh.ManagerConfig)) *hub {
	t.Helper()
	cfg := hubConfig(replica)
	cfg.Listen = "127.0.0.1:0"
	if edit != nil {
		edit(&cfg)
	}
	return newHub(t, cfg)
}

// url returns the ws:// URL of the hub's listener.
func (h *hub) url() string {
	scheme := "ws"
	if h.cfg.ListenTLS != nil {
		scheme = "wss"
	}
	return scheme + "://" + h.ListenAddr().String() + "/mesh"
}

func (h *hub) metric(t testing.TB, series string) float64 {
	t.Helper()
	return testenv.Metric(t, h.cfg.Metrics.WritePrometheus, series)
}

func (h *hub) metricValue(series string) (float64, bool) {
	return testenv.MetricValue(h.cfg.Metrics.WritePrometheus, series)
}

// waitLink waits until h has a link up to peer and returns it.
func (h *hub) waitLink(t testing.TB, peer string) *mesh.Link {
	t.Helper()
	var l *mesh.Link
	testenv.WaitFor(t, 10*time.Second, h.cfg.ReplicaID+" has a link up to "+peer, func() bool {
		l = h.Link(peer)
		return l != nil
	})
	return l
}

func (h *hub) waitNoLink(t testing.TB, peer string, timeout time.Duration) {
	t.Helper()
	testenv.WaitFor(t, timeout, h.cfg.ReplicaID+" has no link to "+peer, func() bool { return h.Link(peer) == nil })
}

// header returns an M_DATA (or other type) stream header.
func header(t testing.TB, ft codec.MeshFrameType, cid uint32, seq uint64) []byte {
	t.Helper()
	h, err := codec.AppendMeshHeader(nil, ft, cid, seq, 7, "agent-1", "ldap")
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// --------------------------------------------------------------------------------------
// A raw peer: a WebSocket client speaking the mesh protocol by hand, to send what a
// well-behaved hub never does.

type rawPeer struct {
	conn  net.Conn
	hello codec.MeshHello // the hub's M_HELLO once received
}

// dialRaw opens a WebSocket to url with a mesh token for tokenReplica ("" = none).
func dialRaw(t testing.TB, url, tokenReplica string) *rawPeer {
	t.Helper()
	hdr := map[string][]string{}
	if tokenReplica != "" {
		tok, err := mesh.MintMeshToken(testSecret, tokenReplica, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		hdr["Authorization"] = []string{"Bearer " + tok}
	}
	d := ws.Dialer{Header: ws.HandshakeHeaderHTTP(hdr), Timeout: 5 * time.Second}
	conn, br, _, err := d.Dial(t.Context(), url)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	if br != nil {
		t.Fatal("unexpected read-ahead after the upgrade")
	}
	t.Cleanup(func() { conn.Close() })
	return &rawPeer{conn: conn}
}

func helloFrame(t testing.TB, replica string) []byte {
	t.Helper()
	f, err := codec.AppendMeshHello(nil, codec.MeshHello{Version: 1, Replica: replica, Window: 65536, MaxWindow: 1 << 20, LinkWindow: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// send writes one masked binary message.
func (p *rawPeer) send(t testing.TB, frame []byte) {
	t.Helper()
	_ = p.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if err := wsutil.WriteClientBinary(p.conn, frame); err != nil {
		t.Fatalf("raw peer write: %v", err)
	}
}

// handshake sends M_HELLO for replica and reads the hub's.
func (p *rawPeer) handshake(t testing.TB, replica string) {
	t.Helper()
	p.send(t, helloFrame(t, replica))
	b := p.read(t)
	h, payload, err := codec.ParseMeshFrame(b)
	if err != nil || h.Type != codec.MeshFrameHello {
		t.Fatalf("raw peer: want M_HELLO, got %v %v", h.Type, err)
	}
	if p.hello, err = codec.ParseMeshHello(payload); err != nil {
		t.Fatal(err)
	}
}

// read returns the next binary message, skipping M_PINGs (which it answers).
func (p *rawPeer) read(t testing.TB) []byte {
	t.Helper()
	for {
		_ = p.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		b, err := wsutil.ReadServerBinary(p.conn)
		if err != nil {
			t.Fatalf("raw peer read: %v", err)
		}
		if len(b) > 0 && codec.MeshFrameType(b[0]) == codec.MeshFramePing {
			b[0] = byte(codec.MeshFramePong)
			p.send(t, b)
			continue
		}
		return b
	}
}

// readClose reads until the hub's close frame and returns its code and reason (it
// does not answer it: the hub may have closed the socket already).
func (p *rawPeer) readClose(t testing.TB) wsutil.ClosedError {
	t.Helper()
	for {
		_ = p.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		h, err := ws.ReadHeader(p.conn)
		if err == nil && h.Length > codec.MaxMeshFrameLen {
			err = fmt.Errorf("a message of %d bytes", h.Length)
		}
		if err != nil {
			t.Fatalf("raw peer: want a close frame, got %v", err)
		}
		payload := make([]byte, h.Length)
		if _, err := io.ReadFull(p.conn, payload); err != nil {
			t.Fatalf("raw peer: want a close frame, got %v", err)
		}
		if h.OpCode == ws.OpClose {
			code, reason := ws.ParseCloseFrameData(payload)
			return wsutil.ClosedError{Code: code, Reason: reason}
		}
	}
}

// startHub starts a hub whose config needs its listen address in advance (peers that
// name it, an AdvertiseURL): mk builds the config for a free port; if something took
// the port meanwhile, it tries another (testenv.FreePort's caveat).
func startHub(t testing.TB, mk func(addr string) mesh.ManagerConfig) *hub {
	t.Helper()
	for try := 0; ; try++ {
		h, err := tryHub(t, mk(net.JoinHostPort("127.0.0.1", strconv.Itoa(testenv.FreePort(t)))))
		if errors.Is(err, syscall.EADDRINUSE) && try < 5 {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
}

// logged reports whether logs hold a JSON record with msg event containing every
// substring (helpers_test.go's, on a hub).
func (h *hub) logged(event string, substrings ...string) bool {
	return logged(h.logs, event, substrings...)
}
