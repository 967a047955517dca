package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/hub"
	"github.com/nowconnect/nowconnect/internal/auth"
	"github.com/nowconnect/nowconnect/internal/testenv"
)

// metricValue reads one series from the hub's metric set (0 if absent).
func metricValue(t testing.TB, th *testHub, series string) float64 {
	t.Helper()
	var b bytes.Buffer
	th.Metrics().WritePrometheus(&b)
	for _, line := range strings.Split(b.String(), "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, err := strconv.ParseFloat(rest, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return v
		}
	}
	return 0
}

// closedAtOnce reports whether the hub closed c without sending anything.
func closedAtOnce(c net.Conn) bool {
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Read(make([]byte, 1))
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return false
	}
	return n == 0 && err != nil
}

func TestCIDRAllowlist(t *testing.T) {
	leakCheck(t)
	tgt := startServer(t, exchangeTarget)
	th := startHub(t, []string{"open", "closed"}, func(c *hub.Config) {
		for i := range c.Listeners {
			switch c.Listeners[i].Connector {
			case "open":
				c.Listeners[i].Allow = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("127.0.0.0/8")}
			case "closed":
				c.Listeners[i].Allow = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}
			}
		}
	})
	a := startAgent(t, th, "a1", map[string]string{"open": tgt.Addr(), "closed": tgt.Addr()})

	if err := exchange(th.Addr["open"], 1, 1000, 1000); err != nil {
		t.Fatalf("allowed client: %v", err)
	}
	before := tgt.conns.Load()
	c, err := net.Dial("tcp", th.Addr["closed"])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !closedAtOnce(c) {
		t.Fatal("blocked client was not closed at once")
	}
	testenv.WaitFor(t, 5*time.Second, "cidr_blocked logged", func() bool {
		return strings.Contains(th.Logs.String(), `"msg":"cidr_blocked"`)
	})
	if got := metricValue(t, th, `nowconnect_listener_errors_total{connector="closed",type="cidr"}`); got != 1 {
		t.Fatalf("cidr errors counted %v, want 1", got)
	}
	if tgt.conns.Load() != before || a.ActiveStreams() != 0 || metricValue(t, th, `nowconnect_tcp_connections_total{connector="closed"}`) != 0 {
		t.Fatal("the agent saw a stream for a blocked client")
	}
}

// pdpServer is a real AuthZEN PDP on loopback whose answer the test sets.
type pdpServer struct {
	*httptest.Server
	requests atomic.Int64
	mu       sync.Mutex
	answer   func(w http.ResponseWriter, subject string)
}

func startPDP(t *testing.T) *pdpServer {
	p := &pdpServer{}
	p.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.requests.Add(1)
		var req struct {
			Subject  struct{ Type, ID string }
			Resource struct{ Type, ID string }
			Action   struct{ Name string }
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || r.Method != http.MethodPost ||
			req.Subject.Type != "client" || req.Resource.Type != "connector" || req.Action.Name != "connect" {
			http.Error(w, "bad evaluation request", 400)
			return
		}
		p.mu.Lock()
		answer := p.answer
		p.mu.Unlock()
		answer(w, req.Subject.ID)
	}))
	t.Cleanup(p.Close)
	return p
}

func (p *pdpServer) set(f func(w http.ResponseWriter, subject string)) {
	p.mu.Lock()
	p.answer = f
	p.mu.Unlock()
}

func decide(allow bool) func(http.ResponseWriter, string) {
	return func(w http.ResponseWriter, _ string) { fmt.Fprintf(w, `{"decision": %v}`, allow) }
}

func TestPDP(t *testing.T) {
	tgt := startServer(t, exchangeTarget)
	pdp := startPDP(t)
	th := startHub(t, []string{"guarded", "free"}, func(c *hub.Config) {
		c.PDP = &hub.PDPConfig{URL: pdp.URL, Timeout: 300 * time.Millisecond, CacheTTL: time.Hour}
		for i := range c.Listeners {
			c.Listeners[i].PDP = c.Listeners[i].Connector == "guarded"
		}
	})
	startAgent(t, th, "a1", map[string]string{"guarded": tgt.Addr(), "free": tgt.Addr()})
	series := func(result string) string {
		return fmt.Sprintf(`nowconnect_pdp_decisions_total{connector="guarded",result=%q}`, result)
	}

	t.Run("deny", func(t *testing.T) {
		pdp.set(decide(false))
		c, err := net.Dial("tcp", th.Addr["guarded"])
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if !closedAtOnce(c) {
			t.Fatal("denied client not closed")
		}
		if metricValue(t, th, series("deny")) != 1 {
			t.Fatal("deny not counted")
		}
	})
	t.Run("cached deny", func(t *testing.T) {
		pdp.set(decide(true)) // the cache still says no
		c, err := net.Dial("tcp", th.Addr["guarded"])
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if !closedAtOnce(c) || pdp.requests.Load() != 1 {
			t.Fatalf("cached deny: PDP asked %d times", pdp.requests.Load())
		}
		if metricValue(t, th, `nowconnect_pdp_cache_hits_total{connector="guarded"}`) != 1 {
			t.Fatal("cache hit not counted")
		}
	})
}

