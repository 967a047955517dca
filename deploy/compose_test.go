package deploy

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/nowconnect/nowconnect/internal/config"
	"github.com/nowconnect/nowconnect/internal/testenv"
)

const (
	composeDir   = "compose"
	composeFile  = "docker-compose-nowconnect.yml"
	composeHA    = "docker-compose-nowconnect-ha.yml"
	composeCloud = "compose/cloud.yaml"
	composeCheck = "compose/checks.yaml"
	haproxyCfg   = "compose/haproxy.cfg"
	secretsDir   = "/run/secrets/" // where compose mounts a service's secrets
)

// composeService is what the tests read of one service in `docker-compose config` output
// (which has normalised the file: environment as a map, secrets and depends_on in long form).
type composeService struct {
	Image       string            `yaml:"image"`
	Command     []string          `yaml:"command"`
	Environment map[string]string `yaml:"environment"`
	Volumes     []string          `yaml:"volumes"`
	Secrets     []struct {
		Source string `yaml:"source"`
	} `yaml:"secrets"`
	Profiles    []string          `yaml:"profiles"`
	Ports       []string          `yaml:"ports"`
	Sysctls     map[string]string `yaml:"sysctls"`
	Healthcheck struct {
		Test []string `yaml:"test"`
	} `yaml:"healthcheck"`
}

type composeProject struct {
	Services map[string]composeService `yaml:"services"`
	Secrets  map[string]struct {
		File string `yaml:"file"`
	} `yaml:"secrets"`
}

// composeConfig runs `docker-compose -f file config` in deploy/compose (it validates the
// file against the compose schema, unknown keys included) and parses what it prints.
func composeConfig(t *testing.T, file string) (composeProject, string) {
	t.Helper()
	dc := needTool(t, "docker-compose", "docker-compose")
	dir, err := filepath.Abs(composeDir)
	if err != nil {
		t.Fatal(err)
	}
	out := runIn(t, dir, nil, time.Minute, dc, "-f", file, "config")
	var p composeProject
	if err := yaml.Unmarshal([]byte(out), &p); err != nil {
		t.Fatalf("docker-compose -f %s config: output does not parse: %v\n%s", file, err, out)
	}
	return p, dir
}

func (s composeService) hasSecret(name string) bool {
	return slices.ContainsFunc(s.Secrets, func(x struct {
		Source string `yaml:"source"`
	}) bool {
		return x.Source == name
	})
}

// mounts reports whether the service bind-mounts the host file src (relative to dir) at dst.
func (s composeService) mounts(dir, src, dst string) bool {
	for _, v := range s.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) >= 2 && parts[0] == filepath.Join(dir, src) && parts[1] == dst {
			return true
		}
	}
	return false
}

func wantServices(t *testing.T, file string, p composeProject, names ...string) {
	t.Helper()
	var got []string
	for n := range p.Services {
		got = append(got, n)
	}
	slices.Sort(got)
	slices.Sort(names)
	if !slices.Equal(got, names) {
		t.Fatalf("%s: services %v, want %v", file, got, names)
	}
}

// hubFile is the part of a shipped cloud.yaml the compose tests compare with the stack.
type hubFile struct {
	Listen    string `yaml:"listen"`
	Listeners []struct {
		Name, Bind, Connector string
	} `yaml:"listeners"`
	Auth struct {
		JWTSecretFile string `yaml:"jwt_secret_file"`
	} `yaml:"auth"`
	HA struct {
		RedisURL string `yaml:"redis_url"`
		Mesh     struct {
			Listen string   `yaml:"listen"`
			Peers  []string `yaml:"peers"`
			TLS    struct {
				CABundle string `yaml:"ca_bundle"`
				CertFile string `yaml:"cert_file"`
				KeyFile  string `yaml:"key_file"`
			} `yaml:"tls"`
		} `yaml:"mesh"`
	} `yaml:"ha"`
}

func port(t *testing.T, hostport string) string {
	t.Helper()
	_, p, err := net.SplitHostPort(hostport)
	if err != nil {
		t.Fatalf("%q: %v", hostport, err)
	}
	return p
}

