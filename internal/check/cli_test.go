package check

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/internal/testenv"
)

// nowconnect runs `nowconnect check args...` (the real binary) and returns its stdout,
// stderr and exit code.
func nowconnect(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(testenv.Binary(t), append([]string{"check"}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

// perfdataRE is a run of Nagios perfdata: 'label'=value[UOM];warn;crit;min;max.
var perfdataRE = regexp.MustCompile(`^('[^']+'=-?[0-9.]+(s|B)?(;[0-9.:]*){0,4})( '[^']+'=-?[0-9.]+(s|B)?(;[0-9.:]*){0,4})*$`)

// TestCLIMixedFile: a file mixing every outcome gives the exact Nagios first line and
// exit code, JSON that parses, a table, and no secret anywhere.
func TestCLIMixedFile(t *testing.T) {
	s := testenv.StartSlapd(t, 5)
	redis := startRedisPW(t, "mixed-redis-pw")
	ca := newCA(t)
	soon := serveTLS(t, ca.leaf(t, "soon", time.Now().Add(20*24*time.Hour)))
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "up") }))
	defer web.Close()
	host, port, _ := net.SplitHostPort(s.Addr)
	file := writeFile(t, "mixed.yaml", fmt.Sprintf(`
- {type: tcp, host: %[1]s, port: %[2]s}
- {type: ldap, url: "%[3]s", bind_dn: "%[4]s", password: "%[5]s", base: "%[6]s"}
- {type: redis, host: 127.0.0.1, port: %[7]d, password: mixed-redis-pw}
- {type: http, url: "%[8]s/"}
- {type: tls, host: 127.0.0.1, port: %[9]d, ca_file: %[10]s}
- {type: tcp, name: closed port, host: 127.0.0.1, port: %[11]d, timeout: 3s}
- {type: amqp, host: localhost, port: 5672, username: guest, password: amqp-pw}
`, host, port, s.URL, s.AdminDN, s.AdminPW, s.BaseDN, redis, web.URL, soon, ca.pemFile, closedPort(t)))

	out, errOut, code := nowconnect(t, file)
	if code != 2 || errOut != "" {
		t.Fatalf("exit %d (want 2), stderr %q\n%s", code, errOut, out)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	head, perf, ok := strings.Cut(lines[0], " | ")
	if want := "NOWCONNECT CHECK CRITICAL - 7 checks: 4 OK, 1 WARNING, 1 CRITICAL, 1 UNKNOWN"; head != want || !ok {
		t.Fatalf("first line %q, want %q + perfdata", lines[0], want)
	}
	if !perfdataRE.MatchString(perf) || strings.Count(perf, "'=") != 9 { // 6 times, entries, days, size
		t.Errorf("perfdata %q", perf)
	}
	wantLines := []string{"CRITICAL closed port: connect: connection refused", "WARNING tls 127.0.0.1:", "UNKNOWN amqp localhost:5672: amqp checks are not supported",
		"OK tcp " + s.Addr + ": connected", "OK ldap " + s.URL + ": rootDSE", "OK redis 127.0.0.1:", "OK http " + web.URL + "/: status 200 OK"}
	if len(lines) != 8 {
		t.Fatalf("%d lines, want 8:\n%s", len(lines), out)
	}
	for i, w := range wantLines {
		if !strings.HasPrefix(lines[i+1], w) {
			t.Errorf("line %d %q, want it to start with %q", i+2, lines[i+1], w)
		}
	}

	jout, _, jcode := nowconnect(t, "--format", "json", file)
	var rep struct {
		Status   string `json:"status"`
		ExitCode int    `json:"exit_code"`
		Checks   []struct {
			Name, Type, Status, Detail string
			DurationSeconds            *float64 `json:"duration_seconds"`
			Perfdata                   []map[string]any
		} `json:"checks"`
	}
	if err := json.Unmarshal([]byte(jout), &rep); err != nil {
		t.Fatalf("JSON: %v\n%s", err, jout)
	}
	if jcode != 2 || rep.Status != "CRITICAL" || rep.ExitCode != 2 || len(rep.Checks) != 7 {
		t.Fatalf("JSON report: exit %d %+v", jcode, rep)
	}
	for i, c := range rep.Checks {
		if c.Name == "" || c.Type == "" || c.Status == "" || c.Detail == "" || c.DurationSeconds == nil || c.Perfdata == nil {
			t.Errorf("JSON check %d lacks a field: %+v", i, c)
		}
	}
	if rep.Checks[0].Type != "tcp" || rep.Checks[4].Status != "WARNING" || rep.Checks[4].Perfdata[1]["warn"] != "30:" {
		t.Errorf("JSON checks not in file order or perfdata wrong: %+v", rep.Checks)
	}

	tout, _, tcode := nowconnect(t, "--format", "table", "--concurrency", "2", file)
	if tcode != 2 || !strings.HasPrefix(tout, "STATUS") || !strings.Contains(tout, "CRITICAL: 7 checks: 4 OK, 1 WARNING, 1 CRITICAL, 1 UNKNOWN") {
		t.Errorf("table (exit %d):\n%s", tcode, tout)
	}
	for _, o := range []string{out, jout, tout} {
		for _, sec := range []string{"mixed-redis-pw", "amqp-pw"} {
			if strings.Contains(o, sec) {
				t.Errorf("output holds secret %q:\n%s", sec, o)
			}
		}
	}

	// Exit codes 0, 1 and 3, and tags.
	okFile := writeFile(t, "ok.yaml", fmt.Sprintf("- {type: tcp, host: %s, port: %s, tags: [ldap]}\n- {type: tcp, name: gone, host: 127.0.0.1, port: %d, tags: [old]}\n", host, port, closedPort(t)))
	if out, _, code := nowconnect(t, "--exclude-tags", "old", okFile); code != 0 || !strings.HasPrefix(out, "NOWCONNECT CHECK OK - 1 checks: 1 OK, 0 WARNING, 0 CRITICAL, 0 UNKNOWN | ") {
		t.Errorf("exit %d:\n%s", code, out)
	}
	if _, _, code := nowconnect(t, "--include-tags", "old,other", okFile); code != 2 {
		t.Errorf("--include-tags old: exit %d, want 2", code)
	}
	warn := writeFile(t, "warn.yaml", fmt.Sprintf("- {type: tls, host: 127.0.0.1, port: %d, ca_file: %s}\n", soon, ca.pemFile))
	if out, _, code := nowconnect(t, warn); code != 1 || !strings.HasPrefix(out, "NOWCONNECT CHECK WARNING - 1 checks: 0 OK, 1 WARNING, 0 CRITICAL, 0 UNKNOWN | ") {
		t.Errorf("exit %d:\n%s", code, out)
	}
	unknown := writeFile(t, "unknown.yaml", fmt.Sprintf("- {type: memcache, host: 127.0.0.1, port: 11211}\n- {type: tcp, host: %s, port: %s}\n", host, port))
	if out, _, code := nowconnect(t, unknown); code != 3 || !strings.HasPrefix(out, "NOWCONNECT CHECK UNKNOWN - 2 checks: 1 OK, 0 WARNING, 0 CRITICAL, 1 UNKNOWN | ") {
		t.Errorf("exit %d:\n%s", code, out)
	}
}

