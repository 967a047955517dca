package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/nowconnect/nowconnect/agent"
	"github.com/nowconnect/nowconnect/hub"
	"github.com/nowconnect/nowconnect/internal/flow"
	"github.com/nowconnect/nowconnect/internal/haregistry"
	"github.com/nowconnect/nowconnect/internal/testenv"
	"github.com/nowconnect/nowconnect/mesh"
)

// The HA mesh, in process: hubs in mode active over one registry, linked
// by their mesh managers on the control port's /mesh; a client on one hub
// reaches an agent whose tunnel ends on another.

var meshSecret = []byte("e2e-mesh-secret-0123456789abcdef-0123456789")

type meshHub struct {
	*testHub
	id  string
	mgr *mesh.Manager
}

// startMeshHub runs a hub in active mode with registry reg (the store of
// every hub of the test) and a mesh that discovers its peers there.
func startMeshHub(t *testing.T, id string, store *mesh.MemoryStore, connectors []string, opts ...hubOpt) *meshHub {
	t.Helper()
	reg, err := mesh.NewMemory(mesh.MemoryConfig{Config: mesh.Config{ReplicaID: id, OwnerTTL: 2 * time.Second, HubTTL: 3 * time.Second}, Store: store})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(reg.Close)
	handler := &haregistry.MeshHandler{}
	lim := flow.Limits{Stream: 256 << 10, MaxStream: 8 << 20, Tunnel: 8 << 20}
	var control string
	mh := &meshHub{id: id}
	opts = append([]hubOpt{withHA(hub.ModeActive, id, reg), func(c *hub.Config) {
		control = c.Control
		if c.Metrics == nil {
			c.Metrics = metrics.NewSet() // the hub's and the mesh's series, on one /metrics
		}
		mgr, err := mesh.NewManager(mesh.ManagerConfig{Metrics: c.Metrics,
			ReplicaID: id, Discovery: reg, AdvertiseURL: "ws://" + control + "/mesh", HubTTL: 3 * time.Second,
			DiscoveryInterval: 200 * time.Millisecond, Secret: meshSecret,
			Window: lim.Stream, MaxWindow: lim.MaxStream, LinkWindow: lim.Tunnel,
			Active: handler.Active, Handler: handler,
			Logger: slog.New(slog.NewJSONHandler(testLogWriter(), &slog.HandlerOptions{Level: slog.LevelDebug})),
		})
		if err != nil {
			t.Fatal(err)
		}
		mh.mgr = mgr
		c.Mesh, c.MeshLimits, c.MetricFamilies = mgr, lim, mesh.MetricFamilies()
	}}, opts...)
	mh.testHub = startHub(t, connectors, opts...)
	handler.SetHub(mh.Hub)
	if err := mh.mgr.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(mh.mgr.Close)
	return mh
}

// waitLinks waits until every hub has a link up to every other.
func waitLinks(t *testing.T, hubs ...*meshHub) {
	t.Helper()
	testenv.WaitFor(t, 10*time.Second, "mesh links up", func() bool {
		for _, h := range hubs {
			if len(h.mgr.Links()) != len(hubs)-1 {
				return false
			}
		}
		return true
	})
}

// waitOwnedElsewhere waits until h's routing cache knows that an agent of
// connector is owned by another hub, so that it forwards.
func waitForwarding(t *testing.T, h *meshHub, connector string) {
	t.Helper()
	testenv.WaitFor(t, 10*time.Second, h.id+" forwards "+connector, func() bool {
		code, body := readyz(t, h.Control)
		return code == 200 && strings.Contains(body, `"ready"`) && exchange(h.Addr[connector], 0, 10, 10) == nil
	})
}