// TestPDPPaths covers allow, cache hits, timeout and error, each on its own
// hub so that the cache starts empty.
func TestPDPPaths(t *testing.T) {
	leakCheck(t)
	tgt := startServer(t, exchangeTarget)
	newHub := func(t *testing.T, pdp *pdpServer, failOpen bool) *testHub {
		th := startHub(t, []string{"guarded", "free"}, func(c *hub.Config) {
			c.PDP = &hub.PDPConfig{URL: pdp.URL, Timeout: 300 * time.Millisecond, CacheTTL: time.Hour, FailOpen: failOpen}
			for i := range c.Listeners {
				c.Listeners[i].PDP = c.Listeners[i].Connector == "guarded"
			}
		})
		startAgent(t, th, "a1", map[string]string{"guarded": tgt.Addr(), "free": tgt.Addr()})
		return th
	}
	t.Run("allow and cache", func(t *testing.T) {
		pdp := startPDP(t)
		pdp.set(decide(true))
		th := newHub(t, pdp, false)
		for i := 0; i < 3; i++ {
			if err := exchange(th.Addr["guarded"], uint64(i), 2000, 2000); err != nil {
				t.Fatalf("allowed connection %d: %v", i, err)
			}
		}
		if pdp.requests.Load() != 1 {
			t.Fatalf("PDP asked %d times for one client, want 1 (cache)", pdp.requests.Load())
		}
		if got := metricValue(t, th, `nowconnect_pdp_cache_hits_total{connector="guarded"}`); got != 2 {
			t.Fatalf("cache hits %v, want 2", got)
		}
		if got := metricValue(t, th, `nowconnect_pdp_decisions_total{connector="guarded",result="allow"}`); got != 3 {
			t.Fatalf("allow decisions %v, want 3", got)
		}
	})
	t.Run("slow PDP does not block the loop", func(t *testing.T) {
		pdp := startPDP(t)
		unblock := make(chan struct{})
		pdp.set(func(w http.ResponseWriter, _ string) {
			<-unblock
			fmt.Fprint(w, `{"decision": true}`)
		})
		th := newHub(t, pdp, false)
		pending, err := net.Dial("tcp", th.Addr["guarded"])
		if err != nil {
			t.Fatal(err)
		}
		defer pending.Close()
		testenv.WaitFor(t, 5*time.Second, "PDP asked", func() bool { return pdp.requests.Load() == 1 })
		// While the decision is pending, other clients are served.
		if err := exchange(th.Addr["free"], 9, 100000, 100000); err != nil {
			t.Fatalf("unguarded listener blocked by a pending PDP call: %v", err)
		}
		close(unblock)
	})
	t.Run("timeout fails closed", func(t *testing.T) {
		pdp := startPDP(t)
		stop := make(chan struct{})
		defer close(stop)
		pdp.set(func(w http.ResponseWriter, _ string) { <-stop })
		th := newHub(t, pdp, false)
		c, err := net.Dial("tcp", th.Addr["guarded"])
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if !closedAtOnce(c) {
			t.Fatal("client not closed after a PDP timeout")
		}
		if metricValue(t, th, `nowconnect_pdp_decisions_total{connector="guarded",result="error"}`) != 1 ||
			metricValue(t, th, `nowconnect_listener_errors_total{connector="guarded",type="pdp"}`) != 1 {
			t.Fatal("PDP timeout not counted as error")
		}
	})
	t.Run("error fails closed, or open when configured", func(t *testing.T) {
		pdp := startPDP(t)
		pdp.set(func(w http.ResponseWriter, _ string) { http.Error(w, "boom", 500) })
		closed := newHub(t, pdp, false)
		c, err := net.Dial("tcp", closed.Addr["guarded"])
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if !closedAtOnce(c) {
			t.Fatal("PDP error did not fail closed")
		}
		open := newHub(t, pdp, true)
		if err := exchange(open.Addr["guarded"], 3, 1000, 1000); err != nil {
			t.Fatalf("fail_open: %v", err)
		}
		if metricValue(t, open, `nowconnect_pdp_decisions_total{connector="guarded",result="error"}`) != 1 {
			t.Fatal("fail_open error not counted")
		}
	})
}

