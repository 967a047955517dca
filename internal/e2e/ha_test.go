package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/agent"
	"github.com/nowconnect/nowconnect/hub"
	"github.com/nowconnect/nowconnect/internal/haregistry"
	"github.com/nowconnect/nowconnect/internal/testenv"
	"github.com/nowconnect/nowconnect/mesh"
)

// HA: ownership claims, fencing, modes and readiness, against the registry
// (a shared in-memory store, or a real redis-server).

// withHA runs the hub in mode with reg as its registry and fast timers.
func withHA(mode hub.Mode, replica string, reg mesh.Registry) hubOpt {
	return func(c *hub.Config) {
		c.HA = &hub.HAConfig{Mode: mode, ReplicaID: replica, Registry: haregistry.Adapt(reg),
			HeartbeatInterval: 200 * time.Millisecond, Grace: 2 * time.Second}
	}
}

func memRegistry(t *testing.T, store *mesh.MemoryStore, replica string) *mesh.Memory {
	t.Helper()
	r, err := mesh.NewMemory(mesh.MemoryConfig{Config: mesh.Config{ReplicaID: replica, OwnerTTL: time.Second}, Store: store})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

func readyz(t *testing.T, control string) (int, string) {
	t.Helper()
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + control + "/readyz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestHAFencing: hub A owns an agent; the same agent id connects to hub B,
// which claims a newer epoch. A's next heartbeat fences it out: it logs
// ownership_lost, counts an epoch mismatch, gives the agent's tunnel no
// new streams and closes it once idle, and refuses the connector's clients
// with not_owner (the agent is B's).
func TestHAFencing(t *testing.T) {
	store := mesh.NewMemoryStore(nil)
	regA, regB := memRegistry(t, store, "hub-a"), memRegistry(t, store, "hub-b")
	tgt := startServer(t, exchangeTarget)
	a := startHub(t, []string{"svc"}, withHA(hub.ModeActive, "hub-a", regA))
	b := startHub(t, []string{"svc"}, withHA(hub.ModeActive, "hub-b", regB))
	startAgent(t, a, "x", map[string]string{"svc": tgt.Addr()}, func(c *agent.Config) { c.ReconnectMin, c.ReconnectMax = time.Hour, time.Hour })
	testenv.WaitFor(t, 5*time.Second, "A claims x", func() bool { return strings.Contains(a.Logs.String(), `"msg":"ownership_claimed","agent_id":"x"`) })
	o, ok, err := regA.Owner(context.Background(), "x")
	if err != nil || !ok || o.ReplicaID != "hub-a" {
		t.Fatalf("owner of x: %+v %v %v", o, ok, err)
	}
	first := o.Epoch
	if err := exchange(a.Addr["svc"], 1, 1000, 1000); err != nil {
		t.Fatal(err)
	}

	startAgent(t, b, "x", map[string]string{"svc": tgt.Addr()}) // another process of agent x
	testenv.WaitFor(t, 5*time.Second, "B claims x", func() bool { return strings.Contains(b.Logs.String(), `"msg":"ownership_claimed","agent_id":"x"`) })
	o, _, _ = regB.Owner(context.Background(), "x")
	if o.ReplicaID != "hub-b" || o.Epoch <= first {
		t.Fatalf("after B's claim: owner %+v, first epoch %d", o, first)
	}
	testenv.WaitFor(t, 5*time.Second, "A fenced out", func() bool { return strings.Contains(a.Logs.String(), `"msg":"ownership_lost","agent_id":"x"`) })
	if v := testenv.Metric(t, a.Metrics().WritePrometheus, `nowconnect_owner_epoch_mismatch_total`); v < 1 {
		t.Errorf("epoch mismatches on A: %v", v)
	}
	testenv.WaitFor(t, 5*time.Second, "A closes x's tunnels", func() bool { return a.Tunnels() == 0 })
	if !strings.Contains(a.Logs.String(), `"reason":"not_owner"`) {
		t.Error("A's agent_disconnected does not say not_owner")
	}
	// A's clients for svc: the agent is B's now.
	testenv.WaitFor(t, 5*time.Second, "A refuses with not_owner", func() bool {
		c, err := net.Dial("tcp", a.Addr["svc"])
		if err == nil {
			closedAtOnce(c)
			c.Close()
		}
		return testenv.Metric(t, a.Metrics().WritePrometheus, `nowconnect_listener_errors_total{connector="svc",type="not_owner"}`) > 0
	})
	if err := exchange(b.Addr["svc"], 2, 1000, 1000); err != nil {
		t.Fatalf("B serves x: %v", err)
	}
	if v := testenv.Metric(t, b.Metrics().WritePrometheus, `nowconnect_owned_agents`); v != 1 {
		t.Errorf("B owns %v agents, want 1", v)
	}
	if v := testenv.Metric(t, b.Metrics().WritePrometheus, `nowconnect_ha_mode{mode="active"}`); v != 1 {
		t.Errorf("nowconnect_ha_mode{mode=active} = %v", v)
	}
}

// TestHAShadowKeepsTrafficLocal: in shadow mode the same fencing is only
// observed: A logs the loss and keeps serving its local agent.
func TestHAShadowKeepsTrafficLocal(t *testing.T) {
	store := mesh.NewMemoryStore(nil)
	tgt := startServer(t, exchangeTarget)
	a := startHub(t, []string{"svc"}, withHA(hub.ModeShadow, "hub-a", memRegistry(t, store, "hub-a")))
	b := startHub(t, []string{"svc"}, withHA(hub.ModeShadow, "hub-b", memRegistry(t, store, "hub-b")))
	startAgent(t, a, "x", map[string]string{"svc": tgt.Addr()})
	testenv.WaitFor(t, 5*time.Second, "A claims x", func() bool { return strings.Contains(a.Logs.String(), `"msg":"ownership_claimed"`) })
	startAgent(t, b, "x", map[string]string{"svc": tgt.Addr()})
	testenv.WaitFor(t, 5*time.Second, "A sees the loss", func() bool { return strings.Contains(a.Logs.String(), `"msg":"ownership_lost"`) })
	for i := range 3 {
		if err := exchange(a.Addr["svc"], uint64(i), 1000, 1000); err != nil {
			t.Fatalf("shadow mode must keep A's local traffic: %v", err)
		}
	}
	if code, body := readyz(t, a.Control); code != 200 || !strings.Contains(body, `"ha_mode":"shadow"`) {
		t.Errorf("readyz in shadow: %d %s", code, body)
	}
}

// TestHAAgentIDConflict: two processes with one agent id on one hub in
// active mode keep superseding each other; after a few changes of hands
// the hub logs agent_id_conflict and refuses the id for a while, so the
// clones cannot drive a reconnect storm.
func TestHAAgentIDConflict(t *testing.T) {
	store := mesh.NewMemoryStore(nil)
	tgt := startServer(t, exchangeTarget)
	h := startHub(t, []string{"svc"}, withHA(hub.ModeActive, "hub-a", memRegistry(t, store, "hub-a")))
	startAgent(t, h, "clone", map[string]string{"svc": tgt.Addr()})
	startAgent(t, h, "clone", map[string]string{"svc": tgt.Addr()}, func(c *agent.Config) { c.Tunnels = 1 })
	testenv.WaitFor(t, 20*time.Second, "agent_id_conflict", func() bool {
		return strings.Contains(h.Logs.String(), `"msg":"agent_id_conflict","agent_id":"clone"`)
	})
	start := strings.Count(h.Logs.String(), `"msg":"agent_connected"`)
	// A quiet spell: refused HELLOs do not count as connections, and the
	// agents back off.
	time.Sleep(3 * time.Second) // an observation window, not synchronisation
	if n := strings.Count(h.Logs.String(), `"msg":"agent_connected"`) - start; n > 3 {
		t.Errorf("%d more tunnels in 3 s after agent_id_conflict: a reconnect storm", n)
	}
	if v := testenv.Metric(t, h.Metrics().WritePrometheus, `nowconnect_agent_id_conflicts_total`); v < 1 {
		t.Errorf("conflicts counted %v", v)
	}
}

// redisRegistry is a real Redis registry for replica.
func redisRegistry(t *testing.T, url, replica string) *mesh.Redis {
	t.Helper()
	r, err := mesh.NewRedis(mesh.RedisConfig{Config: mesh.Config{ReplicaID: replica, OwnerTTL: 3 * time.Second,
		Logger: slog.New(slog.NewJSONHandler(testLogWriter(), nil))}, URL: url})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

// TestHARedisPaused: active mode, redis-server frozen with SIGSTOP. /readyz
// turns degraded within 5 s, a local LDAP search loop runs without one
// error through the outage, and /readyz is ready again within 5 s of
// SIGCONT. Frozen past the owner TTL (3 s here), the owner entry has expired
// when Redis resumes: the hub claims its agent again (ownership_gone) and
// keeps its tunnel, instead of fencing itself out.
func TestHARedisPaused(t *testing.T) {
	for _, tc := range []struct {
		name   string
		outage time.Duration // after /readyz turned degraded
	}{{"short", 2 * time.Second}, {"past the owner TTL", 4 * time.Second}} {
		t.Run(tc.name, func(t *testing.T) {
			testRedisPaused(t, tc.outage)
		})
	}
}

func testRedisPaused(t *testing.T, outage time.Duration) {
	redis := testenv.StartRedis(t)
	ldap := testenv.StartSlapd(t, 5)
	h := startHub(t, []string{"ldap"}, withHA(hub.ModeActive, "hub-a", redisRegistry(t, redis.URL, "hub-a")))
	startAgent(t, h, "a1", map[string]string{"ldap": ldap.Addr})
	testenv.WaitFor(t, 10*time.Second, "ready", func() bool { code, _ := readyz(t, h.Control); return code == 200 })
	// Claimed before the freeze (ready does not wait for it), so that an
	// outage past the owner TTL finds the entry expired.
	testenv.WaitFor(t, 10*time.Second, "a1 claimed", func() bool {
		return strings.Contains(h.Logs.String(), `"msg":"ownership_claimed","agent_id":"a1"`)
	})
	connected := strings.Count(h.Logs.String(), `"msg":"agent_connected"`)

	var searches, failures atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			out, err := testenv.RunLDAPSearch(ctx, h.Addr["ldap"], "", "", testenv.BaseDN, "(uid=user0001)", "uid")
			cancel()
			searches.Add(1)
			if err != nil || !strings.Contains(out, "uid: user0001") {
				failures.Add(1)
				firstErr.CompareAndSwap(nil, fmt.Sprint(err, out))
			}
		}
	})

	redis.Pause(t)
	paused := time.Now()
	testenv.WaitFor(t, 5*time.Second, "readyz degraded", func() bool { code, _ := readyz(t, h.Control); return code == 503 })
	t.Logf("degraded %v after SIGSTOP", time.Since(paused).Round(10*time.Millisecond))
	_, body := readyz(t, h.Control)
	if !strings.Contains(body, `"status":"degraded"`) || !strings.Contains(body, `"reason"`) {
		t.Errorf("degraded body %s", body)
	}
	time.Sleep(outage) // the outage lasts a while: searches keep running
	redis.Resume(t)
	resumed := time.Now()
	testenv.WaitFor(t, 5*time.Second, "readyz ready again", func() bool { code, _ := readyz(t, h.Control); return code == 200 })
	t.Logf("ready %v after SIGCONT (frozen %v)", time.Since(resumed).Round(10*time.Millisecond), resumed.Sub(paused).Round(100*time.Millisecond))
	t.Cleanup(func() {
		if t.Failed() {
			for _, l := range strings.Split(h.Logs.String(), "\n") {
				if strings.Contains(l, "ownership") || strings.Contains(l, "registry") {
					t.Logf("hub-a: %s", l)
				}
			}
		}
	})
	if resumed.Sub(paused) > 3*time.Second { // past the owner TTL: the entry has expired
		testenv.WaitFor(t, 5*time.Second, "hub-a claims a1 again", func() bool {
			return strings.Contains(h.Logs.String(), `"msg":"ownership_gone","agent_id":"a1"`)
		})
	}
	close(stop)
	wg.Wait()
	if failures.Load() > 0 {
		t.Fatalf("%d of %d local searches failed during the Redis outage; first: %v", failures.Load(), searches.Load(), firstErr.Load())
	}
	t.Logf("%d searches, no error", searches.Load())
	if strings.Contains(h.Logs.String(), `"msg":"ownership_lost"`) {
		t.Errorf("the hub fenced itself out of its own agent after the outage")
	}
	if n := strings.Count(h.Logs.String(), `"msg":"agent_connected"`); n != connected {
		t.Errorf("%d more tunnels after the outage: the agent's tunnels were closed", n-connected)
	}
}

