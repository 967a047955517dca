package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/bench"
	"github.com/nowconnect/nowconnect/codec"
	"github.com/nowconnect/nowconnect/internal/testenv"
	"github.com/nowconnect/nowconnect/mesh"
)

// The HA mesh with real processes: three hubs sharing a real redis-server,
// linked through their control ports' /mesh (ha.mesh.secret_file,
// advertise_url), one real agent whose tunnel ends on hub-a.

// meshProc is one hub process of a mesh test.
type meshProc struct {
	id, control string
	addr        map[string]string // connector → listener address
	p           *testenv.Process
}

// meshCluster is what a mesh test runs: the hubs, the agent, the registry.
type meshCluster struct {
	hubs   []*meshProc
	agent  *testenv.Process
	redis  *testenv.Redis
	reg    *mesh.Redis // an observer's view of the registry
	secret []byte
}

// meshConnectors are the connectors of every hub of a mesh test.
var meshConnectors = []string{"svc", "echo", "big"}

// startMeshCluster starts redis, three hubs (extra appended to their
// configs) and an agent on hub-a (with hub-b and hub-c as its failovers)
// serving targets (connector → address), and waits until every hub reaches
// the agent.
func startMeshCluster(t *testing.T, targets map[string]string, extra string) *meshCluster {
	t.Helper()
	return startMeshClusterWith(t, targets, extra, clusterOpts{})
}

// clusterOpts are what some mesh tests change in startMeshCluster's setup.
type clusterOpts struct {
	hubConfig   map[string]string // hub id → config appended to that hub's alone
	agentConfig string            // the agent's config file (its flags add the rest)
}

