package deploy

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/internal/testenv"
)

var errTooSoon = errors.New("not tried yet")

// TestComposeHAFailover runs the HA stack's own settings as real processes: Redis, the two hubs
// with cloud-a.yaml and cloud-b.yaml, the agent with the stack's NC_CLOUD_URL (both hubs), a
// real slapd for openldap, and haproxy with haproxy.cfg; only addresses and file paths are
// mapped to this machine. In shadow mode the balancer sends LDAP clients to hub-a, which holds
// the agent, and never to the backup hub-b. When hub-a stops (SIGTERM), the agent fails over
// to hub-b and so does the balancer: the same search through the balancer works again, now
// counted by hub-b.
func TestComposeHAFailover(t *testing.T) {
	p, dir := composeConfig(t, composeHA)
	haproxy := needTool(t, "haproxy", "haproxy")
	needTool(t, "openssl", "openssl")
	bin := testenv.Binary(t)
	redis := testenv.StartRedis(t)
	slapd := testenv.StartSlapd(t, 10)
	tmp := t.TempDir()

	certs := filepath.Join(tmp, "certs")
	runIn(t, dir, nil, time.Minute, "bash", "mesh-certs.sh", certs)
	hc := composeHub(t, tmp) // for its secret; the HA hubs share it, as they share the compose secret
	tokenFile := filepath.Join(tmp, "nowconnect-token")
	token := runIn(t, tmp, nil, 30*time.Second, bin, "token", "--secret-file", hc.secret,
		"--agent-id", "dev-agent-1", "--connectors", "addomain", "--ttl", "720h")
	if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}

	free := func() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(testenv.FreePort(t))) }
	type hubRun struct {
		control, listener, mesh string
		proc                    *testenv.Process
	}
	hubs := map[string]*hubRun{"a": {control: free(), listener: free(), mesh: free()}, "b": {control: free(), listener: free(), mesh: free()}}
	for h, other := range map[string]string{"a": "b", "b": "a"} {
		file := "cloud-" + h + ".yaml"
		b, err := os.ReadFile(filepath.Join(composeDir, file))
		if err != nil {
			t.Fatal(err)
		}
		var hf hubFile
		readYAML(t, filepath.Join(composeDir, file), &hf)
		r := hubs[h]
		text := rewrite(t, file, string(b),
			`"0.0.0.0:8765"`, strconv.Quote(r.control),
			`"0.0.0.0:389"`, strconv.Quote(r.listener),
			`"0.0.0.0:8400"`, strconv.Quote(r.mesh),
			"nowconnect-cloud-"+other+":8400", hubs[other].mesh,
			hf.HA.RedisURL, redis.URL,
			hf.Auth.JWTSecretFile, hc.secret,
			hf.HA.Mesh.TLS.CABundle, filepath.Join(certs, "ca.pem"),
			hf.HA.Mesh.TLS.CertFile, filepath.Join(certs, "hub-"+h+".crt"),
			hf.HA.Mesh.TLS.KeyFile, filepath.Join(certs, "hub-"+h+".key"))
		path := filepath.Join(tmp, file)
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		r.proc = testenv.StartProcess(t, bin, []string{"cloud", "--config", path}, nil)
	}
	for h, r := range hubs {
		testenv.WaitFor(t, 20*time.Second, "hub-"+h+" /healthz", func() bool {
			if r.proc.Exited() {
				t.Fatalf("hub-%s exited:\n%s", h, r.proc.Output())
			}
			return healthOK("http://"+r.control) == nil
		})
	}

	premise := p.Services["nowconnect-premise"]
	var env []string
	for k, v := range premise.Environment {
		switch k {
		case "NC_CLOUD_URL":
			v = rewrite(t, k, v, "nowconnect-cloud-a:8765", hubs["a"].control, "nowconnect-cloud-b:8765", hubs["b"].control)
		case "NC_CONNECTORS":
			v = rewrite(t, k, v, "openldap:389", slapd.Addr)
		case "NC_TOKEN_FILE":
			v = rewrite(t, k, v, secretsDir+"nowconnect-token", tokenFile)
		}
		env = append(env, k+"="+v)
	}
	testenv.StartProcess(t, bin, []string{"premise"}, env)
	hubs["a"].proc.WaitForOutput(t, `"msg":"agent_connected","agent_id":"dev-agent-1"`, 20*time.Second)

	lb := free()
	b, err := os.ReadFile(haproxyCfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg := rewrite(t, haproxyCfg, string(b),
		"bind :389\n", "bind "+lb+"\n",
		"nowconnect-cloud-a:389 check port 8765", hubs["a"].listener+" check port "+port(t, hubs["a"].control),
		"nowconnect-cloud-b:389 check port 8765", hubs["b"].listener+" check port "+port(t, hubs["b"].control))
	cfgPath := filepath.Join(tmp, "haproxy.cfg")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	testenv.StartProcess(t, haproxy, []string{"-db", "-f", cfgPath}, nil)

	// WaitFor polls every 10ms; an ldapsearch process per poll would be hundreds while
	// haproxy's checks (inter 2s, fall 2) take hub-a out: try at most every 250ms.
	var lastTry time.Time
	search := func() error {
		if time.Since(lastTry) < 250*time.Millisecond {
			return errTooSoon
		}
		lastTry = time.Now()
		out, err := testenv.RunLDAPSearch(t.Context(), lb, "", "", "dc=example,dc=org", "(objectClass=*)")
		if err == nil && strings.Count(out, "dn: ") < 10 {
			t.Fatalf("search through haproxy: %d entries:\n%s", strings.Count(out, "dn: "), out)
		}
		return err
	}
	connections := func(h string) float64 { return tunnelBytes(t, "http://"+hubs[h].control)["connections"] }
	testenv.WaitFor(t, 20*time.Second, "an LDAP search through haproxy (shadow: hub-a)", func() bool { return search() == nil })
	if connections("a") < 1 || connections("b") != 0 {
		t.Fatalf("shadow mode: hub-a carried %v connections, the backup hub-b %v; want hub-a only", connections("a"), connections("b"))
	}

	if err := hubs["a"].proc.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code, err := hubs["a"].proc.Wait(45 * time.Second); err != nil || code != 0 {
		t.Fatalf("hub-a after SIGTERM: exit %d, %v", code, err)
	}
	hubs["b"].proc.WaitForOutput(t, `"msg":"agent_connected","agent_id":"dev-agent-1"`, 30*time.Second)
	testenv.WaitFor(t, 30*time.Second, "an LDAP search through haproxy after hub-a stopped (hub-b)", func() bool { return search() == nil })
	if connections("b") < 1 {
		t.Fatalf("after the failover hub-b carried %v connections", connections("b"))
	}
}