// TestHARedisDownAtStart: the hub starts while Redis is down, serves its
// local agent, reports degraded, and once Redis comes up claims the agent
// and turns ready without a restart.
func TestHARedisDownAtStart(t *testing.T) {
	redis := testenv.StartRedis(t)
	redis.Stop(t)
	tgt := startServer(t, exchangeTarget)
	h := startHub(t, []string{"svc"}, withHA(hub.ModeActive, "hub-a", redisRegistry(t, redis.URL, "hub-a")))
	startAgent(t, h, "a1", map[string]string{"svc": tgt.Addr()})
	if err := exchange(h.Addr["svc"], 1, 1000, 1000); err != nil {
		t.Fatalf("local traffic with Redis down: %v", err)
	}
	if code, _ := readyz(t, h.Control); code != 503 {
		t.Fatalf("readyz with Redis down: %d, want 503", code)
	}
	redis.Start(t)
	testenv.WaitFor(t, 10*time.Second, "ready after Redis came up", func() bool { code, _ := readyz(t, h.Control); return code == 200 })
	testenv.WaitFor(t, 10*time.Second, "the agent claimed", func() bool {
		return strings.Contains(h.Logs.String(), `"msg":"ownership_claimed","agent_id":"a1"`)
	})
}

// TestHAModeOffNoRedis: a hub in mode off (ha.enabled false, or enabled
// with mode "off", a redis_url set either way) never connects to Redis:
// INFO stats' total_connections_received grows only by the test's own
// INFO connection (each redisDo is one connection), also counting
// connections that opened and closed in between.
func TestHAModeOffNoRedis(t *testing.T) {
	bin := testenv.Binary(t)
	redis := testenv.StartRedis(t)
	received := func() int {
		out := fmt.Sprint(redis.Do(t, "INFO", "stats"))
		for _, l := range strings.Split(out, "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(l), "total_connections_received:"); ok {
				n, err := strconv.Atoi(v)
				if err != nil {
					t.Fatalf("total_connections_received %q: %v", v, err)
				}
				return n
			}
		}
		t.Fatalf("no total_connections_received in %q", out)
		return 0
	}
	for _, ha := range []string{"enabled = false", "enabled = true\nmode = \"off\""} {
		before := received()
		control := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
		listen := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
		cfg := cloudConfig(t, control, listen, fmt.Sprintf("\n[ha]\n%s\nreplica_id = \"hub-a\"\nredis_url = %q\n", ha, redis.URL))
		h := testenv.StartProcess(t, bin, []string{"cloud", "--config", cfg}, nil)
		h.WaitForOutput(t, `"msg":"listener_started"`, 10*time.Second)
		if err := healthz(control); err != nil {
			t.Fatal(err)
		}
		if after := received(); after != before+1 {
			t.Fatalf("[ha] %s: Redis received %d connections while the hub started, want only this test's 1", ha, after-before)
		}
		if err := h.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
	}
}