// TestCLIConnCheckFile: a conn-check file, as conn-check's README writes one, runs.
func TestCLIConnCheckFile(t *testing.T) {
	s := testenv.StartSlapd(t, 0)
	redis := startRedisPW(t, "foobar")
	ca := newCA(t)
	tlsPort := serveTLS(t, ca.leaf(t, "svc", time.Now().Add(300*24*time.Hour)))
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Probe") != "conn-check" {
			w.WriteHeader(400)
		}
	}))
	defer web.Close()
	_, port, _ := net.SplitHostPort(s.Addr)
	file := writeFile(t, "conn-check.yaml", fmt.Sprintf(`- type: tcp
  host: 127.0.0.1
  port: %s
  timeout: 5
- type: tls
  host: 127.0.0.1
  port: %d
  disable_tls_verification: true
- type: http
  url: %s/health
  method: GET
  expected_code: 200
  headers:
    X-Probe: conn-check
- type: redis
  host: 127.0.0.1
  port: %d
  password: foobar
- type: postgres
  host: 127.0.0.1
  port: 5432
  username: foo
  password: bar
  database: all
`, port, tlsPort, web.URL, redis))
	out, _, code := nowconnect(t, file)
	if code != 3 || !strings.HasPrefix(out, "NOWCONNECT CHECK UNKNOWN - 5 checks: 4 OK, 0 WARNING, 0 CRITICAL, 1 UNKNOWN | ") {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	if !strings.Contains(out, "UNKNOWN postgres 127.0.0.1:5432: postgres checks are not supported") || strings.Contains(out, "foobar") {
		t.Errorf("output:\n%s", out)
	}
}

