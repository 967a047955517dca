package e2e

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/internal/testenv"
)

// scrape returns the nowconnect_* series of a hub's /metrics.
func scrape(t testing.TB, control string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + control + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("/metrics: %d %v", resp.StatusCode, err)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, "nowconnect_") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("bad sample %q", line)
		}
		out[line[:i]] = v
	}
	return out
}

// TestPingPong is the runbook's health gate (seed 000) as a test; `make
// pingpong` runs it verbosely. It starts slapd and `nowconnect up` as real
// processes, searches through the gateway with ldapsearch, prints the
// nowconnect_tcp_* counters, and fails unless c2a and a2c rose.
func TestPingPong(t *testing.T) {
	bin := testenv.Binary(t)
	ldap := testenv.StartSlapd(t, 50)
	control := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	listen := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	gw := testenv.StartProcess(t, bin, []string{"up", "--control", control, "--forward", listen + "=" + ldap.Addr}, nil)
	gw.WaitForOutput(t, `"msg":"agent_connected"`, 10*time.Second)
	testenv.WaitFor(t, 10*time.Second, "/readyz", func() bool {
		r, err := http.Get("http://" + control + "/readyz")
		if err != nil {
			return false
		}
		r.Body.Close()
		return r.StatusCode == 200
	})

	before := scrape(t, control)
	out := testenv.LDAPSearch(t, listen, ldap.BaseDN, "(objectClass=inetOrgPerson)", "uid", "mail")
	if n := strings.Count(out, "dn: uid="); n != 50 {
		t.Fatalf("search through the gateway returned %d users, want 50", n)
	}
	after := scrape(t, control)

	keys := []string{
		`nowconnect_tcp_connections_total{connector="fwd1"}`,
		`nowconnect_tcp_bytes_total{direction="c2a",connector="fwd1"}`,
		`nowconnect_tcp_bytes_total{direction="a2c",connector="fwd1"}`,
	}
	for k, v := range after {
		if !strings.HasPrefix(k, "nowconnect_tcp_") {
			continue
		}
		t.Logf("%s %v (was %v)", k, v, before[k])
	}
	for _, k := range keys {
		if after[k] <= before[k] {
			t.Errorf("%s did not rise: %v -> %v", k, before[k], after[k])
		}
	}
}
