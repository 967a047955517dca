// Command gate is the CI/CD health gate of seed 000 against real processes: it starts a
// seeded slapd, `nowconnect cloud` and `nowconnect premise` (with a freshly generated
// secret and token), runs `nowconnect check` with a hub check (health, readiness, the
// agent of connector addomain) and a pingpong check (an LDAP search through the hub's
// listener; the c2a and a2c byte counters must rise), prints its result on stdout and
// exits with its code: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (4: the gate itself could not
// set up). Progress and, on failure, the processes' logs go to stderr.
//
//	go build -o bin/nowconnect ./cmd/nowconnect && go run ./internal/gate --bin bin/nowconnect
//
// `make gate` (scripts/gate.sh) builds both and runs it.
package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nowconnect/nowconnect/internal/check"
	"github.com/nowconnect/nowconnect/internal/ldapdemo"
)

// exitSetup is the exit code when the gate could not set up its processes.
const exitSetup = 4

// connector is the runbook's connector name (seed 000).
const connector = "addomain"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("gate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	bin := fs.String("bin", "bin/nowconnect", "the nowconnect binary to test")
	format := fs.String("format", "nagios", "output of nowconnect check: nagios, json or table")
	users := fs.Int("users", 50, "users seeded into slapd")
	wait := fs.Duration("wait", 20*time.Second, "how long the agent may take to connect")
	if err := fs.Parse(args); err != nil {
		return exitSetup
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "gate: unexpected arguments %q\n", fs.Args())
		return exitSetup
	}
	g := &gate{bin: *bin, stderr: stderr}
	defer g.close()
	if err := g.setUp(ctx, *users, *wait); err != nil {
		fmt.Fprintf(stderr, "gate: %v\n", err)
		g.dumpLogs()
		return exitSetup
	}
	code, err := g.check(ctx, *format, stdout)
	if err != nil {
		fmt.Fprintf(stderr, "gate: %v\n", err)
		return exitSetup
	}
	if code != 0 {
		g.dumpLogs()
	}
	return code
}

// gate owns everything it started; close stops it all.
type gate struct {
	bin    string
	stderr io.Writer
	dir    string
	slapd  *ldapdemo.Server
	procs  []*proc
	// set by setUp
	control, listen string
}

func (g *gate) logf(format string, args ...any) { fmt.Fprintf(g.stderr, "gate: "+format+"\n", args...) }