// TestComposeStack checks docker-compose-nowconnect.yml with docker-compose config and against
// the files it mounts: the service names of seed 000; the hub reads cloud.yaml (listener
// addomain on 389 → connector addomain, the token secret from the compose secret); the agent
// dials the hub's control port with the token secret and serves addomain from openldap:389;
// and checks.yaml's hub and pingpong checks name the same hub, connector, listener and base.
func TestComposeStack(t *testing.T) {
	p, dir := composeConfig(t, composeFile)
	wantServices(t, composeFile, p, "nowconnect-cloud", "nowconnect-premise", "openldap", "nowconnect-check")

	var hub hubFile
	readYAML(t, composeCloud, &hub)
	if len(hub.Listeners) != 1 || hub.Listeners[0].Name != "addomain" || hub.Listeners[0].Connector != "addomain" ||
		port(t, hub.Listeners[0].Bind) != "389" {
		t.Fatalf("%s: listeners %+v, want addomain on :389 → connector addomain (seed 000)", composeCloud, hub.Listeners)
	}
	control := port(t, hub.Listen)

	cloud := p.Services["nowconnect-cloud"]
	if cloud.Image != "nowconnect:latest" || !slices.Equal(cloud.Command, []string{"cloud"}) {
		t.Fatalf("nowconnect-cloud: image %q command %v, want nowconnect:latest [cloud]", cloud.Image, cloud.Command)
	}
	if cfg := cloud.Environment["NC_CONFIG"]; !cloud.mounts(dir, "cloud.yaml", cfg) {
		t.Fatalf("nowconnect-cloud: NC_CONFIG=%q is not where cloud.yaml is mounted (volumes %v)", cfg, cloud.Volumes)
	}
	secret, ok := strings.CutPrefix(hub.Auth.JWTSecretFile, secretsDir)
	if !ok || !cloud.hasSecret(secret) || p.Secrets[secret].File == "" {
		t.Fatalf("cloud.yaml auth.jwt_secret_file %q is not a compose secret of nowconnect-cloud (%+v)", hub.Auth.JWTSecretFile, cloud.Secrets)
	}
	if cloud.Sysctls["net.ipv4.ip_unprivileged_port_start"] != "0" {
		t.Fatalf("nowconnect-cloud runs as a non-root user and binds 389: it needs sysctl net.ipv4.ip_unprivileged_port_start=0")
	}

	premise := p.Services["nowconnect-premise"]
	env := premise.Environment
	if env["NC_CLOUD_URL"] != "ws://nowconnect-cloud:"+control+"/tunnel" || env["NC_AGENT_ID"] != "dev-agent-1" ||
		env["NC_CONNECTORS"] != "addomain=openldap:389" {
		t.Fatalf("nowconnect-premise environment %v: want the hub's /tunnel, agent dev-agent-1, addomain=openldap:389", env)
	}
	token, ok := strings.CutPrefix(env["NC_TOKEN_FILE"], secretsDir)
	if !ok || !premise.hasSecret(token) || p.Secrets[token].File == "" {
		t.Fatalf("nowconnect-premise NC_TOKEN_FILE %q is not one of its compose secrets (%+v)", env["NC_TOKEN_FILE"], premise.Secrets)
	}
	for name, s := range p.Secrets {
		if filepath.Dir(s.File) != filepath.Join(dir, "secrets") {
			t.Fatalf("secret %s: file %s, want it under ./secrets (the runbook writes them there)", name, s.File)
		}
	}
	if hcTest := premise.Healthcheck.Test; len(hcTest) < 3 || hcTest[0] != "CMD" || hcTest[2] != "health" {
		t.Fatalf("nowconnect-premise healthcheck %v: want CMD /nowconnect health --url …(its --metrics-listen)", hcTest)
	}

	ldap := p.Services["openldap"]
	if ldap.Environment["LDAP_DOMAIN"] != "example.org" {
		t.Fatalf("openldap: LDAP_DOMAIN %q, want example.org (base dc=example,dc=org as in seed 000)", ldap.Environment["LDAP_DOMAIN"])
	}

	check := p.Services["nowconnect-check"]
	if len(check.Command) != 2 || check.Command[0] != "check" || !check.mounts(dir, "checks.yaml", check.Command[1]) {
		t.Fatalf("nowconnect-check: command %v, volumes %v: want check FILE with checks.yaml mounted at FILE", check.Command, check.Volumes)
	}
	if !slices.Equal(check.Profiles, []string{"check"}) {
		t.Fatalf("nowconnect-check: profiles %v, want [check] so that `up` leaves it out", check.Profiles)
	}

	var checks []map[string]any
	readYAML(t, composeCheck, &checks)
	hubURL := "http://nowconnect-cloud:" + control
	types := map[string]bool{}
	for i, c := range checks {
		types[fmt.Sprint(c["type"])] = true
		switch c["type"] {
		case "hub":
			if c["url"] != hubURL || fmt.Sprint(c["connectors"]) != "[addomain]" {
				t.Fatalf("%s[%d]: %v: want url %s, connectors [addomain]", composeCheck, i, c, hubURL)
			}
		case "pingpong":
			if c["hub"] != hubURL || c["connector"] != "addomain" || c["url"] != "ldap://nowconnect-cloud:389" ||
				c["base"] != "dc=example,dc=org" {
				t.Fatalf("%s[%d]: %v: want hub %s, connector addomain, url ldap://nowconnect-cloud:389 (through the hub, not openldap), base dc=example,dc=org", composeCheck, i, c, hubURL)
			}
		default:
			t.Fatalf("%s[%d]: type %v: want hub or pingpong", composeCheck, i, c["type"])
		}
	}
	if !types["hub"] || !types["pingpong"] {
		t.Fatalf("%s: want a hub and a pingpong check, got %v", composeCheck, types)
	}
}