// TestByteCounters: the c2a/a2c counters equal the bytes moved.
func TestByteCounters(t *testing.T) {
	tgt := startServer(t, exchangeTarget)
	th := startHub(t, []string{"svc"})
	startAgent(t, th, "a1", map[string]string{"svc": tgt.Addr()})
	const up, down = 123457, 654321
	for i := 0; i < 3; i++ {
		if err := exchange(th.Addr["svc"], uint64(i), up, down); err != nil {
			t.Fatal(err)
		}
	}
	testenv.WaitFor(t, 5*time.Second, "streams to end", func() bool { return th.ActiveStreams() == 0 })
	c2a := metricValue(t, th, `nowconnect_tcp_bytes_total{direction="c2a",connector="svc"}`)
	a2c := metricValue(t, th, `nowconnect_tcp_bytes_total{direction="a2c",connector="svc"}`)
	if c2a != 3*(16+up) || a2c != 3*(down+32) {
		t.Fatalf("bytes counted c2a=%v a2c=%v; sent %d, received %d", c2a, a2c, 3*(16+up), 3*(down+32))
	}
	if v := metricValue(t, th, `nowconnect_tcp_connections_total{connector="svc"}`); v != 3 {
		t.Fatalf("connections %v", v)
	}
	if v := metricValue(t, th, `nowconnect_tcp_fin_total{connector="svc",event="recv"}`); v < 3 {
		t.Fatalf("fin recv %v", v)
	}
}

