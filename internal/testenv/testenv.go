// Package testenv starts the real components that NowConnect's tests run against: an
// OpenLDAP slapd seeded with a fixed directory, redis-server, the nowconnect binary
// itself, and arbitrary child processes with captured output.
//
// Every server listens on a random 127.0.0.1 port in its own t.TempDir(); nothing relies
// on a system service. Readiness is always detected by polling with a deadline, never by
// sleeping. Every child process is killed and reaped in t.Cleanup (SIGTERM, up to 5s
// grace, then SIGKILL to its whole process group); on Linux children also get SIGKILL if
// the test binary dies (Pdeathsig), so a timed-out `go test` leaves no strays.
//
// A missing binary (slapd, ldapsearch, ldapadd, redis-server) fails the test with a
// message saying to run `make test`, which installs them (scripts/deps.sh).
//
//	s := testenv.StartSlapd(t, 100)             // s.Addr, s.BaseDN, s.AdminDN, s.AdminPW
//	out := testenv.LDAPSearch(t, s.Addr, s.BaseDN, "(uid=user0001)", "mail")
//	r := testenv.StartRedis(t)                  // r.Addr, r.URL; r.Stop(t); r.Start(t)
//	p := testenv.StartProcess(t, testenv.Binary(t), []string{"up", ...}, nil)
//	p.WaitForOutput(t, "listening", 10*time.Second)
package testenv

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// installHint is appended to every "binary missing" failure.
const installHint = "run `make test` (it installs slapd ldap-utils redis-server)"

// stopGrace is how long a child gets between SIGTERM and SIGKILL in cleanup.
const stopGrace = 5 * time.Second

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago (listen on :0,
// close, return the port). Callers that bind it later must tolerate losing a race for it.
func FreePort(t testing.TB) int {
	t.Helper()
	port, err := freePort()
	if err != nil {
		t.Fatalf("testenv: free port: %v", err)
	}
	return port
}

// FreePorts returns n distinct ports of 127.0.0.1 that were free a moment ago (all
// held open until the last is chosen, so no two are the same), for a test that binds
// several later.
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("testenv: free port: %v", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		return 0, err
	}
	return port, nil
}

// WaitFor polls cond every 10ms (the first time immediately) until it returns true, or
// fails the test with msg once timeout has passed.
func WaitFor(t testing.TB, timeout time.Duration, msg string, cond func() bool) {
	t.Helper()
	if !poll(timeout, cond) {
		t.Fatalf("testenv: timed out after %v: %s", timeout, msg)
	}
}

// poll is WaitFor without the test: it reports whether cond became true in time.
func poll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if cond() {
			return true
		}
		if !time.Now().Before(deadline) {
			return false
		}
		<-tick.C
	}
}

// lookBinary finds a required executable: the first existing absolute candidate, else
// $PATH. It fails the test with the install hint when there is none.
func lookBinary(t testing.TB, name string, candidates ...string) string {
	t.Helper()
	path, err := findBinary(name, candidates...)
	if err != nil {
		t.Fatalf("%s not installed: %s", name, installHint)
	}
	return path
}

func findBinary(name string, candidates ...string) (string, error) {
	for _, c := range candidates {
		if fi, err := os.Stat(c); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return c, nil
		}
	}
	return exec.LookPath(name)
}

// ---------------------------------------------------------------------------------------
// Binary

// The builds of ./cmd/nowconnect, each made once per test process.
var (
	plainBuild = &binaryBuild{name: "nowconnect"}
	faultBuild = &binaryBuild{name: "nowconnect-faults", tags: "nowconnect_faults"}
)

// binaryBuild is one build of ./cmd/nowconnect.
type binaryBuild struct {
	// set at construction
	name string // file name in the per-checkout directory, before the -race/-norace suffix
	tags string // go build -tags; "" for none

	once sync.Once // guards path and err
	path string
	err  error
}

// Binary builds ./cmd/nowconnect once per test process and returns the path of the
// executable. When the tests run with -race the binary is built with -race too, so data
// races inside the real gateway process are reported (the race detector makes it exit 66).
//
// The module root is found by walking up from the working directory to go.mod. The
// binary lives in a fixed per-checkout directory under os.TempDir() (replaced atomically
// by each test process, so parallel packages never see a half-written file and repeated
// runs do not pile up builds).
func Binary(t testing.TB) string {
	t.Helper()
	return plainBuild.get(t)
}

// FaultBinary is Binary built with -tags nowconnect_faults, in its own file next to
// Binary's: a binary that also takes injected faults from outside (on signals, see
// cmd/nowconnect/fault.go). Binary never has them.
func FaultBinary(t testing.TB) string {
	t.Helper()
	return faultBuild.get(t)
}

func (b *binaryBuild) get(t testing.TB) string {
	t.Helper()
	b.once.Do(func() { b.path, b.err = b.build() })
	if b.err != nil {
		t.Fatalf("testenv: building ./cmd/nowconnect (%s): %v", b.name, b.err)
	}
	return b.path
}

// ModuleRoot returns the directory holding go.mod, found by walking up from the working
// directory (a test's working directory is its package directory).
func ModuleRoot(t testing.TB) string {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return root
}

func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if fi, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil && !fi.IsDir() {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod found above the working directory")
		}
		dir = parent
	}
}