// composeRunHub is a hub started from the compose stack's cloud.yaml.
type composeRunHub struct {
	config, control, listener, secret string
}

// composeHub writes a copy of compose/cloud.yaml into dir for a run on this machine: the HS256
// secret is a fresh file in dir instead of the compose secret mount, and the two addresses
// move only when the fixed ones are taken (hubAddrs). Nothing else changes.
func composeHub(t *testing.T, dir string) composeRunHub {
	t.Helper()
	b, err := os.ReadFile(composeCloud)
	if err != nil {
		t.Fatal(err)
	}
	h := composeRunHub{secret: filepath.Join(dir, "nowconnect-hs256")}
	h.control, h.listener = hubAddrs(t, "0.0.0.0:8765", "0.0.0.0:389")
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(h.secret, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := rewrite(t, composeCloud, string(b),
		`"0.0.0.0:8765"`, strconv.Quote(h.control),
		`"0.0.0.0:389"`, strconv.Quote(h.listener),
		secretsDir+"nowconnect-hs256", h.secret)
	h.config = filepath.Join(dir, "cloud.yaml")
	if err := os.WriteFile(h.config, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	return h
}

// TestComposePingPong runs seed 000's ping-pong against the compose stack's own settings with
// real processes: the hub with cloud.yaml, the agent with nowconnect-premise's command and
// environment from `docker-compose config` (only host names, the token path and the metrics
// port mapped to this machine), a real slapd in openldap's place, the token minted as the
// runbook mints it, then the pingpong check's anonymous LDAP search through the hub's listener.
// It expects the runbook's log lines (listener_started, agent_connected for dev-agent-1;
// "connecting to cloud", "connection open"), the entries, and c2a/a2c counters that rose.
func TestComposePingPong(t *testing.T) {
	p, _ := composeConfig(t, composeFile)
	bin := testenv.Binary(t)
	slapd := testenv.StartSlapd(t, 20)
	dir := t.TempDir()
	hc := composeHub(t, dir)

	tokenFile := filepath.Join(dir, "nowconnect-token")
	token := runIn(t, dir, nil, 30*time.Second, bin, "token", "--secret-file", hc.secret,
		"--agent-id", "dev-agent-1", "--connectors", "addomain", "--ttl", "720h")
	if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}

	hub := testenv.StartProcess(t, bin, []string{"cloud", "--config", hc.config}, nil)
	base := "http://" + dialable(hc.control)
	testenv.WaitFor(t, 20*time.Second, "hub /healthz", func() bool {
		if hub.Exited() {
			t.Fatalf("cloud exited:\n%s", hub.Output())
		}
		return healthOK(base) == nil
	})
	hub.WaitForOutput(t, `"msg":"listener_started","name":"addomain"`, 10*time.Second)

	premise := p.Services["nowconnect-premise"]
	metrics := net.JoinHostPort("127.0.0.1", strconv.Itoa(testenv.FreePort(t)))
	args := slices.Clone(premise.Command)
	if i := slices.Index(args, "--metrics-listen"); i < 0 || i+1 >= len(args) {
		t.Fatalf("nowconnect-premise command %v: no --metrics-listen (its healthcheck asks it)", args)
	} else {
		args[i+1] = metrics
	}
	var env []string
	for k, v := range premise.Environment {
		switch k {
		case "NC_CLOUD_URL":
			v = rewrite(t, k, v, "nowconnect-cloud:8765", dialable(hc.control)) // cloud.yaml listens on :8765
		case "NC_CONNECTORS":
			v = rewrite(t, k, v, "openldap:389", slapd.Addr)
		case "NC_TOKEN_FILE":
			v = rewrite(t, k, v, secretsDir+"nowconnect-token", tokenFile)
		}
		env = append(env, k+"="+v)
	}
	agent := testenv.StartProcess(t, bin, args, env)
	agent.WaitForOutput(t, `"msg":"connecting to cloud"`, 10*time.Second)
	agent.WaitForOutput(t, `"msg":"connection open"`, 20*time.Second)
	hub.WaitForOutput(t, `"msg":"agent_connected","agent_id":"dev-agent-1"`, 10*time.Second)

	// The agent's healthcheck as compose runs it, pointed at this run's metrics port.
	probe := slices.Clone(premise.Healthcheck.Test[2:])
	for i := range probe {
		probe[i] = strings.Replace(probe[i], "127.0.0.1:9100", metrics, 1)
	}
	if code, out := exitCode(t, 30*time.Second, bin, probe...); code != 0 {
		t.Fatalf("nowconnect-premise healthcheck %v: exit %d\n%s", probe, code, out)
	}

	// The pingpong check of checks.yaml: anonymous, base and filter as written there.
	var checks []map[string]any
	readYAML(t, composeCheck, &checks)
	var pp map[string]any
	for _, c := range checks {
		if c["type"] == "pingpong" {
			pp = c
		}
	}
	if pp == nil {
		t.Fatalf("%s: no pingpong check", composeCheck)
	}
	listener := dialable(hc.listener) // the check's ldap://nowconnect-cloud:389 (TestComposeStack)
	before := tunnelBytes(t, base)
	out, err := testenv.RunLDAPSearch(t.Context(), listener, "", "", fmt.Sprint(pp["base"]), fmt.Sprint(pp["filter"]))
	if err != nil {
		t.Fatalf("the pingpong search through the hub: %v", err)
	}
	if n := strings.Count(out, "dn: "); n < 20 {
		t.Fatalf("the pingpong search through the hub returned %d entries, want ≥ 20:\n%s", n, out)
	}
	testenv.WaitFor(t, 10*time.Second, "c2a and a2c counters of addomain rising", func() bool {
		after := tunnelBytes(t, base)
		return after["c2a"] > before["c2a"] && after["a2c"] > before["a2c"] && after["connections"] > before["connections"]
	})
}

// tunnelBytes reads the runbook's counters for connector addomain from the hub's /metrics.
func tunnelBytes(t *testing.T, base string) map[string]float64 {
	t.Helper()
	code, body, err := httpGet(base + "/metrics")
	if err != nil || code != 200 {
		t.Fatalf("/metrics: HTTP %d, %v", code, err)
	}
	s := parseExposition(t, string(body))
	m := map[string]float64{}
	for _, x := range find(s, "nowconnect_tcp_connections_total", lbl("connector", "addomain")) {
		m["connections"] = x.value
	}
	for _, d := range []string{"c2a", "a2c"} {
		for _, x := range find(s, "nowconnect_tcp_bytes_total", lbl("connector", "addomain", "direction", d)) {
			m[d] = x.value
		}
	}
	return m
}

// TestComposeHA checks docker-compose-nowconnect-ha.yml with docker-compose config, its hub
// configs with the hub's own loader (HA keys of seeds 002/003 and internal/config, mesh
// certificates made by the shipped mesh-certs.sh), and haproxy.cfg with haproxy -c: two hubs in
// shadow mode on one Redis, peered with each other over mTLS, an agent that knows both hubs,
// and a balancer whose servers are the hubs' listeners checked on their /readyz.
func TestComposeHA(t *testing.T) {
	p, dir := composeConfig(t, composeHA)
	wantServices(t, composeHA, p, "redis", "nowconnect-cloud-a", "nowconnect-cloud-b", "nowconnect-premise", "openldap", "nowconnect-lb")

	needTool(t, "openssl", "openssl") // mesh-certs.sh runs it
	tmp := t.TempDir()
	certs := filepath.Join(tmp, "certs")
	runIn(t, dir, nil, time.Minute, "bash", "mesh-certs.sh", certs)
	secret := filepath.Join(tmp, "hs256")
	if err := os.WriteFile(secret, []byte("c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA==\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	var urls []string
	hubs := map[string]string{"a": "b", "b": "a"}
	for h, other := range hubs {
		svc := "nowconnect-cloud-" + h
		file := "cloud-" + h + ".yaml"
		s := p.Services[svc]
		if !s.mounts(dir, file, s.Environment["NC_CONFIG"]) || !s.mounts(dir, "certs", "/app/certs") || !s.hasSecret("nowconnect-hs256") {
			t.Fatalf("%s: want %s at NC_CONFIG, ./certs at /app/certs and the nowconnect-hs256 secret (volumes %v)", svc, file, s.Volumes)
		}
		var hf hubFile
		readYAML(t, filepath.Join(composeDir, file), &hf)
		if peers := hf.HA.Mesh.Peers; len(peers) != 1 || peers[0] != "wss://nowconnect-cloud-"+other+":"+port(t, hf.HA.Mesh.Listen)+"/mesh" {
			t.Fatalf("%s: ha.mesh.peers %v, want the other hub's mesh listener", file, peers)
		}
		if ru, err := url.Parse(hf.HA.RedisURL); err != nil || p.Services[ru.Hostname()].Image == "" {
			t.Fatalf("%s: ha.redis_url %q is not a service of the stack", file, hf.HA.RedisURL)
		}
		b, err := os.ReadFile(filepath.Join(composeDir, file))
		if err != nil {
			t.Fatal(err)
		}
		local := rewrite(t, file, string(b),
			hf.Auth.JWTSecretFile, secret,
			hf.HA.Mesh.TLS.CABundle, filepath.Join(certs, "ca.pem"),
			hf.HA.Mesh.TLS.CertFile, filepath.Join(certs, "hub-"+h+".crt"),
			hf.HA.Mesh.TLS.KeyFile, filepath.Join(certs, "hub-"+h+".key"))
		path := filepath.Join(tmp, file)
		if err := os.WriteFile(path, []byte(local), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := config.LoadHub(path)
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if !cfg.HA.Enabled || cfg.HA.Mode != "shadow" || cfg.HA.ReplicaID != "hub-"+h || !cfg.HA.Mesh.RequireMTLS {
			t.Fatalf("%s: ha %+v: want enabled, mode shadow, replica_id hub-%s, require_mtls", file, cfg.HA, h)
		}
		if len(cfg.Listeners) != 1 || cfg.Listeners[0].Connector != "addomain" || port(t, cfg.Listeners[0].Bind) != "389" {
			t.Fatalf("%s: listeners %+v, want addomain on :389", file, cfg.Listeners)
		}
		urls = append(urls, "ws://"+svc+":"+port(t, cfg.Listen)+"/tunnel")
	}
	slices.Sort(urls)
	got := strings.Split(p.Services["nowconnect-premise"].Environment["NC_CLOUD_URL"], ",")
	slices.Sort(got)
	if !slices.Equal(got, urls) {
		t.Fatalf("nowconnect-premise NC_CLOUD_URL %v, want both hubs %v", got, urls)
	}

	lb := p.Services["nowconnect-lb"]
	if !lb.mounts(dir, "haproxy.cfg", "/usr/local/etc/haproxy/haproxy.cfg") {
		t.Fatalf("nowconnect-lb: haproxy.cfg not mounted (volumes %v)", lb.Volumes)
	}
	cfgText, err := os.ReadFile(haproxyCfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"server hub-a nowconnect-cloud-a:389 check port 8765\n",
		"server hub-b nowconnect-cloud-b:389 check port 8765 backup\n", // shadow: README has the flip
		"option httpchk GET /readyz\n",
	} {
		if !strings.Contains(string(cfgText), want) {
			t.Fatalf("%s: no line %q", haproxyCfg, strings.TrimSpace(want))
		}
	}
	haproxy := needTool(t, "haproxy", "haproxy")
	if code, out := exitCode(t, 30*time.Second, haproxy, "-c", "-f", haproxyCfg); code != 0 {
		t.Fatalf("haproxy -c -f %s: exit %d\n%s", haproxyCfg, code, out)
	}
}