// TestProcessesLogsAndShutdown runs the real cloud and premise processes
// from config files: JSON logs with the source documents' event names and
// no token anywhere; SIGTERM lets an in-flight transfer finish, refuses new
// connections, and exits 0.
func TestProcessesLogsAndShutdown(t *testing.T) {
	bin := testenv.Binary(t)
	ldap := testenv.StartSlapd(t, 20)
	const total = 32 << 20
	slow := startServer(t, func(c net.Conn) {
		buf := make([]byte, 1<<20)
		src := newPRNG(77)
		for sent := 0; sent < total; sent += len(buf) {
			_, _ = io.ReadFull(src, buf)
			if _, err := c.Write(buf); err != nil {
				return
			}
			time.Sleep(40 * time.Millisecond) // a slow target: ~1.3 s for 32 MiB
		}
	})
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	if err := os.WriteFile(secret, testSecret, 0o600); err != nil {
		t.Fatal(err)
	}
	tokOut, err := runCmd(bin, "token", "--secret-file", secret, "--agent-id", "dev-agent-1", "--connectors", "addomain,bulk")
	if err != nil {
		t.Fatal(err)
	}
	tok := strings.TrimSpace(tokOut)
	tokFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokFile, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	control := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	ldapL := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	bulkL := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	cfg := fmt.Sprintf(`listen = %q
allow_cidrs = ["127.0.0.0/8"]

[[listeners]]
name = "l1"
bind = %q
connector = "addomain"

[[listeners]]
name = "bulk"
bind = %q
connector = "bulk"

[[listeners]]
name = "blocked"
bind = "127.0.0.1:%d"
connector = "addomain"
allow_cidrs = ["10.0.0.0/8"]

[auth]
jwt_secret_file = %q

[timeouts]
shutdown_grace = "20s"

[log]
level = "debug"
`, control, ldapL, bulkL, testenv.FreePort(t), secret)
	cfgFile := filepath.Join(dir, "cloud.toml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cloud := testenv.StartProcess(t, bin, []string{"cloud", "--config", cfgFile}, nil)
	cloud.WaitForOutput(t, `"msg":"listener_started"`, 10*time.Second)
	// No agent yet: no_agent_for_connector.
	if c, err := net.Dial("tcp", ldapL); err == nil {
		closedAtOnce(c)
		c.Close()
	}
	cloud.WaitForOutput(t, "no_agent_for_connector", 5*time.Second)

	agentMetrics := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	premise := testenv.StartProcess(t, bin, []string{"premise", "--metrics-listen", agentMetrics}, []string{
		"NC_CLOUD_URL=ws://" + control + "/tunnel", "NC_AGENT_ID=dev-agent-1", "NC_TOKEN_FILE=" + tokFile,
		"NC_CONNECTORS=addomain=" + ldap.Addr + ",bulk=" + slow.Addr(),
	})
	cloud.WaitForOutput(t, `"msg":"agent_connected"`, 10*time.Second)
	premise.WaitForOutput(t, `"msg":"connection open"`, 10*time.Second)
	if out := testenv.LDAPSearch(t, ldapL, ldap.BaseDN, "(uid=user0001)"); !strings.Contains(out, "uid=user0001") {
		t.Fatalf("search through the gateway: %s", out)
	}
	cloud.WaitForOutput(t, `"msg":"connection open"`, 5*time.Second)
	blockedAddr := strings.SplitN(strings.SplitN(cfg, `name = "blocked"`, 2)[1], `"`, 3)[1]
	if c, err := net.Dial("tcp", blockedAddr); err == nil {
		closedAtOnce(c)
		c.Close()
	}
	cloud.WaitForOutput(t, "cidr_blocked", 5*time.Second)

	// An in-flight transfer, then SIGTERM.
	c, err := net.Dial("tcp", bulkL)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	want := newPRNG(77)
	if err := readSame(c, want, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := cloud.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	cloud.WaitForOutput(t, `"msg":"draining"`, 5*time.Second)
	if n, err := net.Dial("tcp", ldapL); err == nil {
		if !closedAtOnce(n) {
			t.Error("a new connection was served during shutdown")
		}
		n.Close()
	}
	if err := readSame(c, want, total-(1<<20)); err != nil {
		t.Fatalf("in-flight transfer during shutdown: %v", err)
	}
	if n, err := io.Copy(io.Discard, c); n != 0 || err != nil {
		t.Fatalf("after the transfer: %d bytes, %v; want EOF", n, err)
	}
	c.Close() // the stream ends; the hub may exit before its grace runs out
	start := time.Now()
	code, err := cloud.Wait(30 * time.Second)
	if err != nil || code != 0 {
		t.Fatalf("cloud exit %d, %v", code, err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("cloud took %v to exit after its last stream ended", d)
	}

	// The agent's own metrics.
	resp, err := http.Get("http://" + agentMetrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	am, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"nowconnect_agent_dial_seconds_bucket", "nowconnect_agent_tunnel_up", `nowconnect_agent_bytes_total{direction="a2c",connector="addomain"}`} {
		if !strings.Contains(string(am), want) {
			t.Errorf("agent metrics lack %s", want)
		}
	}
	// The agent drains on SIGTERM and exits 0.
	if err := premise.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code, err := premise.Wait(15 * time.Second); err != nil || code != 0 {
		t.Fatalf("premise exit %d, %v", code, err)
	}

	// Every line is JSON; the events are there; no token or secret leaks.
	for name, out := range map[string]string{"cloud": cloud.Output(), "premise": premise.Output()} {
		sc := bufio.NewScanner(strings.NewReader(out))
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var m map[string]any
			if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
				t.Errorf("%s: not JSON: %q", name, sc.Text())
			}
		}
		if strings.Contains(out, tok) || strings.Contains(out, tok[strings.LastIndex(tok, ".")+1:]) || strings.Contains(out, string(testSecret)) {
			t.Errorf("%s logged a token or the secret", name)
		}
	}
	for _, ev := range []string{"listener_started", "agent_connected", "connection open", "no_agent_for_connector", "cidr_blocked", "agent_disconnected"} {
		if !strings.Contains(cloud.Output(), `"msg":"`+ev+`"`) {
			t.Errorf("cloud log lacks %s", ev)
		}
	}
	for _, ev := range []string{"connecting to cloud", "connection open"} {
		if !strings.Contains(premise.Output(), `"msg":"`+ev+`"`) {
			t.Errorf("premise log lacks %s", ev)
		}
	}
}

func runCmd(bin string, args ...string) (string, error) {
	out, err := exec.Command(bin, args...).Output()
	return string(out), err
}

// TestIPv6Allowlist: an IPv6 listener with an IPv6 allowlist.
func TestIPv6Allowlist(t *testing.T) {
	leakCheck(t)
	tgt := startServer(t, exchangeTarget)
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Fatalf("IPv6 loopback unavailable: %v", err)
	}
	v6 := ln.Addr().String()
	ln.Close()
	th := startHub(t, []string{"v6ok", "v6no"}, func(c *hub.Config) {
		for i := range c.Listeners {
			if c.Listeners[i].Connector == "v6ok" {
				c.Listeners[i].Bind = v6
				c.Listeners[i].Allow = []netip.Prefix{netip.MustParsePrefix("::1/128")}
			} else {
				c.Listeners[i].Allow = []netip.Prefix{netip.MustParsePrefix("::1/128")} // IPv4 clients blocked
			}
		}
	})
	startAgent(t, th, "a1", map[string]string{"v6ok": tgt.Addr(), "v6no": tgt.Addr()})
	if err := exchange(v6, 1, 5000, 5000); err != nil {
		t.Fatalf("IPv6 client: %v", err)
	}
	c, err := net.Dial("tcp", th.Addr["v6no"])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !closedAtOnce(c) {
		t.Fatal("IPv4 client passed an IPv6-only allowlist")
	}
}

