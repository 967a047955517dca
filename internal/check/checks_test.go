package check

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/internal/testenv"
)

func TestTCP(t *testing.T) {
	leakCheck(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serve(t, l, func(net.Conn) {})
	closed := closedPort(t)
	start := time.Now()
	rs := runYAML(t, fmt.Sprintf(`
- {type: tcp, host: 127.0.0.1, port: %d}
- {type: tcp, host: 127.0.0.1, port: %d, timeout: 2s}
`, l.Addr().(*net.TCPAddr).Port, closed), 10*time.Second)
	expect(t, rs[0], OK, "connected")
	expect(t, rs[1], Critical, "connect: connection refused")
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("a closed port took %v, more than its 2s timeout", d)
	}
	if p := rs[0].Perf; len(p) != 1 || p[0].Label != rs[0].Name+" time" || p[0].UOM != "s" || *p[0].Max != 10 {
		t.Errorf("time perfdata %+v", p)
	}
}

// TestBlackholeConcurrent: 50 checks against a port that never answers end together,
// within about one timeout, not fifty.
func TestBlackholeConcurrent(t *testing.T) {
	leakCheck(t)
	addr := testenv.UnacceptingAddr(t)
	host, port, _ := net.SplitHostPort(addr)
	var b strings.Builder
	for i := 0; i < 50; i++ {
		fmt.Fprintf(&b, "- {type: tcp, name: hole%02d, host: %s, port: %s}\n", i, host, port)
	}
	const timeout = time.Second
	cs := load(t, "hole.yaml", YAML, b.String(), timeout)
	start := time.Now()
	rs := Run(context.Background(), cs, 50)
	elapsed := time.Since(start)
	for _, r := range rs {
		expect(t, r, Critical, "connect: timed out after 1s")
		if r.Duration < timeout/2 || r.Duration > 3*timeout {
			t.Errorf("%s took %v, want about its %v timeout", r.Name, r.Duration, timeout)
		}
	}
	// Run one after the other they would take 50s.
	if elapsed > 5*timeout {
		t.Fatalf("50 blackholed checks took %v: they did not run concurrently", elapsed)
	}
}

// blockingProbe waits for its context and counts how many run at once.
type blockingProbe struct{ inflight, peak *atomic.Int32 }

func (b blockingProbe) name() string { return "block" }

func (b blockingProbe) run(ctx context.Context, r *report) {
	n := b.inflight.Add(1)
	for p := b.peak.Load(); n > p && !b.peak.CompareAndSwap(p, n); p = b.peak.Load() {
	}
	<-ctx.Done()
	b.inflight.Add(-1)
	r.crit("%s", r.failed(ctx, ctx.Err()))
}

// TestRunConcurrencyBound: never more than --concurrency checks at once; results in file
// order; a cancelled run ends every check as UNKNOWN.
func TestRunConcurrencyBound(t *testing.T) {
	leakCheck(t)
	var inflight, peak atomic.Int32
	var cs []*Check
	for i := 0; i < 12; i++ {
		cs = append(cs, &Check{Name: fmt.Sprint("c", i), Type: "block", Timeout: 20 * time.Millisecond, probe: blockingProbe{&inflight, &peak}})
	}
	rs := Run(context.Background(), cs, 3)
	if p := peak.Load(); p > 3 || p < 1 {
		t.Fatalf("peak concurrency %d, want 1..3", p)
	}
	for i, r := range rs {
		if r.Name != fmt.Sprint("c", i) {
			t.Fatalf("result %d is %s: not in file order", i, r.Name)
		}
		expect(t, r, Critical, "timed out after 20ms")
	}
	ctx, cancel := context.WithCancel(context.Background())
	for _, c := range cs {
		c.Timeout = time.Hour
	}
	time.AfterFunc(50*time.Millisecond, cancel)
	for _, r := range Run(ctx, cs, 4) {
		expect(t, r, Unknown, "cancelled")
	}
}

