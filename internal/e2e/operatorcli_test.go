package e2e

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/internal/testenv"
)

// strictJSON parses one log line: exactly one JSON object, no duplicate key in any
// object at any depth (encoding/json keeps the last one silently), nothing after it.
// It returns the top-level keys.
func strictJSON(line []byte) (map[string]bool, error) {
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.UseNumber()
	type frame struct {
		keys    map[string]bool // nil for an array
		wantKey bool            // an object expecting a key (or its end)
	}
	var stack []*frame
	var top map[string]bool
	done := false
	valueDone := func() {
		if n := len(stack); n > 0 && stack[n-1].keys != nil {
			stack[n-1].wantKey = true
		}
	}
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			if !done {
				return nil, errors.New("no complete JSON object")
			}
			return top, nil
		}
		if err != nil {
			return nil, err
		}
		if done {
			return nil, fmt.Errorf("data after the object: %v", tok)
		}
		if len(stack) == 0 && tok != json.Delim('{') {
			return nil, fmt.Errorf("not a JSON object: starts with %v", tok)
		}
		if n := len(stack); n > 0 && stack[n-1].wantKey {
			f := stack[n-1]
			if tok == json.Delim('}') {
				stack = stack[:n-1]
				valueDone()
				done = len(stack) == 0
				continue
			}
			k, ok := tok.(string)
			if !ok {
				return nil, fmt.Errorf("key %v is not a string", tok)
			}
			if f.keys[k] {
				return nil, fmt.Errorf("duplicate key %q", k)
			}
			f.keys[k], f.wantKey = true, false
			continue
		}
		switch tok {
		case json.Delim('{'):
			f := &frame{keys: map[string]bool{}, wantKey: true}
			if len(stack) == 0 {
				top = f.keys
			}
			stack = append(stack, f)
		case json.Delim('['):
			stack = append(stack, &frame{})
		case json.Delim(']'):
			stack = stack[:len(stack)-1]
			valueDone()
		default:
			valueDone()
		}
	}
}

func TestStrictJSON(t *testing.T) {
	for _, tt := range []struct {
		in  string
		err string // "" = valid
	}{
		{`{"time":"t","level":"INFO","msg":"x","n":1,"a":[1,{"b":2}],"o":{"k":null}}`, ""},
		{`{"a":[{"x":1},{"x":2}],"b":{"a":1}}`, ""},
		{`{}`, ""},
		{`{"msg":"agent_dial_failed","reason":"refused","msg":"dial tcp"}`, `duplicate key "msg"`},
		{`{"a":{"b":1,"c":[{"d":1,"d":2}]}}`, `duplicate key "d"`},
		{`{"a":1} {"b":2}`, "data after the object"},
		{`[1,2]`, "not a JSON object"},
		{`"msg"`, "not a JSON object"},
		{`{"a":1`, "no complete JSON object"},
		{``, "no complete JSON object"},
		{`nowconnect cloud: bad`, "invalid character"},
	} {
		_, err := strictJSON([]byte(tt.in))
		switch {
		case tt.err == "" && err != nil:
			t.Errorf("%s: %v", tt.in, err)
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("%s: error %v, want %q", tt.in, err, tt.err)
		}
	}
}

// checkLogLines asserts that every line of a server's stderr is a strict JSON log record
// with time, level and msg (once each); with humanOK, lines that are not JSON at all are
// allowed (a command's error message, a banner), but every line that starts like JSON
// must be a strict record.
func checkLogLines(t *testing.T, name, out string, humanOK bool) (records int) {
	t.Helper()
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if humanOK && !bytes.HasPrefix(bytes.TrimSpace(line), []byte("{")) {
			continue
		}
		keys, err := strictJSON(line)
		if err != nil {
			t.Errorf("%s: log line refused (%v): %s", name, err, line)
			continue
		}
		for _, k := range []string{"time", "level", "msg"} {
			if !keys[k] {
				t.Errorf("%s: log line without %q: %s", name, k, line)
			}
		}
		records++
	}
	return records
}

