package e2e

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/hub"
	"github.com/nowconnect/nowconnect/internal/auth"
)

// rawHTTP sends raw bytes to the control port and returns everything the
// hub answers until it closes or goes quiet for a second.
func rawHTTP(t *testing.T, addr, req string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	b, _ := io.ReadAll(c)
	return string(b)
}

func TestControlPort(t *testing.T) {
	leakCheck(t)
	th := startHub(t, []string{"svc"}, func(c *hub.Config) { c.RequestTimeout = 300 * time.Millisecond })

	for _, tc := range []struct{ path, status, body string }{
		{"/healthz", "200", `{"status":"ok"}`},
		{"/readyz", "200", `{"status":"ready"}`},
		{"/nope", "404", "not found"},
		{"/tunnel", "426", "websocket upgrade required"},
		{"/metrics?x=1", "200", "# TYPE nowconnect_agents_connected gauge"},
	} {
		resp, err := http.Get("http://" + th.Control + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.Status[:3] != tc.status || !strings.Contains(string(b), tc.body) {
			t.Errorf("GET %s: %s %q", tc.path, resp.Status, b)
		}
	}

	if got := rawHTTP(t, th.Control, "BLAH\r\n\r\n"); !strings.HasPrefix(got, "HTTP/1.1 400 ") {
		t.Errorf("malformed request: %q", got)
	}
	if got := rawHTTP(t, th.Control, "GET / HTTP/1.1\r\nX: "+strings.Repeat("a", 9000)); !strings.HasPrefix(got, "HTTP/1.1 431 ") {
		t.Errorf("oversized request head: %.60q", got)
	}
	if got := rawHTTP(t, th.Control, "POST /healthz HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"); !strings.HasPrefix(got, "HTTP/1.1 400 ") {
		t.Errorf("request with a body: %q", got)
	}

	// A slow half-request is closed after the request timeout.
	c, err := net.Dial("tcp", th.Control)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n")
	start := time.Now()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 64)); n != 0 || err == nil {
		t.Fatalf("half request answered: %d %v", n, err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("half request held for %v", d)
	}

	// Keep-alive with pipelined requests, the metrics one rendered off-loop.
	k, err := net.Dial("tcp", th.Control)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	_, _ = io.WriteString(k, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(k)
	for i, want := range []string{"nowconnect_", `{"status":"ok"}`} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("pipelined response %d: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(b), want) {
			t.Fatalf("pipelined response %d lacks %q", i, want)
		}
	}
}

// slowVerifier blocks the first upgrade until released, then defers to v.
type slowVerifier struct {
	v       hub.TokenVerifier
	entered chan struct{}
	release chan struct{}
	first   atomic.Bool
}

func (s *slowVerifier) VerifyBearer(h []byte) (string, []string, error) {
	if !s.first.Swap(true) { // only the first call hangs
		close(s.entered)
		<-s.release
	}
	return s.v.VerifyBearer(h)
}

// TestSlowTokenVerification: verifying a tunnel's token (which may fetch
// JWKS keys) happens off the event loop: while it hangs, the control port
// answers and streams keep flowing.
func TestSlowTokenVerification(t *testing.T) {
	leakCheck(t)
	tgt := startServer(t, exchangeTarget)
	v, err := auth.NewVerifier(auth.VerifierConfig{HS256Secret: testSecret})
	if err != nil {
		t.Fatal(err)
	}
	sv := &slowVerifier{v: v, entered: make(chan struct{}), release: make(chan struct{})}
	th := startHub(t, []string{"svc"}, func(c *hub.Config) { c.Verifier = sv; c.EventLoops = 1 })
	// The first agent's verification hangs...
	stuck := make(chan error, 1)
	go func() { // upgradeLoop; joined below
		_, err := dialRaw(t, th, token(t, "slow", []string{"svc"}))
		stuck <- err
	}()
	<-sv.entered
	// ...while the one event loop serves everything else.
	resp, err := http.Get("http://" + th.Control + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	startAgent(t, th, "a1", map[string]string{"svc": tgt.Addr()})
	if err := exchange(th.Addr["svc"], 5, 1<<20, 1<<20); err != nil {
		t.Fatalf("stream during a hanging verification: %v", err)
	}
	close(sv.release)
	if err := <-stuck; err != nil {
		t.Fatalf("the slow upgrade failed once released: %v", err)
	}
}