// TestMeshLDAP: an agent on hub A; 64 concurrent ldapsearches through hubs
// B and C each return exactly what the directory returns directly.
func TestMeshLDAP(t *testing.T) {
	ldap := testenv.StartSlapd(t, 40)
	tgt := startServer(t, exchangeTarget)
	store := mesh.NewMemoryStore(nil)
	conns := []string{"ldap", "ex"}
	a := startMeshHub(t, "hub-a", store, conns)
	b := startMeshHub(t, "hub-b", store, conns)
	c := startMeshHub(t, "hub-c", store, conns)
	waitLinks(t, a, b, c)
	startAgent(t, a.testHub, "agent-1", map[string]string{"ldap": ldap.Addr, "ex": tgt.Addr()})
	waitForwarding(t, b, "ex")
	waitForwarding(t, c, "ex")

	want, err := testenv.RunLDAPSearch(context.Background(), ldap.Addr, "", "", testenv.BaseDN, "(objectClass=inetOrgPerson)", "uid", "description")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 128)
	for i := range 64 {
		for _, h := range []*meshHub{b, c} {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				got, err := testenv.RunLDAPSearch(ctx, h.Addr["ldap"], "", "", testenv.BaseDN, "(objectClass=inetOrgPerson)", "uid", "description")
				if err != nil {
					errs <- fmt.Errorf("%s search %d: %w", h.id, i, err)
					return
				}
				if got != want {
					errs <- fmt.Errorf("%s search %d: %d bytes, want the direct %d", h.id, i, len(got), len(want))
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if v := testenv.Metric(t, b.Metrics().WritePrometheus, `nowconnect_tcp_connections_total{connector="ldap"}`); v < 64 {
		t.Errorf("B carried %v ldap connections, want ≥ 64", v)
	}
	if v := testenv.Metric(t, a.Metrics().WritePrometheus, `nowconnect_owned_agents`); v != 1 {
		t.Errorf("A owns %v agents", v)
	}
}

// TestMeshHalfClose: half-close across the mesh, both ways, with a
// multi-MiB late response, byte-exact.
func TestMeshHalfClose(t *testing.T) {
	tgt := startServer(t, exchangeTarget)
	store := mesh.NewMemoryStore(nil)
	a := startMeshHub(t, "hub-a", store, []string{"ex"})
	b := startMeshHub(t, "hub-b", store, []string{"ex"})
	waitLinks(t, a, b)
	startAgent(t, a.testHub, "agent-1", map[string]string{"ex": tgt.Addr()})
	waitForwarding(t, b, "ex")
	for i := range 4 {
		if err := exchange(b.Addr["ex"], uint64(i), 3<<20, 6<<20); err != nil {
			t.Fatalf("exchange %d through the mesh: %v", i, err)
		}
	}
	testenv.WaitFor(t, 5*time.Second, "streams end", func() bool { return b.ActiveStreams() == 0 && a.ActiveStreams() == 0 })
	for _, h := range []*meshHub{a, b} {
		for _, s := range []string{`nowconnect_tcp_rst_total{connector="ex",event="sent"}`, `nowconnect_tcp_rst_total{connector="ex",event="recv"}`} {
			if v := testenv.Metric(t, h.Metrics().WritePrometheus, s); v != 0 {
				t.Errorf("%s: %s = %v after clean half-closes", h.id, s, v)
			}
		}
	}
}

// TestMeshStalledTarget: a client on B uploads to a target behind A that
// never reads: the upload stops after the windows and the kernel's buffers
// of the target connection took their share, stays stopped, and another
// stream over the link flows meanwhile.
func TestMeshStalledTarget(t *testing.T) {
	sink := startServer(t, func(c net.Conn) { <-t.Context().Done() }) // accepts, never reads
	tgt := startServer(t, exchangeTarget)
	store := mesh.NewMemoryStore(nil)
	a := startMeshHub(t, "hub-a", store, []string{"sink", "ex"})
	b := startMeshHub(t, "hub-b", store, []string{"sink", "ex"})
	waitLinks(t, a, b)
	startAgent(t, a.testHub, "agent-1", map[string]string{"sink": sink.Addr(), "ex": tgt.Addr()})
	waitForwarding(t, b, "ex")

	c, err := net.Dial("tcp", b.Addr["sink"])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var sent atomic.Int64
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Write(buf)
			sent.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	c2a := func() int64 {
		return int64(testenv.Metric(t, b.Metrics().WritePrometheus, `nowconnect_tcp_bytes_total{direction="c2a",connector="sink"}`))
	}
	settled := waitStable(t, 20*time.Second, 500*time.Millisecond, "the upload stalls", c2a)
	if err := exchange(b.Addr["ex"], 7, 2<<20, 2<<20); err != nil {
		t.Fatalf("exchange beside the stalled upload: %v", err)
	}
	if got := c2a(); got != settled {
		t.Errorf("the stalled upload moved from %d to %d bytes", settled, got)
	}
	t.Logf("stalled upload: %d KiB written by the client, %d KiB taken by hub-b", sent.Load()>>10, settled>>10)
	// At most the windows (8 MiB each at their largest: the agent's and A's
	// mesh leg) and the kernel's buffers of the target connection.
	if settled > 32<<20 {
		t.Errorf("hub-b took %d KiB for a target that never reads", settled>>10)
	}
}

// TestMeshDown: hub B loses its mesh (its manager stops: a partition, as B
// sees it) while the owner A and the registry are fine. B's cross-hub
// client is closed at once, new clients on B are closed at once and counted
// as mesh_down, B's /readyz is degraded naming A, and A's local streams go
// on untouched.
func TestMeshDown(t *testing.T) {
	echo := startServer(t, func(c net.Conn) { _, _ = io.Copy(c, c) })
	store := mesh.NewMemoryStore(nil)
	a := startMeshHub(t, "hub-a", store, []string{"echo"})
	b := startMeshHub(t, "hub-b", store, []string{"echo"})
	waitLinks(t, a, b)
	startAgent(t, a.testHub, "agent-1", map[string]string{"echo": echo.Addr()})
	testenv.WaitFor(t, 10*time.Second, "echo through hub-b", func() bool { return echoOnce(b.Addr["echo"], time.Second) == nil })
	if code, body := readyz(t, b.Control); code != 200 {
		t.Fatalf("hub-b /readyz before: %d %s", code, body)
	}
	cross := echoConn(t, b.Addr["echo"])
	local := echoConn(t, a.Addr["echo"])

	b.mgr.Close()
	cut := time.Now()
	d := waitClosed(t, cross, cut, 2*time.Second)
	t.Logf("hub-b's cross-hub client closed %v after its mesh went down", d.Round(time.Millisecond))
	if err := echoRound(local, []byte("still here")); err != nil {
		t.Fatalf("hub-a's local stream after hub-b's mesh went down: %v", err)
	}
	// A new client on B: closed at once, not left hanging.
	c, err := net.Dial("tcp", b.Addr["echo"])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	t0 := time.Now()
	_ = c.SetReadDeadline(t0.Add(2 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a new client on hub-b without a mesh: read %v, want the connection closed", err)
	}
	t.Logf("a new client on hub-b closed after %v", time.Since(t0).Round(time.Millisecond))
	if v := testenv.Metric(t, b.Metrics().WritePrometheus, `nowconnect_listener_errors_total{connector="echo",type="mesh_down"}`); v < 1 {
		t.Errorf("listener_errors_total{type=\"mesh_down\"} = %v, want ≥ 1", v)
	}
	if code, body := readyz(t, b.Control); code != 503 || !strings.Contains(body, `"degraded"`) || !strings.Contains(body, "hub-a") {
		t.Errorf("hub-b /readyz without a link to the owner: %d %s, want 503 degraded naming hub-a", code, body)
	}
	if code, body := readyz(t, a.Control); code != 200 {
		t.Errorf("hub-a /readyz: %d %s (it owns the agent, and hub-b owns none)", code, body)
	}
	if err := echoOnce(a.Addr["echo"], 2*time.Second); err != nil {
		t.Errorf("a new client on hub-a: %v", err)
	}
}

// TestMeshShadow: hubs in mode shadow run their links and measure the
// round trip, but forward nothing: a client on B, whose only agent is on A,
// is closed at once (no_agent), and A is never asked to open a stream.
func TestMeshShadow(t *testing.T) {
	echo := startServer(t, func(c net.Conn) { _, _ = io.Copy(c, c) })
	store := mesh.NewMemoryStore(nil)
	shadow := func(c *hub.Config) { c.HA.Mode = hub.ModeShadow }
	a := startMeshHub(t, "hub-a", store, []string{"echo"}, shadow)
	b := startMeshHub(t, "hub-b", store, []string{"echo"}, shadow)
	waitLinks(t, a, b)
	startAgent(t, a.testHub, "agent-1", map[string]string{"echo": echo.Addr()})
	testenv.WaitFor(t, 10*time.Second, "echo through hub-a", func() bool { return echoOnce(a.Addr["echo"], time.Second) == nil })
	testenv.WaitFor(t, 10*time.Second, "hub-b measures the link's round trip", func() bool {
		return testenv.Metric(t, b.Metrics().WritePrometheus, `nowconnect_mesh_rtt_seconds_count{peer="hub-a"}`) > 0
	})
	for range 3 {
		if err := echoOnce(b.Addr["echo"], 2*time.Second); err == nil {
			t.Fatal("a client on hub-b reached hub-a's agent in shadow mode")
		}
	}
	if v := testenv.Metric(t, b.Metrics().WritePrometheus, `nowconnect_listener_errors_total{connector="echo",type="no_agent"}`); v < 3 {
		t.Errorf("hub-b no_agent refusals = %v, want ≥ 3", v)
	}
	if v := testenv.Metric(t, a.Metrics().WritePrometheus, `nowconnect_mesh_frames_total{dir="in",type="M_OPEN"}`); v != 0 {
		t.Errorf("hub-a received %v M_OPEN in shadow mode", v)
	}
	if code, body := readyz(t, b.Control); code != 200 || !strings.Contains(body, `"ha_mode":"shadow"`) {
		t.Errorf("hub-b /readyz in shadow: %d %s", code, body)
	}
}

// TestMeshAgentMoves: agent-1 moves from hub A to hub B (a second process
// of it connects to B and claims it) while streams run through A's tunnel,
// from a client on A and from one on B across the mesh. Make-before-break:
// both old streams go on until they end, new clients on either hub reach
// the agent on B, and A closes the old tunnel once its streams are gone.
func TestMeshAgentMoves(t *testing.T) {
	echo := startServer(t, func(c net.Conn) { _, _ = io.Copy(c, c) })
	store := mesh.NewMemoryStore(nil)
	a := startMeshHub(t, "hub-a", store, []string{"echo"})
	b := startMeshHub(t, "hub-b", store, []string{"echo"})
	waitLinks(t, a, b)
	startAgent(t, a.testHub, "agent-1", map[string]string{"echo": echo.Addr()},
		func(c *agent.Config) { c.ReconnectMin, c.ReconnectMax = time.Hour, time.Hour }) // once gone, it stays gone
	testenv.WaitFor(t, 10*time.Second, "echo through hub-b", func() bool { return echoOnce(b.Addr["echo"], time.Second) == nil })
	local, cross := echoConn(t, a.Addr["echo"]), echoConn(t, b.Addr["echo"])

	startAgent(t, b.testHub, "agent-1", map[string]string{"echo": echo.Addr()})
	testenv.WaitFor(t, 10*time.Second, "hub-a loses agent-1", func() bool {
		return strings.Contains(a.Logs.String(), `"msg":"ownership_lost","agent_id":"agent-1"`)
	})
	for i := range 3 {
		for name, c := range map[string]net.Conn{"hub-a local": local, "hub-b cross-hub": cross} {
			if err := echoRound(c, fmt.Appendf(nil, "after the move %d", i)); err != nil {
				t.Fatalf("%s stream on the old tunnel after the move: %v", name, err)
			}
		}
	}
	for _, h := range []*meshHub{a, b} {
		testenv.WaitFor(t, 10*time.Second, "a new client through "+h.id+" reaches agent-1 on hub-b", func() bool {
			return echoOnce(h.Addr["echo"], time.Second) == nil
		})
	}
	if a.Tunnels() == 0 {
		t.Fatal("hub-a closed the old tunnel while it still carried streams")
	}
	// hub-a's new client went to hub-b over the mesh, not onto the old tunnel.
	if v := testenv.Metric(t, a.Metrics().WritePrometheus, `nowconnect_mesh_frames_total{dir="out",type="M_OPEN"}`); v < 1 {
		t.Errorf("hub-a sent %v M_OPEN: its new client did not cross to hub-b", v)
	}
	local.Close()
	cross.Close()
	testenv.WaitFor(t, 10*time.Second, "hub-a closes the old tunnel once idle", func() bool { return a.Tunnels() == 0 })
	if err := echoOnce(a.Addr["echo"], 2*time.Second); err != nil {
		t.Errorf("a client through hub-a after the old tunnel closed: %v", err)
	}
}

// deafWatch is a registry whose change notifications never arrive (a
// subscription that is down): the hub learns of moves from reads only.
type deafWatch struct{ hub.Registry }

func (deafWatch) Watch(ctx context.Context, _ func(string)) error {
	<-ctx.Done()
	return ctx.Err()
}

// TestMeshAgentMovesAway: agent-1 moves from hub A to hub C while hub B, which
// reads the registry only once a minute here and misses the registry's change
// notifications (deafWatch), still routes it to A. A answers B's next M_OPEN
// with not_owner: that one client is reset, B forgets its cached owner and
// reads the registry again, and the next client through B reaches agent-1 on
// C, long before B's own next read.
func TestMeshAgentMovesAway(t *testing.T) {
	testAgentMoves(t, false)
}

// TestMeshAgentMovesNotified: the same move, with B subscribed to the
// registry's change notifications: B reads the registry as soon as agent-1
// is routable on C, and no client through B is reset.
func TestMeshAgentMovesNotified(t *testing.T) {
	testAgentMoves(t, true)
}

func testAgentMoves(t *testing.T, notified bool) {
	echo := startServer(t, func(c net.Conn) { _, _ = io.Copy(c, c) })
	store := mesh.NewMemoryStore(nil)
	a := startMeshHub(t, "hub-a", store, []string{"echo"})
	b := startMeshHub(t, "hub-b", store, []string{"echo"}, func(c *hub.Config) {
		c.HA.HeartbeatInterval = time.Minute
		if !notified {
			c.HA.Registry = deafWatch{c.HA.Registry}
		}
	})
	c := startMeshHub(t, "hub-c", store, []string{"echo"})
	waitLinks(t, a, b, c)
	startAgent(t, a.testHub, "agent-1", map[string]string{"echo": echo.Addr()},
		func(c *agent.Config) { c.ReconnectMin, c.ReconnectMax = time.Hour, time.Hour }) // once gone, it stays gone
	// B learns agent-1's owner from a client that finds no agent (a read at once).
	testenv.WaitFor(t, 10*time.Second, "echo through hub-b to hub-a", func() bool { return echoOnce(b.Addr["echo"], time.Second) == nil })

	startAgent(t, c.testHub, "agent-1", map[string]string{"echo": echo.Addr()})
	testenv.WaitFor(t, 10*time.Second, "hub-a loses agent-1", func() bool {
		return strings.Contains(a.Logs.String(), `"msg":"ownership_lost","agent_id":"agent-1"`)
	})
	start := time.Now()
	failed := 0
	testenv.WaitFor(t, 10*time.Second, "a client through hub-b reaches agent-1 on hub-c", func() bool {
		if echoOnce(b.Addr["echo"], 2*time.Second) != nil {
			failed++
			return false
		}
		return true
	})
	t.Logf("hub-b reached the new owner %v after hub-a lost agent-1, %d client(s) failed first", time.Since(start).Round(time.Millisecond), failed)
	if v := testenv.Metric(t, c.Metrics().WritePrometheus, `nowconnect_mesh_frames_total{dir="in",type="M_OPEN"}`); v < 1 {
		t.Errorf("hub-c received %v M_OPEN: hub-b's client did not cross to it", v)
	}
	refused := testenv.Metric(t, a.Metrics().WritePrometheus, `nowconnect_mesh_frames_total{dir="out",type="M_RST"}`)
	switch {
	case notified && (failed > 0 || refused > 0):
		t.Errorf("with notifications, %d client(s) through hub-b failed and hub-a refused %v stream(s): hub-b still routed to hub-a", failed, refused)
	case !notified && refused == 0:
		t.Errorf("hub-a refused no stream: hub-b learnt of the move some other way than not_owner")
	}
}
