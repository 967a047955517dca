package loadtest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/internal/testenv"
)

// These tests run the real binary: `nowconnect loadtest ldap …`.

func cliArgs(s *testenv.Slapd, url string, extra ...string) []string {
	return append([]string{"loadtest", "ldap", "--url", url, "--base-dn", s.BaseDN,
		"--bind-dn", s.AdminDN, "--bind-pw", s.AdminPW, "--user-count", fmt.Sprint(s.Users)}, extra...)
}

func runCLI(t *testing.T, args []string) (int, string) {
	t.Helper()
	p := testenv.StartProcess(t, testenv.Binary(t), args, nil)
	code, err := p.Wait(time.Minute)
	if err != nil {
		t.Fatalf("nowconnect %s: %v\n%s", strings.Join(args, " "), err, p.Output())
	}
	return code, p.Output()
}

func TestCLIExitCodes(t *testing.T) {
	t.Parallel()
	s := testenv.StartSlapd(t, testUsers)
	dir := t.TempDir()
	jsonPath := filepath.Join(dir, "r.json")

	// A clean run: exit 0, JSON written.
	code, out := runCLI(t, cliArgs(s, s.URL, "--scenario", "search", "--duration", "300ms", "--warmup", "0", "--json", jsonPath))
	if code != 0 || !strings.Contains(out, "# LDAP load test: search — PASS") {
		t.Fatalf("clean run: exit %d\n%s", code, out)
	}
	var res Result
	if b, err := os.ReadFile(jsonPath); err != nil {
		t.Fatal(err)
	} else if err := json.Unmarshal(b, &res); err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	if !res.Passed || res.Totals.Succeeded == 0 || res.Latency.P99 <= 0 || res.Config.Concurrency != 10 {
		t.Fatalf("JSON result %+v", res)
	}

	// An impossible SLO: exit 1, and the missed gate is named.
	code, out = runCLI(t, cliArgs(s, s.URL, "--scenario", "search", "--duration", "300ms", "--warmup", "0", "--slo-p99", "1ns"))
	if code != 1 || !strings.Contains(out, "FAIL p99 latency") {
		t.Fatalf("--slo-p99 1ns: exit %d\n%s", code, out)
	}

	// Usage and configuration errors: exit 2.
	for _, args := range [][]string{
		{"loadtest"},
		{"loadtest", "ldap", "--bogus"},
		{"loadtest", "ldap", "--base-dn", s.BaseDN},
		cliArgs(s, s.URL, "--scenario", "nope"),
		cliArgs(s, s.URL, "--scenario", "mixed", "--mix", "search=x"),
		cliArgs(s, s.URL, "--scenario", "search", "--bind-pw", "wrong", "--duration", "1s"),
		cliArgs(s, s.URL, "--report", filepath.Join(dir, "no", "such", "dir.md")),
	} {
		if code, out := runCLI(t, args); code != 2 {
			t.Fatalf("%q: exit %d, want 2\n%s", args, code, out)
		}
	}
}

// SIGINT ends the run early; the report is still printed.
func TestCLIInterruptPrintsReport(t *testing.T) {
	t.Parallel()
	s := testenv.StartSlapd(t, testUsers)
	p := testenv.StartProcess(t, testenv.Binary(t), cliArgs(s, s.URL, "--scenario", "search", "--concurrency", "2",
		"--duration", "10m", "--warmup", "0", "--progress"), nil)
	p.WaitForOutput(t, "ops/s", 30*time.Second) // the first progress line
	if err := p.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	code, err := p.Wait(30 * time.Second)
	out := p.Output()
	if err != nil || code != 0 {
		t.Fatalf("after SIGINT: exit %d, %v\n%s", code, err, out)
	}
	for _, want := range []string{"**Interrupted**", "## Latency", "interrupted; the report covers"} {
		if !strings.Contains(out, want) {
			t.Fatalf("output lacks %q:\n%s", want, out)
		}
	}
}

// Through the real gateway: `nowconnect up` forwards a listener to slapd; the load test
// scrapes the hub's counters and reports the c2a/a2c byte deltas.
func TestCLIThroughGateway(t *testing.T) {
	t.Parallel()
	s := testenv.StartSlapd(t, testUsers)
	control := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	listen := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	testenv.StartProcess(t, testenv.Binary(t), []string{"up", "--control", control, "--forward", listen + "=" + s.Addr}, nil)
	testenv.WaitFor(t, 30*time.Second, "an LDAP search through the gateway", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := testenv.RunLDAPSearch(ctx, listen, s.AdminDN, s.AdminPW, s.BaseDN, "(uid=user0001)", "cn")
		return err == nil
	})

	dir := t.TempDir()
	reportPath, jsonPath := filepath.Join(dir, "report.md"), filepath.Join(dir, "result.json")
	code, out := runCLI(t, cliArgs(s, "ldap://"+listen, "--scenario", "mixed", "--concurrency", "4",
		"--duration", "1s", "--warmup", "200ms", "--metrics-url", "http://"+control+"/metrics",
		"--report", reportPath, "--json", jsonPath, "--max-error-rate", "0"))
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, out)
	}
	var res Result
	b, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatal(err)
	}
	g := res.Gateway
	if g == nil || g.Error != "" || g.BytesC2A <= 0 || g.BytesA2C <= 0 || g.Connections <= 0 {
		t.Fatalf("gateway deltas %+v", g)
	}
	if res.Totals.Errors != 0 || res.Totals.Succeeded == 0 {
		t.Fatalf("totals %+v", res.Totals)
	}
	// Responses (entries with a 200-byte description) outweigh requests.
	if g.BytesA2C <= g.BytesC2A {
		t.Fatalf("a2c %.0f <= c2a %.0f", g.BytesA2C, g.BytesC2A)
	}
	report, err := os.ReadFile(reportPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		fmt.Sprintf("| bytes c2a (client→agent) | %.0f |", g.BytesC2A),
		fmt.Sprintf("| bytes a2c (agent→client) | %.0f |", g.BytesA2C),
		`direction="c2a"`,
	} {
		if !strings.Contains(string(report), want) {
			t.Fatalf("report lacks %q:\n%s", want, report)
		}
	}
	t.Logf("through the gateway: %.0f ops/s, p99 %s, c2a %.0f B, a2c %.0f B, connections %.0f",
		res.Totals.Rate, fmtDur(res.Latency.P99), g.BytesC2A, g.BytesA2C, g.Connections)
}
