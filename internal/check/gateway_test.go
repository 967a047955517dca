package check

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/internal/testenv"
)

// TestHubAndPingPong runs the hub and pingpong checks against a real hub and agent (two
// processes) in front of a real slapd, then stops the agent.
func TestHubAndPingPong(t *testing.T) {
	g := startGateway(t)
	doc := fmt.Sprintf(`
- {type: hub, url: "http://%[1]s", connectors: [addomain]}
- {type: hub, name: hub with a stranger, url: "http://%[1]s/", connectors: [addomain, payroll]}
- {type: pingpong, hub: "http://%[1]s", connector: addomain, url: "ldap://%[2]s", base: "dc=example,dc=org", filter: "(objectClass=inetOrgPerson)"}
- {type: pingpong, name: pingpong bound, hub: "http://%[1]s", connector: addomain, url: "ldap://%[2]s", base: "dc=example,dc=org", bind_dn: "cn=admin,dc=example,dc=org", password: admin}
- {type: pingpong, name: pingpong elsewhere, hub: "http://%[1]s", connector: payroll, url: "ldap://%[2]s", base: "dc=example,dc=org"}
`, g.control, g.listen)
	cs := load(t, "gate.yaml", YAML, doc, 10*time.Second)
	rs := Run(t.Context(), cs, 1) // one at a time: the pingpongs must not see each other's bytes
	expect(t, rs[0], OK, "healthz ok", "readyz ready", "connector addomain: 1 agent")
	expect(t, rs[1], Critical, "connector addomain: 1 agent", "connector payroll: no nowconnect_agents_connected series")
	expect(t, rs[2], OK, "found 20 entries", "c2a +", "a2c +")
	expect(t, rs[3], OK, "bind as cn=admin,dc=example,dc=org", "c2a +")
	expect(t, rs[4], Critical, "no nowconnect_tcp_bytes_total series for connector payroll")
	for _, p := range rs[2].Perf[1:] {
		if (p.Label != rs[2].Name+" c2a" && p.Label != rs[2].Name+" a2c") || p.Value <= 0 || p.UOM != "B" {
			t.Errorf("pingpong perfdata %+v", p)
		}
	}
	if p := rs[0].Perf[1]; p.Label != rs[0].Name+" agents addomain" || p.Value != 1 || p.Crit != "1:" {
		t.Errorf("agents perfdata %+v", p)
	}

	// The checks generated from the hub's own config pass too.
	gen, err := FromHubConfig(g.config, true)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range Run(t.Context(), load(t, "generated", YAML, string(gen), 10*time.Second), 4) {
		expect(t, r, OK)
	}

	// The agent goes away: the hub check turns CRITICAL for its connector, the pingpong too.
	if err := g.premise.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code, err := g.premise.Wait(15 * time.Second); err != nil || code != 0 {
		t.Fatalf("premise exit %d, %v", code, err)
	}
	g.cloud.WaitForOutput(t, `"msg":"agent_disconnected"`, 10*time.Second)
	rs = Run(t.Context(), cs[:3], 1)
	expect(t, rs[0], Critical, "connector addomain: no agent connected")
	expect(t, rs[2], Critical, "search dc=example,dc=org through ldap://"+g.listen)
}

// fakeHub answers as a hub's control port does in states a single test hub cannot reach
// (HA degraded), or with a broken /metrics.
func fakeHub(t *testing.T, readyz int, readyBody, metrics string) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/healthz":
			fmt.Fprint(w, `{"status":"ok"}`)
		case "/readyz":
			w.WriteHeader(readyz)
			fmt.Fprint(w, readyBody)
		case "/metrics":
			fmt.Fprint(w, metrics)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

func TestHubStates(t *testing.T) {
	leakCheck(t)
	const good = "# HELP nowconnect_agents_connected Agent tunnels serving the connector.\n# TYPE nowconnect_agents_connected gauge\nnowconnect_agents_connected{connector=\"addomain\"} 2\n"
	degraded := fakeHub(t, 503, `{"status":"degraded","registry":"down"}`, good)
	draining := fakeHub(t, 503, `{"status":"shutting_down"}`, good)
	broken := fakeHub(t, 200, `{"status":"ready"}`, "nowconnect_agents_connected{connector=\"addomain\" 2\n")
	rs := runYAML(t, fmt.Sprintf(`
- {type: hub, url: "%s", connectors: [addomain]}
- {type: hub, url: "%s", connectors: [addomain]}
- {type: hub, url: "%s", connectors: [addomain]}
- {type: hub, url: "http://127.0.0.1:%d"}
`, degraded, draining, broken, closedPort(t)), 5*time.Second)
	expect(t, rs[0], Warning, "readyz degraded", "connector addomain: 2 agents")
	expect(t, rs[1], Critical, "readyz 503 shutting_down")
	expect(t, rs[2], Critical, "/metrics: not Prometheus text: line 1")
	expect(t, rs[3], Critical, "/healthz: connection refused")
}