// TestHAThreeHubs: three hub processes share a real Redis; each agent is
// owned by the hub it is connected to. kill -9 of one hub: its ownership
// entry is gone after owner_ttl, and its agent, reconnecting to the next
// hub in its list, is claimed there with a higher epoch.
func TestHAThreeHubs(t *testing.T) {
	bin := testenv.Binary(t)
	redis := testenv.StartRedis(t)
	echo := startServer(t, func(c net.Conn) { _, _ = io.Copy(c, c) })
	type hubProc struct {
		id, control, listen string
		p                   *testenv.Process
	}
	var hubs []*hubProc
	for _, id := range []string{"hub-a", "hub-b", "hub-c"} {
		hp := &hubProc{id: id, control: fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)), listen: fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))}
		cfg := cloudConfig(t, hp.control, hp.listen, fmt.Sprintf(
			"\n[ha]\nenabled = true\nmode = \"active\"\nreplica_id = %q\nredis_url = %q\nheartbeat_interval = \"500ms\"\nowner_ttl = \"2s\"\n", id, redis.URL))
		hp.p = testenv.StartProcess(t, bin, []string{"cloud", "--config", cfg}, nil)
		hp.p.WaitForOutput(t, `"msg":"listener_started"`, 10*time.Second)
		hubs = append(hubs, hp)
	}
	reg := redisRegistry(t, redis.URL, "observer")
	testenv.WaitFor(t, 5*time.Second, "observer registry healthy", reg.Healthy)
	owner := func(agent string) mesh.Owner {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		o, ok, err := reg.Owner(ctx, agent)
		if err != nil || !ok {
			return mesh.Owner{}
		}
		return o
	}
	// Agent i connects to hub i, with hub i+1 as its failover.
	dir := t.TempDir()
	for i, hp := range hubs {
		id := fmt.Sprintf("agent-%d", i)
		tok := filepath.Join(dir, id)
		if err := os.WriteFile(tok, []byte(token(t, id, []string{"svc"})), 0o600); err != nil {
			t.Fatal(err)
		}
		next := hubs[(i+1)%len(hubs)]
		testenv.StartProcess(t, bin, []string{"premise", "--agent-id", id, "--token-file", tok, "--connector", "svc=" + echo.Addr(),
			"--cloud", "ws://" + hp.control + "/tunnel", "--cloud", "ws://" + next.control + "/tunnel"}, nil)
	}
	for i, hp := range hubs {
		id := fmt.Sprintf("agent-%d", i)
		testenv.WaitFor(t, 10*time.Second, id+" owned by "+hp.id, func() bool { return owner(id).ReplicaID == hp.id })
	}
	before := owner("agent-0")
	if err := hubs[0].p.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	testenv.WaitFor(t, 10*time.Second, "agent-0 re-homed on hub-b with a higher epoch", func() bool {
		o := owner("agent-0")
		return o.ReplicaID == "hub-b" && o.Epoch > before.Epoch
	})
	t.Logf("agent-0: %s epoch %d → %s epoch %d, %v after kill -9", before.ReplicaID, before.Epoch,
		owner("agent-0").ReplicaID, owner("agent-0").Epoch, time.Since(killed).Round(10*time.Millisecond))
	if err := echoOnce(hubs[1].listen, 5*time.Second); err != nil {
		t.Fatalf("hub-b serves: %v", err)
	}
	// Nothing of the dead hub stays in the registry past owner_ttl (2 s):
	// no agent of svc is listed as owned by it.
	testenv.WaitFor(t, 10*time.Second, "no registry entry owned by hub-a", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		list, err := reg.Agents(ctx, "svc")
		if err != nil || len(list) != len(hubs) {
			return false
		}
		for _, ai := range list {
			if ai.Owner.ReplicaID == "hub-a" {
				return false
			}
		}
		return true
	})
}