// deadAddr returns a loopback address that refuses connections for the whole test: a
// socket bound to it but never listening holds the port, so no other server (nor
// testenv.FreePort) can take it meanwhile.
func deadAddr(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
}

// runNC runs the binary to completion and returns its stdout, stderr and exit code.
func runNC(t *testing.T, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(testenv.Binary(t), args...)
	cmd.Env = append(os.Environ(), env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatalf("nowconnect %s: %v", strings.Join(args, " "), err)
	}
	return o.String(), e.String(), code
}

// cliFiles writes a secret, a token for dev-agent-1 and a hub config into dir.
type cliFiles struct {
	dir, secret, token, tokenText string
}

func writeCLIFiles(t *testing.T) cliFiles {
	t.Helper()
	f := cliFiles{dir: t.TempDir()}
	f.secret = filepath.Join(f.dir, "secret")
	if err := os.WriteFile(f.secret, testSecret, 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := runNC(t, nil, "token", "--secret-file", f.secret, "--agent-id", "dev-agent-1", "--connectors", "addomain,dead")
	if code != 0 {
		t.Fatalf("token: exit %d: %s", code, errOut)
	}
	f.tokenText = strings.TrimSpace(out)
	f.token = filepath.Join(f.dir, "token")
	if err := os.WriteFile(f.token, []byte(f.tokenText+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func writeText(t *testing.T, path, body string) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestUsageErrors: every command-line mistake exits 2, names the flag or argument at
// fault, and is printed once; -h exits 0.
func TestUsageErrors(t *testing.T) {
	f := writeCLIFiles(t)
	good := writeText(t, filepath.Join(f.dir, "cloud.toml"), "listen = \"127.0.0.1:1\"\n[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:2\"\nconnector = \"c\"\n[auth]\njwt_secret_file = \"secret\"\n")
	premise := []string{"premise", "--cloud", "ws://127.0.0.1:1/tunnel", "--agent-id", "a", "--token-file", f.token, "--connector", "c=127.0.0.1:2"}
	tests := []struct {
		args []string
		env  []string
		want []string // in stderr
		not  []string // not in stderr
	}{
		{args: []string{"bogus"}, want: []string{`unknown command "bogus"`}},
		{args: []string{"cloud", "--bogus"}, want: []string{"flag provided but not defined: -bogus", "usage: nowconnect cloud"}},
		{args: []string{"cloud"}, env: []string{"NC_CONFIG="}, want: []string{"--config FILE", "NC_CONFIG"}},
		{args: []string{"cloud", "--config", good, "extra", "args"}, want: []string{`unexpected arguments "extra" "args"`}},
		{args: []string{"cloud", "--config", good, "--log-level", "loud"}, want: []string{`--log-level "loud"`}},
		{args: []string{"cloud", "--config", good, "--check-config", "--log-level", "loud"}, want: []string{`--log-level "loud"`}},
		{args: append(premise[:2:2], "http://hub/tunnel", "--agent-id", "a", "--token-file", f.token, "--connector", "c=127.0.0.1:2"),
			want: []string{`--cloud: "http://hub/tunnel": scheme must be ws:// or wss://`}, not: []string{"NC_CLOUD_URL:", "required"}},
		{args: []string{"premise", "--cloud", "ws://127.0.0.1:1/tunnel", "--agent-id", "a b", "--token-file", f.token, "--connector", "c=127.0.0.1:2"},
			want: []string{`--agent-id: "a b" contains spaces`}, not: []string{"agent_id:"}},
		{args: []string{"premise", "--cloud", "ws://127.0.0.1:1/tunnel", "--agent-id", "a", "--token-file", f.token, "--connector", "c"},
			want: []string{`--connector: bad entry "c"`}, not: []string{"NC_CONNECTORS:"}},
		{args: []string{"premise", "--cloud", "ws://127.0.0.1:1/tunnel", "--agent-id", "a", "--token-file", "/nonexistent/token", "--connector", "c=h:1"},
			want: []string{"--token-file: file not found: /nonexistent/token"}, not: []string{"NC_TOKEN_FILE:", "required"}},
		{args: []string{"premise"}, env: []string{"NC_CLOUD_URL=", "NC_AGENT_ID=", "NC_TOKEN=", "NC_TOKEN_FILE=", "NC_CONNECTORS="},
			want: []string{"--cloud: required", "--agent-id: required", "--token-file: required", "--connector: required"}},
		{args: append(append([]string{}, premise...), "--log-level", "loud"), want: []string{`--log-level "loud"`}},
		{args: append(append([]string{}, premise...), "--metrics-listen", "nope"), want: []string{`--metrics-listen "nope"`}},
		{args: append(append([]string{}, premise...), "stray"), want: []string{`unexpected arguments "stray"`}},
		{args: []string{"up"}, want: []string{"--forward LISTEN_ADDR=TARGET_ADDR is required"}},
		{args: []string{"up", "--forward", "127.0.0.1:1"}, want: []string{`--forward "127.0.0.1:1"`}},
		{args: []string{"up", "--forward", "127.0.0.1:1=nope"}, want: []string{`"nope" is not HOST:PORT`}},
		{args: []string{"up", "--control", "nope", "--forward", "127.0.0.1:1=127.0.0.1:2"}, want: []string{`--control "nope"`}},
		{args: []string{"up", "--window", "0", "--forward", "127.0.0.1:1=127.0.0.1:2"}, want: []string{"--window 0"}},
		{args: []string{"up", "--forward", "127.0.0.1:1=127.0.0.1:2", "more"}, want: []string{`unexpected arguments "more"`}},
		{args: []string{"up", "--bogus"}, want: []string{"flag provided but not defined: -bogus"}},
		{args: []string{"token"}, want: []string{"--secret-file and --agent-id are required"}},
		{args: []string{"token", "--secret-file", f.secret}, want: []string{"--agent-id is required"}},
		{args: []string{"token", "--secret-file", f.secret, "--agent-id", "a", "--ttl", "-1h"}, want: []string{"--ttl -1h0m0s: must be greater than 0", "--no-expiry"}},
		{args: []string{"token", "--secret-file", f.secret, "--agent-id", "a", "--ttl", "0"}, want: []string{"--ttl 0s: must be greater than 0"}},
		{args: []string{"token", "--secret-file", f.secret, "--agent-id", "a", "--ttl", "1h", "--no-expiry"}, want: []string{"--ttl and --no-expiry exclude each other"}},
		{args: []string{"token", "--secret-file", f.secret, "--agent-id", "a", "x"}, want: []string{`unexpected arguments "x"`}},
		{args: []string{"token", "--ttl", "soon"}, want: []string{`invalid value "soon" for flag -ttl`}},
		{args: []string{"demo", "--port", "70000"}, want: []string{"--port 70000"}},
		{args: []string{"demo", "now"}, want: []string{`unexpected arguments "now"`}},
		{args: []string{"loadtest", "ldap", "--bogus"}, want: []string{"flag provided but not defined: -bogus"}},
	}
	for _, tt := range tests {
		name := strings.Join(tt.args, " ")
		stdout, stderr, code := runNC(t, tt.env, tt.args...)
		if code != 2 {
			t.Errorf("%s: exit %d, want 2\n%s", name, code, stderr)
			continue
		}
		if stdout != "" {
			t.Errorf("%s: stdout %q, want nothing", name, stdout)
		}
		for _, w := range tt.want {
			if !strings.Contains(stderr, w) {
				t.Errorf("%s: stderr lacks %q:\n%s", name, w, stderr)
			}
		}
		for _, n := range tt.not {
			if strings.Contains(stderr, n) {
				t.Errorf("%s: stderr has %q:\n%s", name, n, stderr)
			}
		}
		// Printed once: the first line of the error does not come back.
		first := strings.SplitN(strings.TrimSpace(stderr), "\n", 2)[0]
		if strings.Count(stderr, first) != 1 {
			t.Errorf("%s: error printed %d times:\n%s", name, strings.Count(stderr, first), stderr)
		}
	}
	for _, args := range [][]string{{"cloud", "-h"}, {"premise", "--help"}, {"up", "-h"}, {"token", "-h"}, {"demo", "-h"}, {"help"}} {
		if _, stderr, code := runNC(t, nil, args...); code != 0 {
			t.Errorf("%s: exit %d, want 0\n%s", strings.Join(args, " "), code, stderr)
		}
	}
}

// jwtClaims decodes a token's payload without verifying it.
func jwtClaims(t *testing.T, tok string) map[string]any {
	t.Helper()
	parts := strings.Split(strings.TrimSpace(tok), ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWT: %q", tok)
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestTokenLifetime: --ttl sets exp, the default is one hour, and only --no-expiry mints
// a token without exp.
func TestTokenLifetime(t *testing.T) {
	f := writeCLIFiles(t)
	for _, tt := range []struct {
		args []string
		ttl  float64 // 0: no exp claim
	}{
		{nil, 3600},
		{[]string{"--ttl", "10m"}, 600},
		{[]string{"--no-expiry"}, 0},
	} {
		stdout, stderr, code := runNC(t, nil, append([]string{"token", "--secret-file", f.secret, "--agent-id", "a"}, tt.args...)...)
		if code != 0 || stderr != "" {
			t.Fatalf("token %v: exit %d: %s", tt.args, code, stderr)
		}
		c := jwtClaims(t, stdout)
		exp, hasExp := c["exp"].(float64)
		iat, _ := c["iat"].(float64)
		switch {
		case tt.ttl == 0 && hasExp:
			t.Errorf("token %v: exp %v, want none", tt.args, exp)
		case tt.ttl != 0 && (!hasExp || exp-iat != tt.ttl):
			t.Errorf("token %v: exp-iat = %v, want %v", tt.args, exp-iat, tt.ttl)
		}
	}
}

// holdPorts listens on n free loopback ports until the test ends and returns them: a
// command that tried to bind them would fail.
func holdPorts(t *testing.T, n int) []string {
	t.Helper()
	var addrs []string
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		addrs = append(addrs, l.Addr().String())
	}
	return addrs
}

// TestCheckConfig: cloud and premise --check-config validate on the loading path of a
// start (files, keys, secrets, key material) and exit 0 with "configuration OK: FILE"
// or 1 with every error, binding and dialing nothing.
func TestCheckConfig(t *testing.T) {
	f := writeCLIFiles(t)
	held := holdPorts(t, 3) // the control port and two listeners: taken, so a bind fails
	cfg := func(auth string) string {
		return fmt.Sprintf("listen = %q\n\n[[listeners]]\nname = \"l1\"\nbind = %q\nconnector = \"addomain\"\n\n[[listeners]]\nname = \"l2\"\nbind = %q\nconnector = \"dead\"\n\n[auth]\n%s\n",
			held[0], held[1], held[2], auth)
	}
	// Relative to the config file: "secret" is f.secret, run from elsewhere.
	good := writeText(t, filepath.Join(f.dir, "cloud.toml"), cfg(`jwt_secret_file = "secret"`))
	stdout, stderr, code := runNC(t, nil, "cloud", "--check-config", "--config", good)
	if code != 0 || stderr != "configuration OK: "+good+"\n" || stdout != "" {
		t.Fatalf("cloud --check-config on a good config: exit %d\nstdout %q\nstderr %q", code, stdout, stderr)
	}
	if _, stderr, code := runNC(t, []string{"NC_CONFIG=" + good}, "cloud", "--check-config"); code != 0 || !strings.Contains(stderr, "configuration OK") {
		t.Fatalf("NC_CONFIG --check-config: exit %d: %s", code, stderr)
	}
	// The same file really starts: the check did not pass what a start would refuse
	// (here: the ports are held, so the start fails on the bind the check skipped).
	// A bind failure names the address, what it is for and where the file sets it.
	want := fmt.Sprintf("nowconnect cloud: %s:1:1: listen: control port (listen %s): ", good, held[0])
	if _, stderr, code := runNC(t, nil, "cloud", "--config", good); code != 1 || !strings.Contains(stderr, want) ||
		!strings.Contains(stderr, "address already in use") {
		t.Fatalf("start on held ports: exit %d: %s\nwant %q", code, stderr, want)
	}
	free := testenv.FreePorts(t, 2)
	onlyL2 := writeText(t, filepath.Join(f.dir, "l2.toml"), fmt.Sprintf(
		"listen = \"127.0.0.1:%d\"\n\n[[listeners]]\nname = \"l1\"\nbind = \"127.0.0.1:%d\"\nconnector = \"addomain\"\n\n[[listeners]]\nname = \"l2\"\nbind = %q\nconnector = \"dead\"\n\n[auth]\njwt_secret_file = \"secret\"\n",
		free[0], free[1], held[2]))
	want = fmt.Sprintf("nowconnect cloud: %s:10:1: listeners[1].bind: listener l2 (bind %s): ", onlyL2, held[2])
	if _, stderr, code := runNC(t, nil, "cloud", "--config", onlyL2); code != 1 || !strings.Contains(stderr, want) {
		t.Fatalf("start with listener l2's port held: exit %d: %s\nwant %q", code, stderr, want)
	}

	short := writeText(t, filepath.Join(f.dir, "short"), "tooshort\n")
	garbage := writeText(t, filepath.Join(f.dir, "keys", "bad.pub"), "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
	for _, tt := range []struct {
		name, body string
		want       []string
	}{
		{"unknown key and missing file", "listners = []\n" + cfg(`jwt_secret_file = "missing"`),
			[]string{"cloud.toml:1:1: listners: unknown key", "auth.jwt_secret_file: file not found: " + filepath.Join(f.dir, "missing")}},
		{"short secret", cfg(fmt.Sprintf("jwt_secret_file = %q", short)), []string{"secret is 8 bytes; need at least 32"}},
		{"bad public key", cfg(`public_key_files = ["keys/bad.pub"]`), []string{"public key file " + garbage}},
		{"no key source", cfg(""), []string{"no key source for agent tokens"}},
		{"wildcard overlap", cfg(`jwt_secret_file = "secret"`) + "[ha.mesh]\nlisten = \"0.0.0.0:" + strings.Split(held[1], ":")[1] + "\"\n",
			[]string{"ha.mesh.listen:", "overlaps listeners[0].bind"}},
	} {
		bad := writeText(t, filepath.Join(f.dir, "cloud.toml"), tt.body)
		stdout, stderr, code := runNC(t, nil, "cloud", "--check-config", "--config", bad)
		if code != 1 || stdout != "" {
			t.Errorf("%s: exit %d, want 1\n%s", tt.name, code, stderr)
		}
		for _, w := range append(tt.want, "configuration invalid: "+bad) {
			if !strings.Contains(stderr, w) {
				t.Errorf("%s: stderr lacks %q:\n%s", tt.name, w, stderr)
			}
		}
	}

	// premise: a config file with a relative token file; the hub it names is not there
	// (the check connects to nothing).
	pfile := writeText(t, filepath.Join(f.dir, "agent", "premise.toml"),
		fmt.Sprintf("cloud_url = \"ws://%s/tunnel\"\nagent_id = \"dev-agent-1\"\ntoken_file = \"../token\"\n[[connectors]]\nname = \"addomain\"\ntarget = \"127.0.0.1:1\"\n", held[0]))
	if stdout, stderr, code := runNC(t, nil, "premise", "--check-config", "--config", pfile); code != 0 || stderr != "configuration OK: "+pfile+"\n" || stdout != "" {
		t.Fatalf("premise --check-config: exit %d\n%s", code, stderr)
	}
	env := []string{"NC_CLOUD_URL=ws://" + held[0] + "/tunnel", "NC_AGENT_ID=dev-agent-1", "NC_TOKEN_FILE=" + f.token, "NC_CONNECTORS=addomain=127.0.0.1:1"}
	if _, stderr, code := runNC(t, env, "premise", "--check-config"); code != 0 || stderr != "configuration OK: flags and environment\n" {
		t.Fatalf("premise --check-config from the environment: exit %d\n%s", code, stderr)
	}
	if _, stderr, code := runNC(t, env, "premise", "--check-config", "--ca-file", garbage); code != 1 || !strings.Contains(stderr, "no PEM certificates") || !strings.Contains(stderr, "configuration invalid") {
		t.Fatalf("premise --check-config with a bad CA file: exit %d\n%s", code, stderr)
	}
	if _, stderr, code := runNC(t, env, "premise", "--check-config", "--cloud", "http://x"); code != 2 || !strings.Contains(stderr, "--cloud:") || !strings.Contains(stderr, "configuration invalid") {
		t.Fatalf("premise --check-config with a bad flag: exit %d\n%s", code, stderr)
	}
	bad := writeText(t, filepath.Join(f.dir, "agent", "bad.toml"), "cloud_url = \"ws://h/tunnel\"\nagentid = \"x\"\n")
	if _, stderr, code := runNC(t, nil, "premise", "--check-config", "--config", bad); code != 1 || !strings.Contains(stderr, "bad.toml:2:1: agentid: unknown key") {
		t.Fatalf("premise --check-config on a bad file: exit %d\n%s", code, stderr)
	}
}

// TestLogsAreStrictJSON runs the real processes (cloud, premise, up, and agents that are
// refused or find no hub), drives the events that log (connections, a refused target,
// a blocked client, a bad token, shutdown) and parses every stderr line with a parser
// that refuses duplicate keys. The commands that only print (token, --check-config,
// error paths) may print human lines, but nothing that looks like a broken record.
func TestLogsAreStrictJSON(t *testing.T) {
	bin := testenv.Binary(t)
	f := writeCLIFiles(t)
	ldap := testenv.StartSlapd(t, 5)
	dead := deadAddr(t)
	port := func() string { return fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)) }
	control, ldapL, deadL, blockedL := port(), port(), port(), port()
	cfg := writeText(t, filepath.Join(f.dir, "cloud.toml"), fmt.Sprintf(`listen = %q

[[listeners]]
name = "l1"
bind = %q
connector = "addomain"

[[listeners]]
name = "dead"
bind = %q
connector = "dead"

[[listeners]]
name = "blocked"
bind = %q
connector = "addomain"
allow_cidrs = ["10.0.0.0/8"]

[auth]
jwt_secret_file = "secret"

[log]
level = "warn"
`, control, ldapL, deadL, blockedL))
	// --log-level overrides log.level: debug records appear.
	cloud := testenv.StartProcess(t, bin, []string{"cloud", "--config", cfg, "--log-level", "debug"}, nil)
	cloud.WaitForOutput(t, `"msg":"listener_started"`, 10*time.Second)
	premise := testenv.StartProcess(t, bin, []string{"premise", "--cloud", "ws://" + control + "/tunnel", "--agent-id", "dev-agent-1",
		"--token-file", f.token, "--connector", "addomain=" + ldap.Addr, "--connector", "dead=" + dead, "--log-level", "debug"}, nil)
	cloud.WaitForOutput(t, `"msg":"agent_connected"`, 10*time.Second)

	// An agent with a token of another secret (401), and one with no hub at all.
	other := writeText(t, filepath.Join(f.dir, "other-secret"), "another-secret-0123456789abcdefgh")
	otherTok, stderr, code := runNC(t, nil, "token", "--secret-file", other, "--agent-id", "dev-agent-2", "--ttl", "5m")
	if code != 0 {
		t.Fatalf("token: %s", stderr)
	}
	refused := testenv.StartProcess(t, bin, []string{"premise", "--connector", "addomain=" + ldap.Addr}, []string{
		"NC_CLOUD_URL=ws://" + control + "/tunnel", "NC_AGENT_ID=dev-agent-2", "NC_TOKEN=" + strings.TrimSpace(otherTok)})
	lonely := testenv.StartProcess(t, bin, []string{"premise", "--cloud", "ws://" + dead + "/tunnel", "--agent-id", "dev-agent-3",
		"--token-file", f.token, "--connector", "addomain=" + ldap.Addr}, nil)
	upControl, upL, upDeadL := port(), port(), port()
	up := testenv.StartProcess(t, bin, []string{"up", "--control", upControl, "--forward", upL + "=" + ldap.Addr,
		"--forward", upDeadL + "=" + dead, "--log-level", "debug"}, nil)
	up.WaitForOutput(t, `"msg":"agent_connected"`, 10*time.Second)

	// Traffic: a search through each gateway, a target that refuses, a blocked client.
	for _, addr := range []string{ldapL, upL} {
		if out := testenv.LDAPSearch(t, addr, ldap.BaseDN, "(uid=user0001)", "mail"); !strings.Contains(out, "user0001@example.org") {
			t.Fatalf("search through %s: %s", addr, out)
		}
	}
	for _, addr := range []string{deadL, upDeadL, blockedL} {
		if c, err := net.Dial("tcp", addr); err == nil {
			closedAtOnce(c)
			c.Close()
		}
	}
	cloud.WaitForOutput(t, `"msg":"agent_dial_failed"`, 10*time.Second)
	cloud.WaitForOutput(t, `"msg":"cidr_blocked"`, 10*time.Second)
	cloud.WaitForOutput(t, `"msg":"agent_auth_failed"`, 10*time.Second)
	up.WaitForOutput(t, `"msg":"agent_dial_failed"`, 10*time.Second)
	refused.WaitForOutput(t, `"msg":"tunnel refused by hub"`, 10*time.Second)
	lonely.WaitForOutput(t, `"msg":"tunnel dial failed"`, 10*time.Second)

	servers := map[string]*testenv.Process{"cloud": cloud, "premise": premise, "refused premise": refused, "lonely premise": lonely, "up": up}
	for name, p := range servers {
		if err := p.Signal(syscall.SIGTERM); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	for name, p := range servers {
		if code, err := p.Wait(30 * time.Second); err != nil || code != 0 {
			t.Errorf("%s: exit %d, %v", name, code, err)
		}
	}
	for name, p := range servers {
		if n := checkLogLines(t, name, p.Output(), false); n == 0 {
			t.Errorf("%s logged nothing", name)
		}
	}
	if !strings.Contains(cloud.Output(), `"level":"DEBUG"`) {
		t.Error("cloud --log-level debug logged no debug record")
	}
	for _, ev := range []string{"target_unreachable", "demo_directory_started"} {
		if got := strings.Contains(up.Output(), `"msg":"`+ev+`"`); got != (ev == "target_unreachable") {
			t.Errorf("up: %s logged: %v", ev, got)
		}
	}

	// Commands that print rather than log, and error paths of the servers.
	for _, args := range [][]string{
		{"token", "--secret-file", f.secret, "--agent-id", "a"},
		{"cloud", "--check-config", "--config", cfg},
		{"cloud", "--config", filepath.Join(f.dir, "missing.toml")},
		{"cloud", "--config", cfg, "--bogus"},
		{"premise", "--check-config", "--cloud", "ws://h/tunnel", "--agent-id", "a", "--token-file", f.token, "--connector", "c=h:1"},
		{"premise", "--cloud", "http://h"},
		{"up", "--forward", "x"},
		{"token", "--ttl", "-1s"},
	} {
		_, stderr, _ := runNC(t, nil, args...)
		checkLogLines(t, strings.Join(args, " "), stderr, true)
	}
	// A hub whose ports are taken logs its start-up, then fails with one human line.
	taken := holdPorts(t, 1)[0]
	busy := writeText(t, filepath.Join(f.dir, "busy.toml"), fmt.Sprintf("listen = %q\n[[listeners]]\nname = \"l\"\nbind = %q\nconnector = \"c\"\n[auth]\njwt_secret_file = \"secret\"\n", port(), taken))
	_, stderr, code = runNC(t, nil, "cloud", "--config", busy, "--log-level", "debug")
	if code != 1 {
		t.Errorf("cloud on a taken port: exit %d\n%s", code, stderr)
	}
	checkLogLines(t, "cloud on a taken port", stderr, true)
}
