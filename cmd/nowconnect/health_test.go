package main

import (
	"bytes"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/nowconnect/nowconnect/internal/testenv"
)

// TestHealth runs `nowconnect health` against real HTTP servers: exit 0 only for 200
// {"status":"ok"}; 1 for any other answer, a refused connection or a server that does not
// answer within --timeout; 2 for usage errors, which name the flag or argument.
func TestHealth(t *testing.T) {
	hang := make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(`{"status":"ok"}`)) })
	mux.HandleFunc("/draining", func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(`{"status":"ok"}`))
	})
	mux.HandleFunc("/degraded", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(`{"status":"degraded"}`)) })
	mux.HandleFunc("/html", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(`<html>ok</html>`)) })
	mux.HandleFunc("/redirect", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/ok", http.StatusFound) })
	mux.HandleFunc("/hang", func(_ http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-hang:
		}
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(func() { close(hang); srv.Close() })
	refused := "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(testenv.FreePort(t))) + "/healthz"

	for _, tc := range []struct {
		args     []string
		code     int
		inStderr string
	}{
		{[]string{"--url", srv.URL + "/ok"}, 0, ""},
		{[]string{"--url", srv.URL + "/draining"}, 1, "HTTP 503"},
		{[]string{"--url", srv.URL + "/degraded"}, 1, `status "degraded"`},
		{[]string{"--url", srv.URL + "/html"}, 1, "not JSON"},
		{[]string{"--url", srv.URL + "/redirect"}, 1, "HTTP 302"},
		{[]string{"--url", srv.URL + "/hang", "--timeout", "200ms"}, 1, "deadline exceeded"},
		{[]string{"--url", refused}, 1, "refused"},
		{[]string{"--url", "ftp://example.com/"}, 2, "--url"},
		{[]string{"--url", srv.URL + "/ok", "--timeout", "0s"}, 2, "--timeout"},
		{[]string{"--url", srv.URL + "/ok", "extra"}, 2, `"extra"`},
		{[]string{"--bogus"}, 2, "bogus"},
	} {
		var out, errb bytes.Buffer
		code := run(append([]string{"health"}, tc.args...), &out, &errb)
		if code != tc.code || !strings.Contains(errb.String(), tc.inStderr) {
			t.Errorf("health %v: exit %d, stderr %q; want exit %d with %q", tc.args, code, errb.String(), tc.code, tc.inStderr)
		}
		if code == 0 && strings.TrimSpace(out.String()) != "ok" {
			t.Errorf("health %v: stdout %q, want ok", tc.args, out.String())
		}
	}
}