func (b *binaryBuild) build() (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	goTool, err := findBinary("go")
	if err != nil {
		return "", fmt.Errorf("go tool not found in PATH: %w", err)
	}
	variant := "norace"
	args := []string{"build"}
	if raceEnabled {
		variant = "race"
		args = append(args, "-race")
	}
	if b.tags != "" {
		args = append(args, "-tags", b.tags)
	}
	sum := sha256.Sum256([]byte(root))
	dir := filepath.Join(os.TempDir(), "nowconnect-testbin-"+hex.EncodeToString(sum[:6]))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	final := filepath.Join(dir, b.name+"-"+variant)
	tmp, err := os.CreateTemp(dir, "build-*.tmp")
	if err != nil {
		return "", err
	}
	tmpName := tmp.Name()
	tmp.Close()
	defer os.Remove(tmpName) // no-op once renamed

	args = append(args, "-o", tmpName, "./cmd/nowconnect")
	cmd := exec.Command(goTool, args...)
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	if err := os.Rename(tmpName, final); err != nil {
		return "", err
	}
	return final, nil
}

// ---------------------------------------------------------------------------------------
// Process

// SyncBuffer is a bytes.Buffer safe for concurrent writers and readers: a
// log sink for servers under test.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Process is a child process whose stdout and stderr are captured together into a
// thread-safe buffer. Create it with StartProcess; all methods are safe for concurrent use.
type Process struct {
	name string
	cmd  *exec.Cmd
	out  *SyncBuffer
	done chan struct{} // closed once the process has exited and been reaped
	err  error         // cmd.Wait's result; read only after done is closed
}

// StartProcess starts name with args; env entries ("K=V") are added to the test's own
// environment (nil inherits it unchanged). The process is in its own process group. A
// cleanup sends SIGTERM, waits up to 5s, then SIGKILLs the group and reaps it; if the test
// failed, the captured output is logged.
func StartProcess(t testing.TB, name string, args []string, env []string) *Process {
	t.Helper()
	p, err := spawn(name, args, env, "")
	if err != nil {
		t.Fatalf("testenv: start %s: %v", name, err)
	}
	t.Cleanup(func() {
		p.stop(stopGrace)
		if t.Failed() {
			t.Logf("testenv: output of %s %s:\n%s", name, strings.Join(args, " "), tail(p.Output(), 16<<10))
		}
	})
	return p
}

// spawn starts a child without registering any cleanup.
func spawn(name string, args, env []string, dir string) (*Process, error) {
	p := &Process{name: name, out: &SyncBuffer{}, done: make(chan struct{})}
	cmd := exec.Command(name, args...)
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.Dir = dir
	cmd.Stdout = p.out
	cmd.Stderr = p.out
	cmd.SysProcAttr = procAttr()
	// If a grandchild keeps the output pipe open after the child exits, stop copying
	// after this long instead of blocking Wait forever.
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p.cmd = cmd
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Output returns everything the process has written to stdout and stderr so far.
func (p *Process) Output() string { return p.out.String() }

// untilExit returns a context that ends after timeout or as soon as the process exits, so
// a readiness probe talking to whoever holds the port does not outlive a dead server.
func (p *Process) untilExit(timeout time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	go func() {
		select {
		case <-p.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// Pid returns the process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed once the process has exited and been reaped.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// WaitForOutput polls the captured output until it contains substr; it fails the test
// (with the output so far) after timeout, or as soon as the process exits without having
// printed substr.
func (p *Process) WaitForOutput(t testing.TB, substr string, timeout time.Duration) {
	t.Helper()
	exited := false
	ok := poll(timeout, func() bool {
		if strings.Contains(p.Output(), substr) {
			return true
		}
		// The output is complete once done is closed: check it one last time.
		if p.Exited() {
			exited = true
			return strings.Contains(p.Output(), substr)
		}
		return false
	})
	switch {
	case ok:
	case exited:
		t.Fatalf("testenv: %s exited (%v) without printing %q; output:\n%s", p.name, p.err, substr, tail(p.Output(), 16<<10))
	default:
		t.Fatalf("testenv: %s did not print %q within %v; output:\n%s", p.name, substr, timeout, tail(p.Output(), 16<<10))
	}
}

// Signal sends sig to the process (not its group). It returns os.ErrProcessDone once the
// process has exited.
func (p *Process) Signal(sig os.Signal) error {
	if p.Exited() {
		return os.ErrProcessDone
	}
	return p.cmd.Process.Signal(sig)
}

// Wait waits up to timeout for the process to exit. On exit it returns the exit code and
// a nil error; if the process was killed by a signal it returns -1 and an error naming
// the signal; on timeout it returns -1 and an error (the process keeps running).
func (p *Process) Wait(timeout time.Duration) (exitCode int, err error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-p.done:
	case <-timer.C:
		return -1, fmt.Errorf("%s (pid %d) still running after %v", p.name, p.Pid(), timeout)
	}
	st := p.cmd.ProcessState
	if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return -1, fmt.Errorf("%s (pid %d) killed by signal %v", p.name, p.Pid(), ws.Signal())
	}
	if p.err != nil && st.ExitCode() < 0 {
		return -1, p.err
	}
	return st.ExitCode(), nil
}

// stop terminates the process: SIGTERM to the group, up to grace for it to exit, then
// SIGKILL to the group; it always reaps the process and SIGKILLs any group members left
// behind. It is idempotent.
func (p *Process) stop(grace time.Duration) {
	if !p.Exited() {
		signalGroup(p.cmd.Process.Pid, syscall.SIGTERM)
		timer := time.NewTimer(grace)
		select {
		case <-p.done:
		case <-timer.C:
		}
		timer.Stop()
	}
	signalGroup(p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

func signalGroup(pid int, sig syscall.Signal) {
	// Negative pid: the whole process group (the child is its leader, see procAttr).
	// ESRCH once everybody is gone is expected.
	_ = syscall.Kill(-pid, sig)
}

// tail returns at most the last n bytes of s.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}
