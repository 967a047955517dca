package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/internal/testenv"
)

// makeRunBuildTimeout covers `make run`'s go build on a cold cache.
const makeRunBuildTimeout = 5 * time.Minute

// startMakeRun runs `make run` with vars in its own process group, with a marker in its
// environment that every process it starts inherits (see leftovers).
func startMakeRun(t *testing.T, vars ...string) (p *testenv.Process, marker string) {
	t.Helper()
	if _, err := exec.LookPath("make"); err != nil {
		t.Fatal("make not installed")
	}
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	marker = "NC_MAKE_RUN_TEST=" + hex.EncodeToString(b)
	args := append([]string{"-C", testenv.ModuleRoot(t), "--no-print-directory", "run"}, vars...)
	p = testenv.StartProcess(t, "make", args, []string{marker})
	t.Cleanup(func() { // after the process cleanup: anything left is killed, then reported
		for _, pid := range leftovers(marker) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	return p, marker
}

// leftovers lists the processes whose environment holds marker (everything `make run`
// started inherits it, slapd included), but for this test process.
func leftovers(marker string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil {
			continue // gone, or not ours to read
		}
		for _, kv := range strings.Split(string(env), "\x00") {
			if kv == marker {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

func describePids(pids []int) string {
	var b strings.Builder
	for _, pid := range pids {
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		fmt.Fprintf(&b, "\n  %d %s", pid, strings.ReplaceAll(string(cmd), "\x00", " "))
	}
	return b.String()
}

// bannerLine returns the value of the banner's line "  label:  value".
func bannerLine(t *testing.T, out, label string) string {
	t.Helper()
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), label+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("banner has no %q line:\n%s", label, out)
	return ""
}

// interruptMakeRun sends SIGINT to the whole process group, as a terminal's Ctrl-C
// does, and asserts a clean end: make exits on the signal without reporting an error
// (it prints "Error N" when its recipe exits non-zero), nothing logged an error, and
// no process that make run started is left, the demo slapd included.
func interruptMakeRun(t *testing.T, p *testenv.Process, marker string) {
	t.Helper()
	if err := syscall.Kill(-p.Pid(), syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	code, err := p.Wait(60 * time.Second)
	if err != nil && !strings.Contains(err.Error(), "signal interrupt") {
		t.Fatalf("make run after SIGINT: exit %d, %v\n%s", code, err, p.Output())
	}
	if err == nil && code != 0 {
		t.Fatalf("make run after SIGINT: exit %d\n%s", code, p.Output())
	}
	out := p.Output()
	for _, line := range strings.Split(out, "\n") {
		interrupt := strings.HasPrefix(line, "make: *** ") && strings.HasSuffix(line, "Interrupt") // make's own notice
		for _, bad := range []string{"Error", "error:", "panic", `"level":"ERROR"`, "make: ***"} {
			if strings.Contains(line, bad) && !interrupt {
				t.Errorf("make run printed %q after Ctrl-C: %s", bad, line)
			}
		}
	}
	if !strings.Contains(out, `"msg":"shutting down"`) {
		t.Errorf("nowconnect up did not shut down on SIGINT:\n%s", out)
	}
	var left []int
	t.Cleanup(func() {
		if len(left) > 0 {
			t.Logf("left behind:%s", describePids(left))
		}
	})
	testenv.WaitFor(t, 10*time.Second, "every process make run started to exit after Ctrl-C", func() bool {
		left = leftovers(marker)
		return len(left) == 0
	})
}

// TestMakeRunServesTheDemo: `make run` on this machine builds the binary, starts the demo
// directory and `nowconnect up` in front of it, prints a banner whose ldapsearch command
// returns the demo entries, and stops everything on Ctrl-C with no error.
func TestMakeRunServesTheDemo(t *testing.T) {
	control := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	listen := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	p, marker := startMakeRun(t, "CONTROL="+control, "LISTEN="+listen)
	p.WaitForOutput(t, "stop:", makeRunBuildTimeout)
	out := p.Output()
	for _, want := range []string{"http://" + control + "/metrics", "FORWARD=", "demo directory", `"msg":"demo_directory_started"`} {
		if !strings.Contains(out, want) {
			t.Errorf("make run output lacks %q:\n%s", want, out)
		}
	}

	try := bannerLine(t, out, "try")
	if !strings.HasPrefix(try, "ldapsearch ") || !strings.Contains(try, listen) {
		t.Fatalf("banner's command %q: want an ldapsearch of %s", try, listen)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := exec.CommandContext(ctx, "sh", "-c", try).CombinedOutput() // as pasted
	if err != nil {
		t.Fatalf("%s: %v\n%s", try, err, res)
	}
	for _, want := range []string{"dn: uid=user0000,ou=people,dc=example,dc=org", "mail: user0004@example.org", "cn: User 0002"} {
		if !strings.Contains(string(res), want) {
			t.Errorf("%s: output lacks %q:\n%s", try, want, res)
		}
	}

	resp, err := http.Get(strings.Fields(bannerLine(t, out, "metrics"))[0])
	if err != nil {
		t.Fatal(err)
	}
	metricsText, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(metricsText), `nowconnect_tcp_connections_total{connector="fwd1"} 1`) {
		t.Errorf("metrics URL: %d, no connection counted:\n%.2000s", resp.StatusCode, metricsText)
	}
	if pids := leftovers(marker); !strings.Contains(describePids(pids), "slapd") {
		t.Errorf("no demo slapd among make run's processes:%s", describePids(pids))
	}
	interruptMakeRun(t, p, marker)
}

// TestMakeRunForwardUnreachable: with FORWARD set there is no demo directory, and a
// target that does not answer at start is named in a warning.
func TestMakeRunForwardUnreachable(t *testing.T) {
	dead := deadAddr(t) // refuses connections
	control := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	listen := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	p, marker := startMakeRun(t, "CONTROL="+control, "LISTEN="+listen, "FORWARD="+dead)
	p.WaitForOutput(t, "stop:", makeRunBuildTimeout)
	out := p.Output()
	warning := bannerLine(t, out, "WARNING")
	if !strings.Contains(warning, dead) || !strings.Contains(warning, "unreachable") {
		t.Errorf("warning %q does not name %s as unreachable", warning, dead)
	}
	if !strings.Contains(out, `"msg":"target_unreachable"`) || strings.Contains(out, "demo_directory_started") {
		t.Errorf("want a target_unreachable log and no demo directory:\n%s", out)
	}
	if fwd := bannerLine(t, out, "forward"); !strings.Contains(fwd, listen) || !strings.Contains(fwd, dead) {
		t.Errorf("forward line %q: want %s -> %s", fwd, listen, dead)
	}
	if pids := leftovers(marker); strings.Contains(describePids(pids), "slapd") {
		t.Errorf("a slapd runs although FORWARD is set:%s", describePids(pids))
	}
	interruptMakeRun(t, p, marker)
}

// TestUpBannerOnTerminal: without --banner, `nowconnect up` prints its banner when
// its stderr is a terminal (a pty here), once the tunnel is up, and names where it
// serves; SIGTERM then stops it with status 0.
func TestUpBannerOnTerminal(t *testing.T) {
	bin := testenv.Binary(t)
	target := startServer(t, func(c net.Conn) { _, _ = io.Copy(c, c) }).Addr()
	control := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	listen := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	master, slave := testenv.OpenPTY(t)
	cmd := exec.Command(bin, "up", "--control", control, "--forward", listen+"="+target)
	cmd.Stdout, cmd.Stderr = slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // upWaitLoop: reaps the child
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	var out testenv.SyncBuffer
	go func() { _, _ = io.Copy(&out, master) }() // ptyReadLoop: ends when the test closes master
	testenv.WaitFor(t, 30*time.Second, "the banner on the terminal", func() bool { return strings.Contains(out.String(), "stop:") })
	if try := bannerLine(t, out.String(), "try"); !strings.Contains(try, listen) {
		t.Errorf("banner's command %q does not name %s", try, listen)
	}
	if m := bannerLine(t, out.String(), "metrics"); !strings.Contains(m, "http://"+control+"/metrics") {
		t.Errorf("banner's metrics line %q does not name %s", m, control)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		exited <- err // for the cleanup
		if err != nil {
			t.Errorf("up after SIGTERM: %v\n%s", err, out.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("up did not stop on SIGTERM:\n%s", out.String())
	}
}