func (g *gate) setUp(ctx context.Context, users int, wait time.Duration) error {
	abs, err := filepath.Abs(g.bin)
	if err != nil {
		return err
	}
	if fi, err := os.Stat(abs); err != nil || fi.IsDir() {
		return fmt.Errorf("--bin %s: not a binary (run make build)", g.bin)
	}
	g.bin = abs
	if g.dir, err = os.MkdirTemp("", "nowconnect-gate-*"); err != nil {
		return err
	}
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	slapdDir := filepath.Join(g.dir, "slapd")
	if err := os.Mkdir(slapdDir, 0o700); err != nil {
		return err
	}
	if g.slapd, err = ldapdemo.Start(sctx, ldapdemo.Options{Users: users, Dir: slapdDir}); err != nil {
		return err
	}
	g.logf("slapd on %s, %d users under %s", g.slapd.Addr(), users, ldapdemo.BaseDN)

	// A fresh HS256 secret and an agent token minted from it, as an operator would.
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return err
	}
	secret := filepath.Join(g.dir, "secret")
	if err := os.WriteFile(secret, []byte(base64.StdEncoding.EncodeToString(raw)+"\n"), 0o600); err != nil {
		return err
	}
	tok, err := exec.CommandContext(ctx, g.bin, "token", "--secret-file", secret, "--agent-id", "gate-agent",
		"--connectors", connector, "--ttl", "15m").Output()
	if err != nil {
		return fmt.Errorf("nowconnect token: %w", exitDetail(err))
	}
	tokenFile := filepath.Join(g.dir, "token")
	if err := os.WriteFile(tokenFile, tok, 0o600); err != nil {
		return err
	}

	if g.control, err = freeAddr(); err != nil {
		return err
	}
	if g.listen, err = freeAddr(); err != nil {
		return err
	}
	cfg := filepath.Join(g.dir, "cloud.toml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`# nowconnect cloud, started by the health gate
listen = %q
allow_cidrs = ["127.0.0.0/8"]

[[listeners]]
name = "l1"
bind = %q
connector = %q

[auth]
jwt_secret_file = %q
`, g.control, g.listen, connector, secret)), 0o600); err != nil {
		return err
	}
	if _, err := g.start("cloud", "--config", cfg); err != nil {
		return err
	}
	g.logf("nowconnect cloud: control port %s, listener %s (%s)", g.control, g.listen, connector)
	if _, err := g.start("premise", "--cloud", "ws://"+g.control+"/tunnel", "--agent-id", "gate-agent",
		"--token-file", tokenFile, "--connector", connector+"="+g.slapd.Addr()); err != nil {
		return err
	}
	g.logf("nowconnect premise: %s=%s", connector, g.slapd.Addr())
	if err := g.awaitAgent(ctx, wait); err != nil {
		return err
	}
	g.logf("agent connected")
	return nil
}

// awaitAgent polls the hub's /metrics until connector has an agent.
func (g *gate) awaitAgent(ctx context.Context, wait time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	cl := &http.Client{Timeout: 2 * time.Second}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		for _, p := range g.procs {
			if p.exited() {
				return fmt.Errorf("nowconnect %s exited: %v", p.name, p.err)
			}
		}
		if n, err := agents(cl, g.control); err == nil && n > 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no agent for %s on the hub after %v", connector, wait)
		case <-tick.C:
		}
	}
}

func agents(cl *http.Client, control string) (float64, error) {
	resp, err := cl.Get("http://" + control + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return 0, err
	}
	m, err := check.ParseMetrics(string(body))
	if err != nil {
		return 0, err
	}
	n, _ := m.Value("nowconnect_agents_connected", map[string]string{"connector": connector})
	return n, nil
}

// check writes the gate's check file and runs `nowconnect check` on it.
func (g *gate) check(ctx context.Context, format string, stdout io.Writer) (int, error) {
	doc := fmt.Sprintf(`# The CI/CD health gate of the operational runbook (seed 000).
- name: hub
  type: hub
  url: http://%[1]s
  connectors: [%[3]s]
- name: pingpong %[3]s
  type: pingpong
  hub: http://%[1]s
  connector: %[3]s
  url: ldap://%[2]s
  base: %[4]q
  filter: (objectClass=inetOrgPerson)
`, g.control, g.listen, connector, ldapdemo.BaseDN)
	file := filepath.Join(g.dir, "gate.yaml")
	if err := os.WriteFile(file, []byte(doc), 0o600); err != nil {
		return 0, err
	}
	g.logf("nowconnect check --format %s %s:\n%s", format, file, indent(doc))
	cmd := exec.CommandContext(ctx, g.bin, "check", "--format", format, file)
	cmd.Stdout, cmd.Stderr = stdout, g.stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() >= 0 {
		return ee.ExitCode(), nil
	}
	return 0, err
}

// close stops the agent, the hub and slapd, and removes the gate's files.
func (g *gate) close() {
	for i := len(g.procs) - 1; i >= 0; i-- {
		g.procs[i].stop(10 * time.Second)
	}
	if g.slapd != nil {
		_ = g.slapd.Stop()
	}
	if g.dir != "" {
		_ = os.RemoveAll(g.dir)
	}
}

// dumpLogs prints the tail of each process's log, for a failed gate.
func (g *gate) dumpLogs() {
	for _, p := range g.procs {
		data, _ := os.ReadFile(p.log)
		s := string(data)
		if len(s) > 8<<10 {
			s = "…" + s[len(s)-8<<10:]
		}
		fmt.Fprintf(g.stderr, "gate: log of nowconnect %s:\n%s", p.name, indent(s))
	}
}

// proc is a nowconnect process in its own process group, logging to a file.
type proc struct {
	name string
	log  string
	cmd  *exec.Cmd
	done chan struct{}
	err  error // cmd.Wait's result, read after done
}

func (g *gate) start(sub string, args ...string) (*proc, error) {
	p := &proc{name: sub, log: filepath.Join(g.dir, sub+".log"), done: make(chan struct{})}
	f, err := os.Create(p.log)
	if err != nil {
		return nil, err
	}
	p.cmd = exec.Command(g.bin, append([]string{sub}, args...)...)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	p.cmd.SysProcAttr = procAttr()
	if err := p.cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start nowconnect %s: %w", sub, err)
	}
	g.procs = append(g.procs, p)
	go func() { // waitLoop: ends when the process does, which stop ensures
		p.err = p.cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process group, SIGKILL after grace, and reaps the process.
func (p *proc) stop(grace time.Duration) {
	if !p.exited() {
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
		t := time.NewTimer(grace)
		select {
		case <-p.done:
		case <-t.C:
		}
		t.Stop()
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(l.Addr().(*net.TCPAddr).Port)), nil
}

func exitDetail(err error) error {
	var ee *exec.ExitError
	if errors.As(err, &ee) && len(ee.Stderr) > 0 {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(string(ee.Stderr)))
	}
	return err
}

func indent(s string) string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return ""
	}
	return "    " + strings.ReplaceAll(s, "\n", "\n    ") + "\n"
}
