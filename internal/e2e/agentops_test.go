package e2e

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/internal/auth"
	"github.com/nowconnect/nowconnect/internal/ldapdemo"
	"github.com/nowconnect/nowconnect/internal/testenv"
)

// The agent's operational side with real processes: a token rotated in
// place while the hub restarts, and PROXY protocol v2 into a real slapd.

// logLines returns the JSON records of out whose msg is msg.
func logLines(t *testing.T, out, msg string) []map[string]any {
	t.Helper()
	var recs []map[string]any
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil && m["msg"] == msg {
			recs = append(recs, m)
		}
	}
	return recs
}

// jwtExp reads a token's exp (unix seconds) the way an operator would.
func jwtExp(t *testing.T, tok string) int64 {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWT")
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var c struct{ Exp int64 }
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	return c.Exp
}

// agentMetric reads one series from a premise process's --metrics-listen.
func agentMetric(t *testing.T, addr, series string) float64 {
	t.Helper()
	return testenv.Metric(t, func(w io.Writer) {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			t.Fatalf("agent metrics: %v", err)
		}
		defer resp.Body.Close()
		_, _ = io.Copy(w, resp.Body)
	}, series)
}

// TestTokenRotation: a premise process with a short-lived token in a
// file; the token expires and the hub (a real cloud process) is restarted,
// so the agent is refused (and logs the hub's reason, "expired"); a new
// token written into the same file is used within 10 s, without
// restarting the agent. The agent warned about the expiry and exported it.
func TestTokenRotation(t *testing.T) {
	bin := testenv.Binary(t)
	ldap := testenv.StartSlapd(t, 3)
	control := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	listen := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	cfg := cloudConfig(t, control, listen, "leeway = \"0s\"\n")
	startCloud := func() *testenv.Process {
		p := testenv.StartProcess(t, bin, []string{"cloud", "--config", cfg}, nil)
		p.WaitForOutput(t, `"msg":"listener_started"`, 10*time.Second)
		return p
	}
	cloud := startCloud()

	const ttl = 4 * time.Second
	mint := func(ttl time.Duration) string {
		tok, err := auth.Mint(testSecret, "rot-agent", []string{"svc"}, ttl, "")
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	short := mint(ttl)
	tokFile := filepath.Join(t.TempDir(), "agent.token")
	if err := os.WriteFile(tokFile, []byte(short+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	premise := testenv.StartProcess(t, bin, []string{"premise", "--cloud", "ws://" + control + "/tunnel",
		"--agent-id", "rot-agent", "--token-file", tokFile, "--connector", "svc=" + ldap.Addr,
		"--metrics-listen", metricsAddr}, nil)
	cloud.WaitForOutput(t, `"msg":"agent_connected"`, 10*time.Second)
	premise.WaitForOutput(t, `"msg":"token_expiring"`, 5*time.Second)
	const series = "nowconnect_agent_token_expiry_timestamp_seconds"
	if got, want := agentMetric(t, metricsAddr, series), jwtExp(t, short); int64(got) != want {
		t.Fatalf("%s = %v, want %d", series, got, want)
	}
	if out := testenv.LDAPSearch(t, listen, ldap.BaseDN, "(uid=user0001)"); !strings.Contains(out, "uid=user0001") {
		t.Fatalf("search before the rotation: %s", out)
	}

	// The token expires; then the hub restarts.
	exp := time.Unix(jwtExp(t, short), 0)
	testenv.WaitFor(t, ttl+10*time.Second, "the token to expire", func() bool { return time.Now().After(exp.Add(time.Second)) })
	if err := cloud.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code, err := cloud.Wait(15 * time.Second); err != nil || code != 0 {
		t.Fatalf("cloud exit %d, %v", code, err)
	}
	cloud = startCloud()
	testenv.WaitFor(t, 20*time.Second, "the agent refused with the hub's reason", func() bool {
		for _, r := range logLines(t, premise.Output(), "tunnel refused by hub") {
			if r["status"] == 401.0 && r["reason"] == "unauthorized: expired" {
				return true
			}
		}
		return false
	})
	cloud.WaitForOutput(t, `"msg":"agent_auth_failed"`, 5*time.Second)
	expiredWarned := false
	for _, r := range logLines(t, premise.Output(), "token_expiring") {
		expiredWarned = expiredWarned || r["expired"] == true
	}
	if !expiredWarned {
		t.Error("the agent did not warn that its token had expired")
	}

	// A fresh token into the same file: the agent reconnects by itself.
	fresh := mint(time.Hour)
	if err := os.WriteFile(tokFile, []byte(fresh+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	written := time.Now()
	cloud.WaitForOutput(t, `"msg":"agent_connected"`, 10*time.Second)
	t.Logf("reconnected %v after the new token was written", time.Since(written).Round(time.Millisecond))
	if premise.Exited() {
		t.Fatal("the agent exited")
	}
	if out := testenv.LDAPSearch(t, listen, ldap.BaseDN, "(uid=user0002)"); !strings.Contains(out, "uid=user0002") {
		t.Fatalf("search after the rotation: %s", out)
	}
	testenv.WaitFor(t, 5*time.Second, "the metric to follow the new token", func() bool {
		return int64(agentMetric(t, metricsAddr, series)) == jwtExp(t, fresh)
	})

	for name, p := range map[string]*testenv.Process{"cloud": cloud, "premise": premise} {
		out := p.Output()
		checkLogLines(t, name, out, false)
		for _, tok := range []string{short, fresh} {
			if strings.Contains(out, tok) || strings.Contains(out, tok[strings.LastIndex(tok, ".")+1:]) {
				t.Errorf("%s logged a token", name)
			}
		}
	}
}

// TestProxyProtocolSlapd: a connector with proxy=v2 (NC_CONNECTORS) in
// front of slapd's pldap:// listener: ldapsearch through hub → agent →
// slapd returns the entries, and slapd's own log shows the client's
// address as the hub saw it, not the agent's (which a plain ldap://
// connector, the control, shows). A target the agent cannot reach is
// logged as target_dial_failed with the client masked
// (log.mask_client_addr in the agent's config file).
func TestProxyProtocolSlapd(t *testing.T) {
	bin := testenv.Binary(t)
	slapdLog := &testenv.SyncBuffer{}
	pport := testenv.FreePort(t)
	pldap := fmt.Sprintf("127.0.0.1:%d", pport)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv, err := ldapdemo.Start(ctx, ldapdemo.Options{Users: 3, Dir: t.TempDir(), Output: slapdLog, Debug: "stats",
		ExtraURLs: []string{"pldap://" + pldap + "/"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = srv.Stop()
		if t.Failed() {
			t.Logf("slapd log:\n%s", slapdLog)
		}
	})

	port := func() string { return fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)) }
	control, proxied, plain, dead := port(), port(), port(), port()
	cfg := cloudConfig(t, control, proxied, fmt.Sprintf(`
[[listeners]]
name = "plain"
bind = %q
connector = "plain"

[[listeners]]
name = "dead"
bind = %q
connector = "dead"

[log]
level = "debug"
`, plain, dead))
	cloud := testenv.StartProcess(t, bin, []string{"cloud", "--config", cfg}, nil)
	cloud.WaitForOutput(t, `"msg":"listener_started"`, 10*time.Second)

	dir := t.TempDir()
	tokFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokFile, []byte(token(t, "pp-agent", nil)), 0o600); err != nil {
		t.Fatal(err)
	}
	premiseCfg := filepath.Join(dir, "premise.toml")
	if err := os.WriteFile(premiseCfg, []byte(fmt.Sprintf(`cloud_url = "ws://%s/tunnel"
agent_id = "pp-agent"
token_file = "token"

[log]
mask_client_addr = true
`, control)), 0o600); err != nil {
		t.Fatal(err)
	}
	premise := testenv.StartProcess(t, bin, []string{"premise", "--config", premiseCfg}, []string{
		"NC_CONNECTORS=svc=" + pldap + ";proxy=v2,plain=" + srv.Addr() + ",dead=" + deadAddr(t)})
	cloud.WaitForOutput(t, `"msg":"agent_connected"`, 10*time.Second)

	// clientOf returns the client address the hub logged for the n-th
	// stream of connector.
	clientOf := func(connector string, n int) string {
		t.Helper()
		var client string
		testenv.WaitFor(t, 5*time.Second, "the hub's connection open line", func() bool {
			var seen int
			for _, r := range logLines(t, cloud.Output(), "connection open") {
				if r["connector"] == connector {
					if seen++; seen == n {
						client, _ = r["client"].(string)
						return true
					}
				}
			}
			return false
		})
		return client
	}
	accepted := func(listener string) []string { // "IP=host:port" of every ACCEPT on listener
		var out []string
		re := regexp.MustCompile(`ACCEPT from (IP=[0-9.:]+) \(IP=` + regexp.QuoteMeta(listener) + `\)`)
		for _, m := range re.FindAllStringSubmatch(slapdLog.String(), -1) {
			out = append(out, m[1])
		}
		return out
	}

	via := func() []string { // the real peer of every proxied connection
		var out []string
		for _, m := range regexp.MustCompile(`proxyp\(\d+\): via (IP=[0-9.:]+)`).FindAllStringSubmatch(slapdLog.String(), -1) {
			out = append(out, m[1])
		}
		return out
	}

	// Through the proxied connector: the entries, and slapd accepted the
	// connection from the client the hub saw.
	out := testenv.LDAPSearch(t, proxied, ldapdemo.BaseDN, "(objectClass=inetOrgPerson)", "uid")
	for i := range 3 {
		if want := fmt.Sprintf("uid: user%04d", i); !strings.Contains(out, want) {
			t.Fatalf("search through the proxied connector lacks %q:\n%s", want, out)
		}
	}
	client := "IP=" + clientOf("svc", 1)
	testenv.WaitFor(t, 5*time.Second, "slapd's ACCEPT on the pldap listener", func() bool { return len(accepted(pldap)) > 0 })
	if got := accepted(pldap); len(got) != 1 || got[0] != client {
		t.Fatalf("slapd accepted %v on pldap://%s, want [%s] (the client as the hub saw it)", got, pldap, client)
	}
	if v := via(); len(v) != 1 || v[0] == client {
		t.Fatalf("slapd's proxyp lines %v: want one, the agent's address, not the client's %s", v, client)
	}

	// The control: a plain connector shows slapd the agent, not the client.
	before := len(accepted(srv.Addr()))
	if out := testenv.LDAPSearch(t, plain, ldapdemo.BaseDN, "(uid=user0001)", "uid"); !strings.Contains(out, "uid: user0001") {
		t.Fatalf("search through the plain connector: %s", out)
	}
	plainClient := "IP=" + clientOf("plain", 1)
	testenv.WaitFor(t, 5*time.Second, "slapd's ACCEPT on the ldap listener", func() bool { return len(accepted(srv.Addr())) > before })
	if got := accepted(srv.Addr())[before:]; len(got) != 1 || got[0] == plainClient {
		t.Fatalf("plain connector: slapd accepted %v, want one connection from the agent, not %s", got, plainClient)
	}

	// A dead target: target_dial_failed at warn, the client masked.
	if c, err := net.Dial("tcp", dead); err == nil {
		if !closedAtOnce(c) {
			t.Error("client of a dead target not closed")
		}
		c.Close()
	}
	premise.WaitForOutput(t, `"msg":"target_dial_failed"`, 5*time.Second)
	recs := logLines(t, premise.Output(), "target_dial_failed")
	if r := recs[0]; r["level"] != "WARN" || r["connector"] != "dead" || r["reason"] != "dial_failed" || r["client"] != "127.0.0.0/24" {
		t.Fatalf("target_dial_failed = %v", r)
	}
	if deadClient := clientOf("dead", 1); strings.Contains(premise.Output(), deadClient) {
		t.Fatalf("the agent logged the client %s unmasked", deadClient)
	}
	checkLogLines(t, "premise", premise.Output(), false)
	checkLogLines(t, "cloud", cloud.Output(), false)
}