// TestFromConfigHA: the checks of an HA hub (listeners, Redis with a password, mesh
// listener and peers); --print leaves the password out.
func TestFromConfigHA(t *testing.T) {
	ca := newCA(t)
	dir := t.TempDir()
	leaf := ca.leaf(t, "hub-a", time.Now().Add(90*24*time.Hour))
	certFile, keyFile := testenv.WritePEMPair(t, dir, leaf)
	cfg := filepath.Join(dir, "cloud.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`
listen: "0.0.0.0:8765"
listeners:
  - {name: l1, bind: "0.0.0.0:389", connector: addomain}
  - {name: l2, bind: "127.0.0.2:1389", connector: addomain}
  - {name: hr, bind: "[::]:2389", connector: hr}
ha:
  enabled: true
  mode: shadow
  replica_id: hub-a
  redis_url: "rediss://:reg-pass-1@redis.internal:6380/0"
  mesh:
    listen: "0.0.0.0:8400"
    peers: ["wss://cloud-b.example.com/mesh", "ws://10.1.2.3:8400/mesh"]
    require_mtls: true
    tls: {ca_bundle: %q, cert_file: %q, key_file: %q}
`, ca.pemFile, certFile, keyFile)), 0o600); err != nil {
		t.Fatal(err)
	}
	printed, err := FromHubConfig(cfg, false)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(printed), "reg-pass-1") {
		t.Fatalf("--print output holds the registry password:\n%s", printed)
	}
	if !strings.Contains(string(printed), "# ha.redis_url has a password, left out here") {
		t.Errorf("no comment about the left-out password:\n%s", printed)
	}
	cs := load(t, "printed.yaml", YAML, string(printed), 5*time.Second)
	var got []string
	for _, c := range cs {
		got = append(got, c.Type+" "+c.Name)
	}
	want := []string{
		"hub hub 127.0.0.1:8765",
		"tcp listener l1 (addomain)", "tcp listener l2 (addomain)", "tcp listener hr (hr)",
		"redis registry redis redis.internal:6380",
		"tcp mesh listener",
		"tls mesh peer wss://cloud-b.example.com/mesh", "tcp mesh peer ws://10.1.2.3:8400/mesh",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("generated checks:\n%s\nwant:\n%s\n\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"), printed)
	}
	if h := cs[0].probe.(*hubCheck); strings.Join(h.connectors, ",") != "addomain,hr" || h.base != "http://127.0.0.1:8765" {
		t.Errorf("hub check %+v", h)
	}
	if a := cs[3].probe.(*tcpCheck).addr; a != "[::1]:2389" {
		t.Errorf("[::] listener checked at %s", a)
	}
	if r := cs[4].probe.(*redisCheck); !r.useTLS || r.pw != "" || r.addr != "redis.internal:6380" || !r.registry {
		t.Errorf("printed redis check %+v", r)
	}
	if p := cs[6].probe.(*tlsCheck); p.addr != "cloud-b.example.com:443" || p.conf.ServerName != "cloud-b.example.com" || len(p.conf.Certificates) != 1 || p.conf.RootCAs == nil {
		t.Errorf("wss peer check %+v", p)
	}
	// To run, the password is included (and collected as a secret).
	withPW, err := FromHubConfig(cfg, true)
	if err != nil {
		t.Fatal(err)
	}
	cs = load(t, "run.yaml", YAML, string(withPW), 5*time.Second)
	if r := cs[4].probe.(*redisCheck); r.pw != "reg-pass-1" || strings.Join(cs[4].secrets, ",") != "reg-pass-1" {
		t.Errorf("redis check to run: %+v, secrets %q", r, cs[4].secrets)
	}
}