// TestDialFailure: a target that refuses is reported by the agent and the
// client is closed promptly.
func TestDialFailure(t *testing.T) {
	leakCheck(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close() // nothing listens there now
	th := startHub(t, []string{"dead"})
	startAgent(t, th, "a1", map[string]string{"dead": dead})
	c, err := net.Dial("tcp", th.Addr["dead"])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	if !closedAtOnce(c) {
		t.Fatal("client not closed after the dial failed")
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("client closed %v after connecting", d)
	}
	testenv.WaitFor(t, 5*time.Second, "dial error counted", func() bool {
		return metricValue(t, th, `nowconnect_listener_errors_total{connector="dead",type="dial"}`) == 1
	})
	if !strings.Contains(th.Logs.String(), `"reason":"dial_failed"`) {
		t.Fatal("dial failure not logged with its reason")
	}
}

// TestConfigErrorsStopStart: a bad config file stops the hub with file,
// line and key named, and a non-zero exit.
func TestConfigErrorsStopStart(t *testing.T) {
	bin := testenv.Binary(t)
	f := filepath.Join(t.TempDir(), "cloud.toml")
	if err := os.WriteFile(f, []byte("listen = \"127.0.0.1:1\"\nlistners = []\n\n[tunnel]\nping_interval = 5\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "cloud", "--config", f).CombinedOutput()
	if err == nil {
		t.Fatal("hub started with a bad config")
	}
	for _, want := range []string{"cloud.toml:2:", "listners", "cloud.toml:5:", "tunnel.ping_interval", `"5s"`} {
		if !strings.Contains(string(out), want) {
			t.Errorf("error output lacks %q:\n%s", want, out)
		}
	}
	out, err = exec.Command(bin, "cloud", "--config", "/nonexistent/cloud.toml").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "/nonexistent/cloud.toml") {
		t.Errorf("missing config file: %v %s", err, out)
	}
}

// TestRestartBindsAtOnce: a hub that closed client connections itself
// (TIME_WAIT on its listener port) can be restarted on the same ports at
// once, as with net.Listen's SO_REUSEADDR.
func TestRestartBindsAtOnce(t *testing.T) {
	leakCheck(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	first := startHub(t, []string{"dead"})
	a := startAgent(t, first, "a1", map[string]string{"dead": dead})
	for i := 0; i < 3; i++ { // the hub closes these first: TIME_WAIT on its side
		c, err := net.Dial("tcp", first.Addr["dead"])
		if err != nil {
			t.Fatal(err)
		}
		closedAtOnce(c)
		c.Close()
	}
	a.Stop(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := first.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	v, err := auth.NewVerifier(auth.VerifierConfig{HS256Secret: testSecret})
	if err != nil {
		t.Fatal(err)
	}
	second, err := hub.New(hub.Config{
		Control:   first.Control,
		Listeners: []hub.Listener{{Name: "again", Bind: first.Addr["dead"], Connector: "dead"}},
		Verifier:  v,
		Logger:    slog.New(slog.NewJSONHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := second.Start(); err != nil {
		t.Fatalf("restart on the same ports: %v", err)
	}
	if err := second.Stop(ctx); err != nil {
		t.Fatal(err)
	}
}