// TestCLIBadInput: bad files and flags exit 3 and name file, line and key; nothing runs.
func TestCLIBadInput(t *testing.T) {
	bad := writeFile(t, "bad.yaml", "- type: tcp\n  host: 127.0.0.1\n  port: 1\n- type: ldap\n  url: ldap://127.0.0.1\n  bind_dn: cn=x\n  password: leaky-pw\n  pasword_file: /x\n")
	out, errOut, code := nowconnect(t, bad)
	want := bad + ":8:3: checks[1].pasword_file: unknown key (did you mean password_file?)"
	if code != 3 || !strings.HasPrefix(out, "NOWCONNECT CHECK UNKNOWN - "+want) || !strings.Contains(errOut, want) {
		t.Errorf("exit %d\nstdout %s\nstderr %s", code, out, errOut)
	}
	jout, _, code := nowconnect(t, "--format", "json", bad)
	var rep struct {
		Status   string
		ExitCode int `json:"exit_code"`
		Errors   []string
	}
	if err := json.Unmarshal([]byte(jout), &rep); err != nil || code != 3 || rep.Status != "UNKNOWN" || rep.ExitCode != 3 || len(rep.Errors) != 1 || !strings.HasPrefix(rep.Errors[0], want) {
		t.Errorf("json: exit %d, %v, %+v", code, err, rep)
	}
	badHub := writeFile(t, "cloud.toml", "listen = \"127.0.0.1:8765\"\n[ha]\nenabled = true\nreplica_id = \"a\"\nredis_url = \"http://u:toml-secret@redis:6379\"\n")
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"/nonexistent/checks.yaml"}, "/nonexistent/checks.yaml: check file not found"},
		{[]string{"--format", "xml", bad}, `--format "xml": want nagios, json or table`},
		{[]string{"--concurrency", "0", bad}, "--concurrency 0: must be at least 1"},
		{[]string{"--timeout", "-1s", bad}, "--timeout -1s: must be positive"},
		{[]string{"--print", bad}, "--print writes the checks generated by --from-config"},
		{[]string{"--from-config", badHub, "--print", "--format", "json"}, "--print runs nothing: --format would be ignored"},
		{[]string{"--from-config", badHub}, badHub + ":5:1: ha.redis_url:"},
		{[]string{"--bogus"}, "flag provided but not defined: -bogus"},
		{nil, "usage: nowconnect check"},
	}
	for _, tc := range cases {
		out, errOut, code := nowconnect(t, tc.args...)
		if code != 3 || !strings.Contains(errOut, tc.want) {
			t.Errorf("%q: exit %d, stderr %q, want %q", tc.args, code, errOut, tc.want)
		}
		if strings.Contains(out+errOut, "toml-secret") || strings.Contains(out+errOut, "leaky-pw") {
			t.Errorf("%q: a secret in the output:\n%s%s", tc.args, out, errOut)
		}
	}
}

// TestCLIFromConfig: --from-config against a running hub, and --print.
func TestCLIFromConfig(t *testing.T) {
	g := startGateway(t)
	out, errOut, code := nowconnect(t, "--from-config", g.config)
	if code != 0 || !strings.HasPrefix(out, "NOWCONNECT CHECK OK - 2 checks: 2 OK, 0 WARNING, 0 CRITICAL, 0 UNKNOWN | ") {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
	printed, _, code := nowconnect(t, "--from-config", g.config, "--print")
	file := writeFile(t, "generated.yaml", printed)
	if out, _, c := nowconnect(t, file); code != 0 || c != 0 || !strings.Contains(out, "OK hub 127.0.0.1:") {
		t.Fatalf("printed file (exit %d) runs with exit %d:\n%s\n%s", code, c, printed, out)
	}
}