// TestTLS: certificates generated here, graded at the default thresholds (30 and 7 days).
func TestTLS(t *testing.T) {
	leakCheck(t)
	ca := newCA(t)
	day := 24 * time.Hour
	good := serveTLS(t, ca.leaf(t, "good", time.Now().Add(90*day)))
	soon := serveTLS(t, ca.leaf(t, "soon", time.Now().Add(20*day)))
	three := serveTLS(t, ca.leaf(t, "three", time.Now().Add(3*day)))
	expired := serveTLS(t, ca.leaf(t, "expired", time.Now().Add(-2*day)))
	rs := runYAML(t, fmt.Sprintf(`
- {type: tls, host: 127.0.0.1, port: %[1]d, ca_file: %[2]s}
- {type: tls, host: 127.0.0.1, port: %[3]d, ca_file: %[2]s}
- {type: tls, host: 127.0.0.1, port: %[4]d, ca_file: %[2]s}
- {type: tls, host: 127.0.0.1, port: %[5]d, ca_file: %[2]s}
- {type: tls, name: insecure expired, host: 127.0.0.1, port: %[5]d, insecure: true}
- {type: tls, name: no ca, host: 127.0.0.1, port: %[1]d}
- {type: tls, name: wrong name, host: 127.0.0.1, port: %[1]d, ca_file: %[2]s, server_name: ldap.example.org}
- {type: tls, name: localhost, host: localhost, port: %[1]d, ca_file: %[2]s}
- {type: tls, name: three at crit 2, host: 127.0.0.1, port: %[4]d, ca_file: %[2]s, crit_days: 2}
- {type: tls, name: plain, host: 127.0.0.1, port: %[6]d, ca_file: %[2]s}
`, good, ca.pemFile, soon, three, expired, serveRaw(t, "SSH-2.0-OpenSSH_9.2\r\n")), 10*time.Second)
	expect(t, rs[0], OK, `certificate "good" expires in 90.0 days`, "TLS 1.3")
	expect(t, rs[1], Warning, `certificate "soon" expires in 20.0 days`, "under 30 days")
	expect(t, rs[2], Critical, `certificate "three" expires in 3.0 days`, "under 7 days")
	expect(t, rs[3], Critical, `certificate "expired" expired 2.0 days ago`)
	expect(t, rs[4], Critical, "expired 2.0 days ago")
	expect(t, rs[5], Critical, "not trusted", "unknown authority")
	expect(t, rs[6], Critical, "not trusted", "ldap.example.org")
	expect(t, rs[7], OK, "expires in 90.0 days")
	expect(t, rs[8], Warning, "expires in 3.0 days")
	expect(t, rs[9], Critical, "handshake:")
	d := rs[1].Perf[1]
	if d.Label != rs[1].Name+" days" || d.Warn != "30:" || d.Crit != "7:" || d.Value < 19.9 || d.Value > 20 {
		t.Errorf("days perfdata %+v", d)
	}
	if rs[3].Perf[1].Value > -1.9 {
		t.Errorf("expired days %v, want about -2", rs[3].Perf[1].Value)
	}
}