// startMeshClusterWith is startMeshCluster with opts.
func startMeshClusterWith(t *testing.T, targets map[string]string, extra string, opts clusterOpts) *meshCluster {
	t.Helper()
	bin := testenv.Binary(t)
	mc := &meshCluster{redis: testenv.StartRedis(t), secret: meshSecret}
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "mesh.secret")
	if err := os.WriteFile(secretFile, mc.secret, 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{"GOGC=5"} // heap readings close to the live heap
	ports := testenv.FreePorts(t, 3*(1+len(meshConnectors)))
	port := func() string { p := ports[0]; ports = ports[1:]; return fmt.Sprintf("127.0.0.1:%d", p) }
	for _, id := range []string{"hub-a", "hub-b", "hub-c"} {
		hp := &meshProc{id: id, control: port(), addr: map[string]string{}}
		for _, c := range meshConnectors {
			hp.addr[c] = port()
		}
		extra := extra
		for _, c := range meshConnectors[1:] {
			extra += fmt.Sprintf("\n[[listeners]]\nname = %q\nbind = %q\nconnector = %q\n", c, hp.addr[c], c)
		}
		extra += fmt.Sprintf(`
[ha]
enabled = true
mode = "active"
replica_id = %q
redis_url = %q
heartbeat_interval = "500ms"
owner_ttl = "2s"

[ha.mesh]
secret_file = %q
advertise_url = "ws://%s/mesh"
`, id, mc.redis.URL, secretFile, hp.control) + opts.hubConfig[id]
		cfg := cloudConfig(t, hp.control, hp.addr["svc"], extra)
		hp.p = testenv.StartProcess(t, bin, []string{"cloud", "--config", cfg}, env)
		t.Cleanup(func() { _ = hp.p.Signal(syscall.SIGCONT) }) // a frozen hub must be able to stop
		mc.hubs = append(mc.hubs, hp)
	}
	for _, hp := range mc.hubs {
		hp.p.WaitForOutput(t, `"msg":"listener_started"`, 10*time.Second)
	}
	mc.reg = redisRegistry(t, mc.redis.URL, "observer")
	testenv.WaitFor(t, 5*time.Second, "observer registry healthy", mc.reg.Healthy)
	for _, hp := range mc.hubs {
		testenv.WaitFor(t, 10*time.Second, hp.id+" links to both peers", func() bool {
			m := scrape(t, hp.control)
			up := 0
			for _, peer := range mc.hubs {
				if m[`nowconnect_mesh_links{peer="`+peer.id+`",state="up"}`] == 1 {
					up++
				}
			}
			return up == 2
		})
	}
	tok := filepath.Join(dir, "agent.token")
	if err := os.WriteFile(tok, []byte(token(t, "agent-1", meshConnectors)), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"premise", "--agent-id", "agent-1", "--token-file", tok}
	if opts.agentConfig != "" {
		f := filepath.Join(dir, "premise.toml")
		if err := os.WriteFile(f, []byte(opts.agentConfig), 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--config", f)
	}
	for _, c := range meshConnectors {
		args = append(args, "--connector", c+"="+targets[c])
	}
	for _, hp := range mc.hubs {
		args = append(args, "--cloud", "ws://"+hp.control+"/tunnel")
	}
	mc.agent = testenv.StartProcess(t, bin, args, env)
	testenv.WaitFor(t, 10*time.Second, "agent-1 owned by hub-a", func() bool { return mc.owner(t).ReplicaID == "hub-a" })
	for _, hp := range mc.hubs {
		mc.waitEcho(t, hp, 10*time.Second)
		// A hub reads the owners of each connector in turn: the agent's claim
		// may land between two of the reads, so echo alone proves one.
		for _, c := range meshConnectors {
			testenv.WaitFor(t, 10*time.Second, c+" served through "+hp.id, func() bool { return bench.Served(hp.addr[c]) == nil })
		}
	}
	return mc
}

// owner returns the registry's owner of agent-1 (zero if none).
func (mc *meshCluster) owner(t *testing.T) mesh.Owner {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	o, ok, err := mc.reg.Owner(ctx, "agent-1")
	if err != nil || !ok {
		return mesh.Owner{}
	}
	return o
}

// waitEcho waits until an echo through hp's listener works.
func (mc *meshCluster) waitEcho(t *testing.T, hp *meshProc, timeout time.Duration) {
	t.Helper()
	testenv.WaitFor(t, timeout, "echo through "+hp.id, func() bool { return echoOnce(hp.addr["echo"], time.Second) == nil })
}

// echoConn is an open echo connection through a hub, checked once.
func echoConn(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	if err := echoRound(c, []byte("ping")); err != nil {
		t.Fatalf("echo through %s: %v", addr, err)
	}
	return c
}

// echoRound writes p and reads it back, with a deadline.
func echoRound(c net.Conn, p []byte) error {
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write(p); err != nil {
		return err
	}
	got := make([]byte, len(p))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if !bytes.Equal(got, p) {
		return fmt.Errorf("echo returned %q, want %q", got, p)
	}
	return nil
}

// waitClosed reports how long it took c to be closed by the hub (a read
// that ends in EOF or a reset), failing after timeout.
func waitClosed(t *testing.T, c net.Conn, since time.Time, timeout time.Duration) time.Duration {
	t.Helper()
	_ = c.SetReadDeadline(since.Add(timeout))
	var buf [64]byte
	for {
		_, err := c.Read(buf[:])
		if err == nil {
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("connection still open %v after the event", timeout)
		}
		return time.Since(since)
	}
}

// TestMeshProcLDAPAndOwnerCrash: 64 concurrent ldapsearches through hubs B
// and C each return exactly the direct result; kill -9 of hub A closes B's
// and C's cross-hub clients within 1 s, the agent re-homes with a higher
// epoch, and ldapsearch through every surviving hub works within 5 s.
func TestMeshProcLDAPAndOwnerCrash(t *testing.T) {
	ldap := testenv.StartSlapd(t, 40)
	echo := startServer(t, func(c net.Conn) { _, _ = io.Copy(c, c) })
	mc := startMeshCluster(t, map[string]string{"svc": ldap.Addr, "echo": echo.Addr(), "big": echo.Addr()}, "")
	a, b, c := mc.hubs[0], mc.hubs[1], mc.hubs[2]

	filter := "(objectClass=inetOrgPerson)"
	want, err := testenv.RunLDAPSearch(context.Background(), ldap.Addr, "", "", testenv.BaseDN, filter, "uid", "description")
	if err != nil {
		t.Fatal(err)
	}
	search := func(hubs []*meshProc, n int, timeout time.Duration) []error {
		var wg sync.WaitGroup
		errs := make(chan error, n*len(hubs))
		for i := range n {
			for _, hp := range hubs {
				wg.Go(func() {
					ctx, cancel := context.WithTimeout(context.Background(), timeout)
					defer cancel()
					got, err := testenv.RunLDAPSearch(ctx, hp.addr["svc"], "", "", testenv.BaseDN, filter, "uid", "description")
					switch {
					case err != nil:
						errs <- fmt.Errorf("%s search %d: %w", hp.id, i, err)
					case got != want:
						errs <- fmt.Errorf("%s search %d: %d bytes, want the direct %d", hp.id, i, len(got), len(want))
					}
				})
			}
		}
		wg.Wait()
		close(errs)
		var out []error
		for err := range errs {
			out = append(out, err)
		}
		return out
	}
	for _, err := range search([]*meshProc{b, c}, 64, 20*time.Second) {
		t.Error(err)
	}
	for _, hp := range []*meshProc{b, c} {
		if v := scrape(t, hp.control)[`nowconnect_tcp_connections_total{connector="svc"}`]; v < 64 {
			t.Errorf("%s carried %v ldap connections, want ≥ 64", hp.id, v)
		}
	}
	if t.Failed() {
		return
	}

	// Cross-hub clients held open on B and C when A dies.
	held := []net.Conn{echoConn(t, b.addr["echo"]), echoConn(t, c.addr["echo"])}
	before := mc.owner(t)
	if err := a.p.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	for i, conn := range held {
		d := waitClosed(t, conn, killed, time.Second)
		t.Logf("%s: cross-hub client closed %v after kill -9 of hub-a", mc.hubs[i+1].id, d.Round(time.Millisecond))
	}
	testenv.WaitFor(t, 5*time.Second, "ldapsearch through hub-b and hub-c", func() bool {
		return len(search([]*meshProc{b, c}, 1, 2*time.Second)) == 0
	})
	after := mc.owner(t)
	t.Logf("agent-1: %s epoch %d → %s epoch %d; searches through both survivors work %v after kill -9",
		before.ReplicaID, before.Epoch, after.ReplicaID, after.Epoch, time.Since(killed).Round(10*time.Millisecond))
	if after.ReplicaID == "hub-a" || after.ReplicaID == "" || after.Epoch <= before.Epoch {
		t.Fatalf("agent-1 not re-homed: owner %+v, was %+v", after, before)
	}
	for _, err := range search([]*meshProc{b, c}, 16, 10*time.Second) {
		t.Error(err)
	}
}

// TestMeshProcBulk: concurrent streams through B carry bulk data both ways,
// byte-exact, on a link that stays up. The relays of A, on several tunnel
// loops, and the streams of B share each link's credit: a window taken
// twice, or granted back before it was counted, would close the link
// ("peer granted more credit than its window") and reset every stream.
func TestMeshProcBulk(t *testing.T) {
	const streams, up, down = 8, 16 << 20, 48 << 20
	ex := startServer(t, exchangeTarget)
	echo := startServer(t, func(c net.Conn) { _, _ = io.Copy(c, c) })
	mc := startMeshCluster(t, map[string]string{"svc": ex.Addr(), "echo": echo.Addr(), "big": echo.Addr()}, "")
	a, b := mc.hubs[0], mc.hubs[1]
	for round := range 2 {
		var wg sync.WaitGroup
		errs := make(chan error, streams)
		for i := range streams {
			wg.Go(func() {
				if err := exchange(b.addr["svc"], uint64(round*streams+i), up, down); err != nil {
					errs <- fmt.Errorf("round %d stream %d through hub-b: %w", round, i, err)
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	}
	// Each hub's link to the other is still the first one, up, and no stream
	// was reset for want of a link. (Counters that never fired are absent
	// from a scrape and read 0; the link's state gauge must be there.)
	for _, pair := range [][2]*meshProc{{a, b}, {b, a}} {
		hp, peer := pair[0], pair[1].id
		m := scrape(t, hp.control)
		if v, ok := m[`nowconnect_mesh_links{peer="`+peer+`",state="up"}`]; !ok || v != 1 {
			t.Errorf("%s: link to %s up = %v (exposed %v), want 1", hp.id, peer, v, ok)
		}
		for _, k := range []string{`nowconnect_mesh_stream_resets_total`, `nowconnect_mesh_link_reconnects_total{peer="` + peer + `"}`,
			`nowconnect_mesh_link_errors_total{peer="` + peer + `"}`} {
			if m[k] != 0 {
				t.Errorf("%s: %s = %v after bulk transfers, want 0", hp.id, k, m[k])
			}
		}
	}
	if out := a.p.Output() + b.p.Output(); contains(out, "mesh_link_down") {
		t.Errorf("a link went down under bulk transfers:\n%s", out)
	}
}

// TestMeshProcStalledClient: clients on B that never read while their
// targets, behind the agent on A, each send 1 GiB: A and B hold about a
// window per stream, and other streams over the same link keep flowing.
func TestMeshProcStalledClient(t *testing.T) {
	const (
		total   = 1 << 30
		stalled = 16
	)
	big := startServer(t, func(c net.Conn) { _, _ = io.CopyN(c, newPRNG(3), total) })
	echo := startServer(t, func(c net.Conn) { _, _ = io.Copy(c, c) })
	ex := startServer(t, exchangeTarget)
	// Small socket buffers: the kernel takes little of the burst, so the
	// windows are what holds the streams.
	mc := startMeshCluster(t, map[string]string{"svc": ex.Addr(), "echo": echo.Addr(), "big": big.Addr()},
		"\n[engine]\nsocket_send_buffer = 16384\n")
	a, b := mc.hubs[0], mc.hubs[1]
	heapA, heapB := heapOf(t, "http://"+a.control+"/metrics"), heapOf(t, "http://"+b.control+"/metrics")

	d := net.Dialer{Control: smallRcvbuf}
	for range stalled {
		c, err := d.Dial("tcp", b.addr["big"])
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close() // never read
	}
	a2c := func() int64 {
		return int64(scrape(t, b.control)[`nowconnect_tcp_bytes_total{direction="a2c",connector="big"}`])
	}
	settled := waitStable(t, 30*time.Second, time.Second, "the stalled streams settle", a2c)
	heldA, heldB := heapOf(t, "http://"+a.control+"/metrics")-heapA, heapOf(t, "http://"+b.control+"/metrics")-heapB
	// Credit runs end to end through A: the windows never grow for clients
	// that do not read, on B nor on A.
	for _, hp := range []*meshProc{a, b} {
		if v := scrape(t, hp.control)[`nowconnect_stream_window_growths_total`]; v != 0 {
			t.Errorf("%s grew windows %v times for stalled streams", hp.id, v)
		}
	}

	// Other streams over the same link keep flowing, both ways, byte-exact.
	for i := range 4 {
		if err := exchange(b.addr["svc"], uint64(i), 4<<20, 4<<20); err != nil {
			t.Fatalf("exchange %d through hub-b beside the stalled clients: %v", i, err)
		}
	}
	if got := a2c(); got != settled {
		t.Errorf("the stalled streams moved from %d to %d bytes", settled, got)
	}
	per := func(v int64) int64 { return v / stalled }
	t.Logf("%d stalled clients on hub-b: %d KiB each of 1 GiB went through; heap held per stream: hub-a %d KiB, hub-b %d KiB",
		stalled, per(settled)>>10, per(heldA)>>10, per(heldB)>>10)
	if per(settled) >= total/2 {
		t.Fatalf("%d bytes reached each client that never reads", per(settled))
	}
	// Per stream, A and B each hold at most a window (256 KiB default; B
	// most of it, A what B's window did not take), plus the noise of a heap
	// reading (pooled buffers of the burst, garbage not yet collected).
	const window, noise = 256 << 10, 128 << 10
	if per(heldA) > window+noise || per(heldB) > window+noise {
		t.Errorf("per stalled stream, hub-a holds %d KiB, hub-b %d KiB; want ≤ %d KiB each",
			per(heldA)>>10, per(heldB)>>10, (window+noise)>>10)
	}
}

// TestMeshProcFrozenHub: SIGSTOP of hub C. A notices the silent peer within
// 15 s and closes the streams C opened (the target sees its connection
// end); A's local streams and B's cross-hub streams are unaffected.
func TestMeshProcFrozenHub(t *testing.T) {
	var mu sync.Mutex
	closed := map[string]time.Time{} // client address the agent dialed from → when its target connection ended
	echo := startServer(t, func(c net.Conn) {
		_, _ = io.Copy(c, c)
		mu.Lock()
		closed[c.RemoteAddr().String()] = time.Now()
		mu.Unlock()
	})
	mc := startMeshCluster(t, map[string]string{"svc": echo.Addr(), "echo": echo.Addr(), "big": echo.Addr()}, "")
	a, b, c := mc.hubs[0], mc.hubs[1], mc.hubs[2]
	local, viaB := echoConn(t, a.addr["echo"]), echoConn(t, b.addr["echo"])
	echoConn(t, c.addr["echo"]) // held open through the freeze
	relaysOnA := func() float64 {
		return scrape(t, a.control)[`nowconnect_tcp_active_connections{connector="echo"}`]
	}
	if n := relaysOnA(); n != 3 {
		t.Fatalf("hub-a has %v active echo streams, want 3 (its own, B's and C's relays)", n)
	}
	if err := c.p.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	frozen := time.Now()
	testenv.WaitFor(t, 15*time.Second, "hub-a closes hub-c's stream", func() bool { return relaysOnA() == 2 })
	t.Logf("hub-a closed the stream of frozen hub-c %v after SIGSTOP", time.Since(frozen).Round(10*time.Millisecond))
	for i := range 20 {
		for name, conn := range map[string]net.Conn{"hub-a local": local, "hub-b cross-hub": viaB} {
			if err := echoRound(conn, fmt.Appendf(nil, "round %d", i)); err != nil {
				t.Fatalf("%s stream during the freeze: %v", name, err)
			}
		}
	}
	mc.waitEcho(t, b, 2*time.Second)
	if v := scrape(t, a.control)[`nowconnect_mesh_links{peer="hub-c",state="up"}`]; v != 0 {
		t.Errorf("hub-a still counts its link to frozen hub-c up")
	}
}

// TestMeshProcFrozenOwner: SIGSTOP of hub A, the hub that owns agent-1. Its
// sockets stay open, so nothing fails fast: the agent's pings time out
// (ping_timeout, 6 s), it moves to another hub and claims a new epoch, and
// the other hubs, told of the move, route there. New clients through B and C
// are served again within 15 s of the freeze. When A thaws it finds the
// newer claim and does not serve the agent again; once its links are back
// (within 5 s) its clients reach the agent across the mesh.
func TestMeshProcFrozenOwner(t *testing.T) {
	echo := startServer(t, func(c net.Conn) { _, _ = io.Copy(c, c) })
	mc := startMeshCluster(t, map[string]string{"svc": echo.Addr(), "echo": echo.Addr(), "big": echo.Addr()}, "")
	a, b, c := mc.hubs[0], mc.hubs[1], mc.hubs[2]
	before := mc.owner(t)
	if err := a.p.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	frozen := time.Now()
	testenv.WaitFor(t, 15*time.Second, "new clients served through hub-b and hub-c", func() bool {
		return echoOnce(b.addr["echo"], time.Second) == nil && echoOnce(c.addr["echo"], time.Second) == nil
	})
	after := mc.owner(t)
	t.Logf("agent-1: %s epoch %d → %s epoch %d; clients through hub-b and hub-c served %v after SIGSTOP of hub-a",
		before.ReplicaID, before.Epoch, after.ReplicaID, after.Epoch, time.Since(frozen).Round(10*time.Millisecond))
	if after.ReplicaID == "hub-a" || after.Epoch <= before.Epoch {
		t.Fatalf("agent-1 not re-homed: owner %+v, was %+v", after, before)
	}
	if err := a.p.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	thawed := time.Now()
	a.p.WaitForOutput(t, `"msg":"ownership_lost","agent_id":"agent-1"`, 10*time.Second)
	// A thawed hub A finds its mesh links timed out (the peers gave up on it
	// while it was frozen) and dials them again: until its link to the new
	// owner is up it refuses its clients at once (mesh_down), as a client
	// on a hub whose mesh is down is. Then it serves them, without flapping.
	testenv.WaitFor(t, 5*time.Second, "clients through the thawed hub-a served", func() bool {
		return echoOnce(a.addr["echo"], time.Second) == nil
	})
	t.Logf("hub-a serves its clients again %v after SIGCONT", time.Since(thawed).Round(time.Millisecond))
	for range 5 {
		for _, hp := range mc.hubs {
			if err := echoOnce(hp.addr["echo"], 2*time.Second); err != nil {
				t.Errorf("echo through %s after hub-a thawed: %v", hp.id, err)
			}
		}
	}
	if o := mc.owner(t); o != after {
		t.Errorf("owner after hub-a thawed %+v, want %+v", o, after)
	}
}

// TestMeshProcRedisRestart: redis-server restarts empty (no persistence),
// as after a failover or a pod restart. The hubs keep their agents: hub A
// finds its claim gone and claims agent-1 again at a higher epoch instead of
// fencing itself out (which closed the agent's tunnels and moved it); B and
// C keep routing to A while the registry lists nobody, and A still takes
// their streams at its old epoch. New clients through every hub are served
// throughout (at most one failure per hub is tolerated), and a cross-hub
// stream open through the restart keeps working.
func TestMeshProcRedisRestart(t *testing.T) {
	echo := startServer(t, func(c net.Conn) { _, _ = io.Copy(c, c) })
	mc := startMeshCluster(t, map[string]string{"svc": echo.Addr(), "echo": echo.Addr(), "big": echo.Addr()}, "")
	a := mc.hubs[0]
	held := echoConn(t, mc.hubs[1].addr["echo"])
	before := mc.owner(t)
	mc.redis.Stop(t)
	restarted := time.Now()
	mc.redis.Start(t)
	var failed int
	var lastFail time.Duration
	fails := map[string]int{}
	// Four heartbeat intervals (500 ms here) and the registry's reconnect:
	// every hub has read the registry again by then.
	for time.Since(restarted) < 5*time.Second {
		for _, hp := range mc.hubs {
			if err := echoOnce(hp.addr["echo"], time.Second); err != nil {
				failed++
				fails[hp.id]++
				lastFail = time.Since(restarted)
			}
		}
		time.Sleep(20 * time.Millisecond) // the pace of new clients, not a synchronisation
	}
	// The observer's own client may still be reconnecting to the restarted
	// server (owner reads then fail): poll for hub-a's new claim.
	var after mesh.Owner
	testenv.WaitFor(t, 10*time.Second, "the registry to list hub-a's new claim", func() bool {
		after = mc.owner(t)
		return after.ReplicaID == "hub-a" && after.Epoch > before.Epoch
	})
	t.Logf("agent-1: epoch %d on %s → %d on %s; %d of the clients failed, the last %v after the restart",
		before.Epoch, before.ReplicaID, after.Epoch, after.ReplicaID, failed, lastFail.Round(10*time.Millisecond))
	for id, n := range fails {
		if n > 1 {
			t.Errorf("%d clients through %s failed (the last %v after the restart): it routed by an emptied registry",
				n, id, lastFail.Round(10*time.Millisecond))
		}
	}
	if strings.Contains(a.p.Output(), `"msg":"ownership_lost"`) {
		t.Errorf("hub-a fenced itself out of its own agent:\n%s", a.p.Output())
	}
	if err := echoRound(held, []byte("after the restart")); err != nil {
		t.Errorf("the cross-hub stream open through the restart: %v", err)
	}
}

// injector is a mesh peer of our own ("hub-x") dialed into hub A with the
// mesh secret, recording what A sends it.
type injector struct {
	mu     sync.Mutex
	link   *mesh.Link
	frames []codec.MeshHeader
	data   bytes.Buffer
	reason map[uint32]codec.Reason
	up     chan struct{}
}

func (in *injector) LinkUp(l *mesh.Link) {
	in.mu.Lock()
	in.link = l
	in.mu.Unlock()
	close(in.up)
}

func (in *injector) Frame(_ *mesh.Link, h codec.MeshHeader, p []byte) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.frames = append(in.frames, h)
	switch h.Type {
	case codec.MeshFrameData:
		in.data.Write(p)
	case codec.MeshFrameRst, codec.MeshFrameOpenErr:
		r, _, _ := codec.ParseReason(p)
		in.reason[h.CID] = r
	}
}

func (in *injector) LinkDown(*mesh.Link, error) {}

func (in *injector) got(cid uint32) (codec.Reason, bool) {
	in.mu.Lock()
	defer in.mu.Unlock()
	r, ok := in.reason[cid]
	return r, ok
}

// TestMeshProcInjected: frames a peer should never send are refused and
// counted by hub A: an M_OPEN with a stale epoch (M_RST stale_epoch,
// nowconnect_owner_epoch_mismatch_total), a duplicated M_DATA (dropped,
// nowconnect_cid_dedup_dropped_total, its bytes reach the target once), an
// M_DATA for a CID never opened (M_RST unknown_cid). An agent's token never opens /mesh and a mesh token never opens /tunnel.
func TestMeshProcInjected(t *testing.T) {
	echo := startServer(t, func(c net.Conn) { _, _ = io.Copy(c, c) })
	mc := startMeshCluster(t, map[string]string{"svc": echo.Addr(), "echo": echo.Addr(), "big": echo.Addr()}, "")
	a := mc.hubs[0]

	in := &injector{up: make(chan struct{}), reason: map[uint32]codec.Reason{}}
	mgr, err := mesh.NewManager(mesh.ManagerConfig{
		ReplicaID: "hub-x", Peers: []string{"ws://" + a.control + "/mesh"}, Secret: mc.secret,
		Active: func() bool { return true }, Handler: in, Logger: slog.New(slog.NewJSONHandler(testLogWriter(), nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := mgr.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(mgr.Close)
	select {
	case <-in.up:
	case <-time.After(10 * time.Second):
		t.Fatal("hub-a never took the injector's link")
	}
	epoch := mc.owner(t).Epoch
	var hdr []byte

	// A stale epoch.
	hdr, err = codec.AppendMeshOpen(hdr[:0], 1, epoch-1, "agent-1", "echo", "127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	if err := in.link.SendControl(hdr); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 5*time.Second, "M_RST for the stale epoch", func() bool { _, ok := in.got(1); return ok })
	if r, _ := in.got(1); r != codec.ReasonStaleEpoch {
		t.Errorf("stale M_OPEN answered with %v, want stale_epoch", r)
	}
	if v := scrape(t, a.control)[`nowconnect_owner_epoch_mismatch_total`]; v != 1 {
		t.Errorf("nowconnect_owner_epoch_mismatch_total = %v, want 1", v)
	}

	// A duplicated M_DATA: seq 2 twice.
	hdr, _ = codec.AppendMeshOpen(hdr[:0], 3, epoch, "agent-1", "echo", "127.0.0.1:1")
	if err := in.link.SendControl(hdr); err != nil {
		t.Fatal(err)
	}
	payload := []byte("once")
	for range 2 {
		hdr, _ = codec.AppendMeshHeader(hdr[:0], codec.MeshFrameData, 3, 2, epoch, "agent-1", "echo")
		if err := in.link.SendData(hdr, payload); err != nil {
			t.Fatal(err)
		}
	}
	hdr, _ = codec.AppendMeshHeader(hdr[:0], codec.MeshFrameData, 3, 3, epoch, "agent-1", "echo")
	if err := in.link.SendData(hdr, []byte(".")); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 5*time.Second, "the echo of the deduplicated stream", func() bool {
		in.mu.Lock()
		defer in.mu.Unlock()
		return in.data.Len() >= len("once.")
	})
	in.mu.Lock()
	echoed := in.data.String()
	in.mu.Unlock()
	if echoed != "once." {
		t.Errorf("the target echoed %q, want %q (the duplicate dropped)", echoed, "once.")
	}
	if v := scrape(t, a.control)[`nowconnect_cid_dedup_dropped_total`]; v != 1 {
		t.Errorf("nowconnect_cid_dedup_dropped_total = %v, want 1", v)
	}

	// Frames for CIDs that were never opened, on either side of the link
	// (hub-x dialed: odd CIDs are hub-x's, even ones hub-a's), are reset.
	for _, cid := range []uint32{1001, 1000} {
		hdr, _ = codec.AppendMeshHeader(hdr[:0], codec.MeshFrameData, cid, 2, epoch, "agent-1", "echo")
		if err := in.link.SendData(hdr, []byte("stray")); err != nil {
			t.Fatal(err)
		}
		testenv.WaitFor(t, 5*time.Second, fmt.Sprintf("M_RST for never-opened cid %d", cid), func() bool { _, ok := in.got(cid); return ok })
		if r, _ := in.got(cid); r != codec.ReasonUnknownCID {
			t.Errorf("M_DATA for never-opened cid %d answered with %v, want unknown_cid", cid, r)
		}
	}

	// Credentials never cross: an agent token on /mesh, a mesh token on /tunnel.
	meshTok, err := mesh.MintMeshToken(mc.secret, "hub-x", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ path, tok string }{
		{"/mesh", token(t, "agent-1", meshConnectors)},
		{"/tunnel", meshTok},
	} {
		if code := upgradeStatus(t, a.control, tc.path, tc.tok); code != http.StatusUnauthorized {
			t.Errorf("%s with the other side's credential: HTTP %d, want 401", tc.path, code)
		}
	}
}

// upgradeStatus sends a WebSocket upgrade for path with a bearer token and
// returns the HTTP status of the answer.
func upgradeStatus(t *testing.T, control, path, tok string) int {
	t.Helper()
	c, err := net.DialTimeout("tcp", control, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"+
		"Sec-WebSocket-Protocol: %s\r\nAuthorization: Bearer %s\r\n\r\n", path, control, codec.Subprotocol, tok)
	var code int
	if _, err := fmt.Fscanf(c, "HTTP/1.1 %d", &code); err != nil {
		t.Fatalf("%s: no HTTP status: %v", path, err)
	}
	return code
}

// TestMeshProcOriginCrash: kill -9 of hub B, the origin of a cross-hub
// stream: hub A sees the link's TCP connection die at once and closes the
// relay, so the target behind the agent sees its connection end, and A
// keeps serving its own clients.
func TestMeshProcOriginCrash(t *testing.T) {
	// The target echoes; it reports the end of the one connection whose
	// first bytes are "held" (not of the set-up's probes).
	ended := make(chan struct{}, 1)
	echo := startServer(t, func(c net.Conn) {
		first := make([]byte, 4)
		if _, err := io.ReadFull(c, first); err != nil {
			return
		}
		_, _ = c.Write(first)
		_, _ = io.Copy(c, c)
		if string(first) == "held" {
			ended <- struct{}{}
		}
	})
	mc := startMeshCluster(t, map[string]string{"svc": echo.Addr(), "echo": echo.Addr(), "big": echo.Addr()}, "")
	a, b := mc.hubs[0], mc.hubs[1]
	c, err := net.Dial("tcp", b.addr["echo"])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := echoRound(c, []byte("held")); err != nil {
		t.Fatalf("the held cross-hub stream: %v", err)
	}
	if err := b.p.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	select {
	case <-ended:
		t.Logf("the target's connection for hub-b's client ended %v after kill -9 of hub-b", time.Since(killed).Round(time.Millisecond))
	case <-time.After(15 * time.Second):
		t.Fatal("the target's connection for a client of the killed hub-b is still open after 15 s")
	}
	if err := echoOnce(a.addr["echo"], 2*time.Second); err != nil {
		t.Errorf("hub-a's own clients after hub-b died: %v", err)
	}
}

// TestMeshProcRelayWindows: hub A relays streams from hub B between two
// legs whose windows differ fourfold, both ways: the agent announces 4 MiB
// windows for what A sends it, hub B 4 MiB for what A sends B, while A
// announces its default 256 KiB on both legs. A receiver returns credit a
// quarter of its window at a time, so without A lending credit ahead
// (flow.Chain) the sender's last bytes wait for an announcement that never
// comes: the upload's FIN never reaches the target, or the download stops.
// Every exchange must complete, byte-exact, both ways.
func TestMeshProcRelayWindows(t *testing.T) {
	ex := startServer(t, exchangeTarget)
	echo := startServer(t, func(c net.Conn) { _, _ = io.Copy(c, c) })
	mc := startMeshClusterWith(t, map[string]string{"svc": ex.Addr(), "echo": echo.Addr(), "big": echo.Addr()}, "", clusterOpts{
		hubConfig:   map[string]string{"hub-b": "\n[tunnel]\nstream_window = 4194304\n"},
		agentConfig: "stream_window = 4194304\n",
	})
	b := mc.hubs[1]
	for i := range 3 {
		if err := exchange(b.addr["svc"], uint64(i), 4<<20, 4<<20); err != nil {
			t.Fatalf("exchange %d through hub-b: %v", i, err)
		}
	}
}

// TestMeshProcLinkDescriptors: a hub reads a plain mesh link on an event
// loop, through a descriptor of its own beside the link's. When the peer
// freezes (SIGSTOP), the hub ends the link itself (ping timeout), which
// stops that reading: every descriptor of the link's socket is closed.
func TestMeshProcLinkDescriptors(t *testing.T) {
	echo := startServer(t, func(c net.Conn) { _, _ = io.Copy(c, c) })
	mc := startMeshCluster(t, map[string]string{"svc": echo.Addr(), "echo": echo.Addr(), "big": echo.Addr()}, "")
	a, c := mc.hubs[0], mc.hubs[2]
	// A stream from hub-c across the link, relayed by hub-a, open at the kill.
	conn := echoConn(t, c.addr["echo"])
	defer conn.Close()
	if err := echoRound(conn, []byte("held")); err != nil {
		t.Fatal(err)
	}
	inodes := peerSockets(t, a.p.Pid(), c.p.Pid())
	if len(inodes) == 0 {
		t.Fatal("hub-a has no socket connected to hub-c")
	}
	fds := fdsOf(t, a.p.Pid(), inodes)
	t.Logf("hub-a: %d descriptors on %d sockets to hub-c", fds, len(inodes))
	if fds < 2 {
		t.Errorf("hub-a holds %d descriptors of its link to hub-c; read on a loop, it holds two", fds)
	}
	if err := c.p.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 15*time.Second, "hub-a: link to hub-c down", func() bool {
		return scrape(t, a.control)[`nowconnect_mesh_links{peer="hub-c",state="up"}`] == 0
	})
	testenv.WaitFor(t, 10*time.Second, "hub-a: no descriptor left on the sockets to hub-c", func() bool {
		return fdsOf(t, a.p.Pid(), inodes) == 0
	})
	if err := echoOnce(a.addr["echo"], 2*time.Second); err != nil {
		t.Errorf("hub-a's own clients after hub-c froze: %v", err)
	}
}

// peerSockets returns the inodes of pid's TCP sockets whose other end is a
// socket of peer (both on loopback, in this network namespace).
func peerSockets(t *testing.T, pid, peer int) map[string]bool {
	t.Helper()
	ends := tcpEnds(t)
	theirs := map[[2]string]bool{} // (local, remote) of the peer's sockets
	for ino := range socketInodes(t, peer) {
		if e, ok := ends[ino]; ok {
			theirs[e] = true
		}
	}
	out := map[string]bool{}
	for ino := range socketInodes(t, pid) {
		if e, ok := ends[ino]; ok && theirs[[2]string{e[1], e[0]}] {
			out[ino] = true
		}
	}
	return out
}

// tcpEnds maps the inode of every IPv4 TCP socket to its (local, remote).
func tcpEnds(t *testing.T) map[string][2]string {
	t.Helper()
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][2]string{}
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 9 {
			out[f[9]] = [2]string{f[1], f[2]}
		}
	}
	return out
}

// socketInodes returns the inodes of pid's sockets.
func socketInodes(t *testing.T, pid int) map[string]bool {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, e := range es {
		l, err := os.Readlink(filepath.Join(dir, e.Name()))
		if ino, ok := strings.CutPrefix(l, "socket:["); err == nil && ok {
			out[strings.TrimSuffix(ino, "]")] = true
		}
	}
	return out
}

// fdsOf counts pid's descriptors on the sockets inodes.
func fdsOf(t *testing.T, pid int, inodes map[string]bool) int {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range es {
		l, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err == nil && inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] {
			n++
		}
	}
	return n
}