func TestHTTP(t *testing.T) {
	leakCheck(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ok":
			if r.Header.Get("X-Probe") != "1" || r.URL.Query().Get("q") != "x" {
				http.Error(w, "missing header or param", http.StatusBadRequest)
				return
			}
			fmt.Fprint(w, "hello from the test server")
		case "/auth":
			if u, p, ok := r.BasicAuth(); !ok || u != "svc" || p != "basic-secret" {
				http.Error(w, "who are you", http.StatusUnauthorized)
				return
			}
			fmt.Fprint(w, "welcome")
		case "/post":
			b, _ := io.ReadAll(r.Body)
			fmt.Fprintf(w, "%s %s", r.Method, b)
		case "/redirect":
			http.Redirect(w, r, "/ok?q=x", http.StatusFound)
		default:
			http.Error(w, "down", http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	// A server whose reason phrase echoes a credential: library messages are scrubbed.
	leaky := serveRaw(t, "HTTP/1.1 500 token tok-123456 rejected\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
	rs := runYAML(t, fmt.Sprintf(`
- {type: http, url: "%[1]s/ok", headers: {X-Probe: "1"}, params: {q: x}, body_regex: "hello from"}
- {type: http, url: "%[1]s/ok?q=x", name: wrong regex, headers: {X-Probe: "1"}, body_regex: "^goodbye"}
- {type: http, url: "%[1]s/down"}
- {type: http, url: "%[1]s/down", name: expected 503, expect_status: 503}
- {type: http, url: "%[1]s/auth", auth: [svc, basic-secret]}
- {type: http, url: "%[1]s/post", method: post, body: ping, body_regex: "^POST ping$"}
- {type: http, url: "%[1]s/redirect", expected_code: 302}
- {type: http, url: "%[1]s/redirect", name: follow, allow_redirects: true, headers: {X-Probe: "1"}}
- {type: http, url: "http://127.0.0.1:%[2]d/", headers: {Authorization: Bearer tok-123456}}
- {type: http, url: "http://127.0.0.1:%[3]d/"}
`, srv.URL, leaky, closedPort(t)), 10*time.Second)
	expect(t, rs[0], OK, "status 200 OK", "26 bytes")
	expect(t, rs[1], Critical, "does not match /^goodbye/")
	expect(t, rs[2], Critical, "status 503 Service Unavailable, want 2xx")
	expect(t, rs[3], OK, "status 503")
	expect(t, rs[4], OK, "status 200")
	expect(t, rs[5], OK, "status 200")
	expect(t, rs[6], OK, "status 302")
	expect(t, rs[7], OK, "status 200")
	expect(t, rs[8], Critical, "status 500 token *** rejected")
	expect(t, rs[9], Critical, "request: connection refused")
	noSecrets(t, rs, "tok-123456", "basic-secret")
}

func TestUDP(t *testing.T) {
	leakCheck(t)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { // echoLoop: answers "pong:" + the datagram
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(append([]byte("pong:"), buf[:n]...), from)
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
	port := pc.LocalAddr().(*net.UDPAddr).Port
	rs := runYAML(t, fmt.Sprintf(`
- {type: udp, host: 127.0.0.1, port: %d, send: ping, expect: "pong:ping"}
- {type: udp, name: other answer, host: 127.0.0.1, port: %d, send: ping, expect: dcba}
- {type: udp, host: 127.0.0.1, port: %d, send: ping, expect: x, timeout: 3s}
`, port, port, closedPort(t)), 10*time.Second)
	expect(t, rs[0], OK, "answered 9 bytes")
	expect(t, rs[1], Critical, `answer "pong:ping" does not contain "dcba"`)
	expect(t, rs[2], Critical, "port unreachable")
}

// TestLDAP: a real slapd: rootDSE, bind and search; a wrong password is invalidCredentials;
// redis, HTTP and SSH ports are "not LDAP".
func TestLDAP(t *testing.T) {
	leakCheck(t)
	s := testenv.StartSlapd(t, 20)
	redis := startRedisPW(t, "redis-secret-1")
	pwFile := writeFile(t, "pw", s.AdminPW+"\n")
	web := httptest.NewServer(http.NotFoundHandler())
	defer web.Close()
	rs := runYAML(t, fmt.Sprintf(`
- {type: ldap, url: "%[1]s", bind_dn: "%[2]s", password_file: %[3]s, base: "%[4]s", filter: "(objectClass=inetOrgPerson)", expect_min_entries: 20}
- {type: ldap, name: anonymous rootDSE, url: "%[1]s"}
- {type: ldap, name: wrong password, url: "%[1]s", bind_dn: "%[2]s", password: not-the-password, base: "%[4]s"}
- {type: ldap, name: at redis, url: "ldap://127.0.0.1:%[5]d"}
- {type: ldap, name: at http, url: "ldap://%[6]s"}
- {type: ldap, name: at ssh, url: "ldap://127.0.0.1:%[7]d"}
- {type: ldap, name: no such base, url: "%[1]s", base: "ou=nowhere,%[4]s"}
- {type: ldap, name: too few, url: "%[1]s", base: "%[4]s", filter: "(uid=user0001)", expect_min_entries: 2}
- {type: ldap, name: closed, url: "ldap://127.0.0.1:%[8]d"}
- {type: ldap, name: ldaps at plain, url: "ldaps://%[9]s"}
`, s.URL, s.AdminDN, pwFile, s.BaseDN, redis, strings.TrimPrefix(web.URL, "http://"), serveRaw(t, "SSH-2.0-OpenSSH_9.2\r\n"), closedPort(t), s.Addr), 10*time.Second)
	expect(t, rs[0], OK, "rootDSE", "naming contexts dc=example,dc=org", "bind as cn=admin,dc=example,dc=org", "found 20 entries")
	expect(t, rs[1], OK, "rootDSE")
	expect(t, rs[2], Critical, "bind as cn=admin,dc=example,dc=org: invalidCredentials (49)")
	expect(t, rs[3], Critical, "not LDAP", `"-ERR unknown command`)
	expect(t, rs[4], Critical, "not LDAP", `"HTTP/1.1 400`)
	expect(t, rs[5], Critical, "not LDAP", `"SSH-2.0`)
	expect(t, rs[6], Critical, "noSuchObject (32)")
	expect(t, rs[7], Critical, "found 1 entry, want at least 2")
	expect(t, rs[8], Critical, "connect: connection refused")
	expect(t, rs[9], Critical, "connect: TLS:")
	if e := rs[0].Perf[1]; e.Label != rs[0].Name+" entries" || e.Value != 20 || e.Crit != "20:" {
		t.Errorf("entries perfdata %+v", e)
	}
	if strings.Contains(rs[0].Detail, s.AdminPW+" ") || strings.Contains(rs[2].Detail, "not-the-password") {
		t.Error("a password leaked into a detail")
	}
}

// TestLDAPTLS: a real slapd with a certificate from a test CA, over ldaps://
// and StartTLS: verified with ca_file, refused without it, skipped under
// insecure; the bind and the search run inside TLS.
func TestLDAPTLS(t *testing.T) {
	leakCheck(t)
	ca := newCA(t)
	certFile, keyFile := testenv.WritePEMPair(t, t.TempDir(), ca.leaf(t, "slapd", time.Now().Add(90*24*time.Hour)))
	s := testenv.StartSlapdTLS(t, 5, certFile, keyFile)
	pwFile := writeFile(t, "pw", s.AdminPW+"\n")
	rs := runYAML(t, fmt.Sprintf(`
- {type: ldap, url: "%[1]s", ca_file: %[2]s, bind_dn: "%[3]s", password_file: %[4]s, base: "%[5]s", filter: "(uid=user*)", expect_min_entries: 5}
- {type: ldap, name: starttls, url: "%[6]s", start_tls: true, ca_file: %[2]s, bind_dn: "%[3]s", password_file: %[4]s, base: "%[5]s", expect_min_entries: 5}
- {type: ldap, name: ldaps without ca_file, url: "%[1]s"}
- {type: ldap, name: starttls without ca_file, url: "%[6]s", start_tls: true, bind_dn: "%[3]s", password_file: %[4]s}
- {type: ldap, name: ldaps insecure, url: "%[1]s", insecure: true}
- {type: ldap, name: ldaps wrong name, url: "%[1]s", ca_file: %[2]s, server_name: ldap.example.org}
`, s.LDAPSURL, ca.pemFile, s.AdminDN, pwFile, s.BaseDN, s.URL), 10*time.Second)
	expect(t, rs[0], OK, `TLS 1.3, certificate "slapd"`, "rootDSE", "bind as cn=admin,dc=example,dc=org", "found 5 entries")
	expect(t, rs[1], OK, "rootDSE", `StartTLS: TLS 1.3, certificate "slapd"`, "bind as cn=admin,dc=example,dc=org", "found")
	expect(t, rs[2], Critical, "connect: TLS:", "certificate signed by unknown authority")
	expect(t, rs[3], Critical, "StartTLS:", "certificate signed by unknown authority")
	expect(t, rs[4], OK, `certificate "slapd" (verification skipped)`, "rootDSE")
	expect(t, rs[5], Critical, "connect: TLS:", "ldap.example.org")
	if strings.Contains(rs[1].Detail, "bind as") && strings.Index(rs[1].Detail, "StartTLS") > strings.Index(rs[1].Detail, "bind as") {
		t.Errorf("starttls: the bind ran before StartTLS: %s", rs[1].Detail)
	}
}

// TestRedis: a real redis-server with a password.
func TestRedis(t *testing.T) {
	leakCheck(t)
	port := startRedisPW(t, "redis-secret-2")
	pwFile := writeFile(t, "pw", "redis-secret-2\n")
	web := httptest.NewServer(http.NotFoundHandler())
	defer web.Close()
	_, webPort, _ := net.SplitHostPort(strings.TrimPrefix(web.URL, "http://"))
	rs := runYAML(t, fmt.Sprintf(`
- {type: redis, host: 127.0.0.1, port: %[1]d, password: redis-secret-2}
- {type: redis, name: from file, host: 127.0.0.1, port: %[1]d, password_file: %[2]s}
- {type: redis, name: wrong password, host: 127.0.0.1, port: %[1]d, password: hunter2-wrong}
- {type: redis, name: no password, host: 127.0.0.1, port: %[1]d}
- {type: redis, name: at http, host: 127.0.0.1, port: %[3]s}
- {type: redis, name: closed, host: 127.0.0.1, port: %[4]d}
- {type: redis, name: tls at plain, host: 127.0.0.1, port: %[1]d, tls: true, password: redis-secret-2}
`, port, pwFile, webPort, closedPort(t)), 10*time.Second)
	expect(t, rs[0], OK, "PONG", "role master, 0 replicas")
	expect(t, rs[1], OK, "PONG")
	expect(t, rs[2], Critical, "AUTH refused: WRONGPASS")
	expect(t, rs[3], Critical, "PING: NOAUTH", "set password or password_file")
	expect(t, rs[4], Critical, "not Redis", `"HTTP/1.1 400`)
	expect(t, rs[5], Critical, "connect: connection refused")
	expect(t, rs[6], Critical, "TLS:")
	noSecrets(t, rs, "redis-secret-2", "hunter2-wrong")
}

// TestRedisRegistry: registry: true probes what the HA registry needs of the
// user, on a real redis-server with ACL users: the README's rules pass, a user
// without the channel nc:claims gets a warning, one that cannot write or run
// scripts fails. The probe leaves no key behind.
func TestRedisRegistry(t *testing.T) {
	leakCheck(t)
	srv := testenv.StartRedis(t)
	for user, rules := range map[string]string{
		"hub":       "resetkeys ~nc:* resetchannels &nc:claims -@all +@read +@write +@scripting +@pubsub +@connection +time",
		"nochannel": "resetkeys ~nc:* resetchannels -@all +@read +@write +@scripting +@pubsub +@connection +time",
		"readonly":  "resetkeys ~nc:* resetchannels &nc:claims -@all +@read +@pubsub +@connection",
	} {
		srv.Do(t, append([]string{"ACL", "SETUSER", user, "on", ">pw-" + user}, strings.Fields(rules)...)...)
	}
	_, port, _ := net.SplitHostPort(srv.Addr)
	rs := runYAML(t, fmt.Sprintf(`
- {type: redis, name: readme user, host: 127.0.0.1, port: %[1]s, username: hub, password: pw-hub, registry: true}
- {type: redis, name: no channel, host: 127.0.0.1, port: %[1]s, username: nochannel, password: pw-nochannel, registry: true}
- {type: redis, name: read only, host: 127.0.0.1, port: %[1]s, username: readonly, password: pw-readonly, registry: true}
- {type: redis, name: default user, host: 127.0.0.1, port: %[1]s, registry: true}
- {type: redis, name: no probe, host: 127.0.0.1, port: %[1]s, username: readonly, password: pw-readonly}
`, port), 10*time.Second)
	expect(t, rs[0], OK, "registry: keys nc:*, scripts with TIME and the channel nc:claims allowed")
	expect(t, rs[1], Warning, "SUBSCRIBE nc:claims refused (NOPERM", "grant &nc:claims")
	expect(t, rs[2], Critical, "the HA registry cannot work as this user", "EVAL refused (NOPERM", "SET refused (NOPERM", "DEL refused (NOPERM")
	expect(t, rs[3], OK, "registry: keys nc:*")
	expect(t, rs[4], OK, "PONG")
	if got := srv.Do(t, "DBSIZE"); got != int64(0) {
		t.Errorf("DBSIZE after the probes = %v: a probe key was left behind", got)
	}
	noSecrets(t, rs, "pw-hub", "pw-nochannel", "pw-readonly")
}

// TestRedisTLS: a real redis-server serving TLS only: verified with ca_file
// (PING and AUTH inside TLS), refused without it, and plain text at a TLS
// port is not Redis.
func TestRedisTLS(t *testing.T) {
	leakCheck(t)
	ca := newCA(t)
	port := startRedisTLS(t, "redis-secret-3", ca)
	rs := runYAML(t, fmt.Sprintf(`
- {type: redis, host: 127.0.0.1, port: %[1]d, tls: true, ca_file: %[2]s, password: redis-secret-3}
- {type: redis, name: no ca_file, host: 127.0.0.1, port: %[1]d, tls: true, password: redis-secret-3}
- {type: redis, name: wrong password, host: 127.0.0.1, port: %[1]d, tls: true, ca_file: %[2]s, password: not-it}
- {type: redis, name: plain at tls, host: 127.0.0.1, port: %[1]d, password: redis-secret-3, timeout: 2s}
`, port, ca.pemFile), 10*time.Second)
	expect(t, rs[0], OK, "PONG", "role master")
	expect(t, rs[1], Critical, "TLS:", "certificate signed by unknown authority")
	expect(t, rs[2], Critical, "AUTH refused: WRONGPASS")
	if rs[3].Status == OK {
		t.Errorf("plain text at a TLS port: %s %q, want a failure", rs[3].Status, rs[3].Detail)
	}
	noSecrets(t, rs, "redis-secret-3", "not-it")
}

// TestHTTPS: https with the private CA in ca_file verifies; without it the
// same server fails verification, and insecure skips it.
func TestHTTPS(t *testing.T) {
	leakCheck(t)
	ca := newCA(t)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "secure hello") }))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.leaf(t, "web", time.Now().Add(90*24*time.Hour))}}
	srv.StartTLS()
	defer srv.Close()
	rs := runYAML(t, fmt.Sprintf(`
- {type: http, url: "%[1]s/", ca_file: %[2]s, body_regex: "secure hello"}
- {type: http, url: "%[1]s/", name: no ca_file}
- {type: http, url: "%[1]s/", name: insecure, insecure: true}
`, srv.URL, ca.pemFile), 10*time.Second)
	expect(t, rs[0], OK, "status 200")
	expect(t, rs[1], Critical, "certificate")
	expect(t, rs[2], OK, "status 200")
}
