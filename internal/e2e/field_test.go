package e2e

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/hub"
	"github.com/nowconnect/nowconnect/internal/testenv"
	"golang.org/x/sys/unix"
)

// Failures of the field, with real processes: an agent frozen with
// SIGSTOP, a hub that runs out of descriptors.

// startPremise runs a real agent process against th for connector svc.
func startPremise(t *testing.T, bin, control, id string, targets map[string]string, extra ...string) *testenv.Process {
	t.Helper()
	names := make([]string, 0, len(targets))
	args := []string{"premise", "--cloud", "ws://" + control + "/tunnel", "--agent-id", id}
	for n, addr := range targets {
		names = append(names, n)
		args = append(args, "--connector", n+"="+addr)
	}
	tokFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokFile, []byte(token(t, id, names)), 0o600); err != nil {
		t.Fatal(err)
	}
	args = append(append(args, "--token-file", tokFile), extra...)
	return testenv.StartProcess(t, bin, args, nil)
}

// startPremiseConfig runs a `premise` agent process from a config file
// with one connector svc → target and the given ping settings (keys only a
// config file sets); a cleanup resumes it if a test left it stopped.
func startPremiseConfig(t *testing.T, control, id, target string, pingInterval, pingTimeout time.Duration) *testenv.Process {
	t.Helper()
	dir := t.TempDir()
	tokFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokFile, []byte(token(t, id, []string{"svc"})), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf("cloud_url = %q\nagent_id = %q\ntoken_file = %q\nping_interval = %q\nping_timeout = %q\n"+
		"[[connectors]]\nname = \"svc\"\ntarget = %q\n", "ws://"+control+"/tunnel", id, tokFile, pingInterval, pingTimeout, target)
	cfgFile := filepath.Join(dir, "premise.toml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	p := testenv.StartProcess(t, testenv.Binary(t), []string{"premise", "--config", cfgFile}, nil)
	t.Cleanup(func() { _ = p.Signal(syscall.SIGCONT) })
	return p
}

// echoOnce dials addr, sends 64 bytes and reads them back within timeout.
func echoOnce(addr string, timeout time.Duration) error {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	buf := make([]byte, 64)
	if _, err := c.Write(buf); err != nil {
		return err
	}
	_, err = io.ReadFull(c, buf)
	return err
}

// TestFrozenAgent: one of two agent processes is stopped with SIGSTOP.
// Clients whose OPEN went to it are closed within timeouts.open, not left
// hanging; new clients go to the other agent; the frozen agent's tunnels
// are closed within 10 s.
func TestFrozenAgent(t *testing.T) {
	bin := testenv.Binary(t)
	echo := startServer(t, func(c net.Conn) { _, _ = io.Copy(c, c) })
	const openTimeout = 3 * time.Second
	th := startHub(t, []string{"svc"}, func(c *hub.Config) { c.OpenTimeout = openTimeout })
	frozen := startPremise(t, bin, th.Control, "frozen", map[string]string{"svc": echo.Addr()})
	startPremise(t, bin, th.Control, "alive", map[string]string{"svc": echo.Addr()})
	testenv.WaitFor(t, 15*time.Second, "2 agents with 2 tunnels each", func() bool {
		return th.Agents() == 2 && th.Tunnels() == 4
	})
	if err := echoOnce(th.Addr["svc"], 5*time.Second); err != nil {
		t.Fatal(err)
	}

	if err := frozen.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	t.Cleanup(func() { _ = frozen.Signal(syscall.SIGCONT) })

	type result struct {
		start time.Time
		took  time.Duration
		err   error
	}
	var mu sync.Mutex
	var results []result
	var wg sync.WaitGroup
	detected := time.Duration(0)
	client := func() {
		start := time.Now()
		err := echoOnce(th.Addr["svc"], openTimeout+5*time.Second)
		mu.Lock()
		results = append(results, result{start, time.Since(start), err})
		mu.Unlock()
	}
	// A burst at once: streams spread over both agents (fewest active
	// first), so some OPENs go to the frozen one before it is suspect.
	for range 8 {
		wg.Go(client)
	}
	for time.Since(stopped) < 12*time.Second {
		wg.Go(client)
		if detected == 0 && th.Tunnels() == 2 {
			detected = time.Since(stopped)
		}
		time.Sleep(100 * time.Millisecond) // the pace of new clients, not synchronisation
	}
	wg.Wait()
	if detected == 0 {
		t.Fatalf("the frozen agent's tunnels were not closed within 12 s (tunnels: %d)", th.Tunnels())
	}
	t.Logf("frozen agent detected after %v", detected.Round(10*time.Millisecond))
	if detected > 10*time.Second {
		t.Errorf("detection took %v, want ≤ 10 s", detected)
	}
	if !strings.Contains(th.Logs.String(), `"agent_id":"frozen"`) || !strings.Contains(th.Logs.String(), `"reason":"ping_timeout"`) {
		t.Error("no agent_disconnected with reason ping_timeout for the frozen agent")
	}
	failed, lateOK := 0, 0
	for _, r := range results {
		if r.err != nil {
			failed++
			if r.took > openTimeout+time.Second {
				t.Errorf("a client sent at +%v hung %v before it was closed (open timeout %v)",
					r.start.Sub(stopped).Round(time.Millisecond), r.took.Round(time.Millisecond), openTimeout)
			}
			if r.start.Sub(stopped) > 3*time.Second {
				t.Errorf("a client sent at +%v failed after the frozen agent was avoided: %v",
					r.start.Sub(stopped).Round(time.Millisecond), r.err)
			}
		} else if r.start.Sub(stopped) > 3*time.Second {
			lateOK++
		}
	}
	t.Logf("%d clients, %d closed by the open timeout, %d served later by the other agent", len(results), failed, lateOK)
	if failed == 0 {
		t.Error("no stream went to the frozen agent: the test proves nothing")
	}
	if lateOK == 0 {
		t.Error("no client was served by the other agent")
	}
	if v := testenv.Metric(t, th.Metrics().WritePrometheus, `nowconnect_listener_errors_total{connector="svc",type="open_timeout"}`); int(v) != failed {
		t.Errorf("open_timeout counted %v, %d clients were closed", v, failed)
	}
}

// cloudConfig writes a hub config for one listener and returns its path.
func cloudConfig(t *testing.T, control, listen string, extra string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "secret"), testSecret, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`listen = %q

[[listeners]]
name = "l1"
bind = %q
connector = "svc"

[auth]
jwt_secret_file = "secret"
%s`, control, listen, extra)
	p := filepath.Join(dir, "cloud.toml")
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// fdCount returns the number of open descriptors of pid.
func fdCount(t *testing.T, pid int) int {
	t.Helper()
	es, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

// healthz asks the control port once, on a new connection.
func healthz(control string) error {
	c := http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + control + "/healthz")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("healthz: HTTP %d", resp.StatusCode)
	}
	return nil
}

// TestDescriptorExhaustion: a hub limited to 256 descriptors gets 600
// clients at once. It keeps answering /healthz, keeps its agent, refuses
// what it cannot hold (counted), and once the clients are gone serves new
// ones with its descriptor count back where it started. Twice: with the
// default connection cap, and with the cap lifted above the limit so that
// accept itself hits EMFILE.
func TestDescriptorExhaustion(t *testing.T) {
	bin := testenv.Binary(t)
	for _, tc := range []struct {
		name  string
		extra string
	}{
		{"default cap", ""},
		{"accept at EMFILE", "\n[engine]\nmax_connections = 100000\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			echo := startServer(t, func(c net.Conn) { _, _ = io.Copy(c, c) })
			control := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
			listen := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
			cfg := cloudConfig(t, control, listen, tc.extra)
			h := testenv.StartProcess(t, "sh", []string{"-c", `ulimit -n 256 && exec "$0" cloud --config "$1"`, bin, cfg}, nil)
			h.WaitForOutput(t, `"msg":"listener_started"`, 10*time.Second)
			startPremise(t, bin, control, "a1", map[string]string{"svc": echo.Addr()}, "--tunnels", "1")
			h.WaitForOutput(t, `"msg":"agent_connected"`, 10*time.Second)
			if err := echoOnce(listen, 5*time.Second); err != nil {
				t.Fatal(err)
			}
			testenv.WaitFor(t, 5*time.Second, "the first client's descriptors to go", func() bool {
				return strings.Contains(h.Output(), `"msg":"connection closed"`)
			})
			base := fdCount(t, h.Pid())

			// Health is polled on new connections all along.
			var healthFails atomic.Int64
			stop := make(chan struct{})
			var hw sync.WaitGroup
			hw.Go(func() {
				for {
					select {
					case <-stop:
						return
					case <-time.After(50 * time.Millisecond): // polling interval
					}
					if err := healthz(control); err != nil {
						healthFails.Add(1)
					}
				}
			})

			const clients = 600
			var mu sync.Mutex
			var held []net.Conn
			var served, refused atomic.Int64
			var wg sync.WaitGroup
			for range clients {
				wg.Go(func() {
					c, err := net.DialTimeout("tcp", listen, 5*time.Second)
					if err != nil {
						refused.Add(1)
						return
					}
					_ = c.SetDeadline(time.Now().Add(10 * time.Second))
					buf := make([]byte, 16)
					if _, err := c.Write(buf); err == nil {
						if _, err = io.ReadFull(c, buf); err == nil {
							served.Add(1)
							mu.Lock()
							held = append(held, c) // keeps its descriptors busy
							mu.Unlock()
							return
						}
					}
					refused.Add(1)
					c.Close()
				})
			}
			wg.Wait()
			t.Logf("%d clients served and held, %d refused or closed; healthz failures %d", served.Load(), refused.Load(), healthFails.Load())
			if served.Load() == 0 || refused.Load() == 0 {
				t.Fatalf("served %d, refused %d: the limit was not reached", served.Load(), refused.Load())
			}
			if tc.extra == "" {
				// With the cap, descriptors never run out: the control port
				// answers while every client slot is taken. Without it the
				// hub has none left for a control connection until clients
				// go; what it must do then is survive and recover.
				if err := healthz(control); err != nil {
					t.Fatalf("healthz at the limit: %v", err)
				}
			}
			for _, c := range held {
				c.Close()
			}
			close(stop)
			hw.Wait()
			if tc.extra == "" && healthFails.Load() > 0 {
				t.Errorf("/healthz failed %d times under the flood", healthFails.Load())
			}
			testenv.WaitFor(t, 10*time.Second, "descriptors back to the baseline", func() bool {
				return fdCount(t, h.Pid()) <= base
			})
			// Recovered on its own: new clients are served. (The first may
			// still meet the tail of the flood: connections the kernel queued
			// while no descriptor was left, which their clients gave up on.)
			var lastErr error
			testenv.WaitFor(t, 10*time.Second, "a new client served after the flood", func() bool {
				lastErr = echoOnce(listen, 5*time.Second)
				return lastErr == nil
			})
			if h.Exited() {
				t.Fatal("the hub exited")
			}
			metricsText := func() string {
				resp, err := http.Get("http://" + control + "/metrics")
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				return string(b)
			}
			m := metricsText()
			write := func(w io.Writer) { _, _ = io.WriteString(w, m) }
			if v := testenv.Metric(t, write, `nowconnect_listener_errors_total{connector="svc",type="accept"}`); v == 0 {
				t.Error("no refused client counted as listener_errors_total{type=\"accept\"}")
			}
			if v := testenv.Metric(t, write, `nowconnect_agents_connected{connector="svc"}`); v != 1 {
				t.Errorf("agents connected %v after the flood, want 1", v)
			}
		})
	}
}

// TestAgentDescriptorExhaustion: the premise side runs out of descriptors.
// The agent's RLIMIT_NOFILE is lowered, while it runs, to 40 above what it
// holds, and 300 clients come at once and stay. The streams it cannot dial a
// target for are refused at once (their clients closed, none left hanging),
// its tunnel stays up, and once the clients go it serves new ones, holding no
// descriptor more than before.
func TestAgentDescriptorExhaustion(t *testing.T) {
	bin := testenv.Binary(t)
	echo := startServer(t, func(c net.Conn) { _, _ = io.Copy(c, c) })
	ports := testenv.FreePorts(t, 2)
	control, listen := fmt.Sprintf("127.0.0.1:%d", ports[0]), fmt.Sprintf("127.0.0.1:%d", ports[1])
	// The hub's open timeout far beyond the clients' deadline: a stream the
	// agent leaves unanswered must show as hung, not be closed by the hub
	// at 5 s and counted as refused.
	h := testenv.StartProcess(t, bin, []string{"cloud", "--config", cloudConfig(t, control, listen, "\n[timeouts]\nopen = \"1m\"\n")}, nil)
	h.WaitForOutput(t, `"msg":"listener_started"`, 10*time.Second)
	a := startPremise(t, bin, control, "a1", map[string]string{"svc": echo.Addr()}, "--tunnels", "1")
	h.WaitForOutput(t, `"msg":"agent_connected"`, 10*time.Second)
	if err := echoOnce(listen, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	var base int
	testenv.WaitFor(t, 5*time.Second, "the agent's descriptors settle", func() bool {
		n := fdCount(t, a.Pid())
		settled := n == base
		base = n
		return settled
	})
	limit := uint64(base + 40)
	if err := unix.Prlimit(a.Pid(), unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: limit, Max: limit}, nil); err != nil {
		t.Fatalf("prlimit: %v", err)
	}

	const clients = 300
	const deadline = 10 * time.Second
	var mu sync.Mutex
	var held []net.Conn
	var served, refused, hung atomic.Int64
	var slowest atomic.Int64 // ns: the longest a refused client waited
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			c, err := net.DialTimeout("tcp", listen, 5*time.Second)
			if err != nil {
				t.Errorf("dial the hub: %v", err) // the hub has descriptors to spare
				return
			}
			start := time.Now()
			_ = c.SetDeadline(start.Add(deadline))
			buf := make([]byte, 16)
			_, err = c.Write(buf)
			if err == nil {
				_, err = io.ReadFull(c, buf)
			}
			var ne net.Error
			switch {
			case err == nil:
				served.Add(1)
				mu.Lock()
				held = append(held, c) // keeps the agent's target descriptor busy
				mu.Unlock()
				return
			case errors.As(err, &ne) && ne.Timeout():
				hung.Add(1)
			default:
				refused.Add(1)
				for d := int64(time.Since(start)); ; {
					s := slowest.Load()
					if d <= s || slowest.CompareAndSwap(s, d) {
						break
					}
				}
			}
			c.Close()
		})
	}
	wg.Wait()
	t.Logf("agent at %d descriptors: %d clients served and held, %d refused (the slowest after %v), %d hung",
		limit, served.Load(), refused.Load(), time.Duration(slowest.Load()).Round(time.Millisecond), hung.Load())
	if served.Load() == 0 || refused.Load() == 0 {
		t.Fatalf("served %d, refused %d: the limit was not reached", served.Load(), refused.Load())
	}
	if hung.Load() > 0 {
		t.Fatalf("%d clients got neither an answer nor a close within %v", hung.Load(), deadline)
	}
	if !strings.Contains(a.Output(), `"msg":"target_dial_failed"`) {
		t.Errorf("the agent did not log target_dial_failed:\n%s", a.Output())
	}
	for _, c := range held {
		c.Close()
	}
	testenv.WaitFor(t, 10*time.Second, "the agent's descriptors back to the baseline", func() bool {
		return fdCount(t, a.Pid()) <= base
	})
	if err := echoOnce(listen, 5*time.Second); err != nil {
		t.Fatalf("a client after the flood: %v", err)
	}
	if strings.Contains(h.Output(), `"msg":"agent_disconnected"`) || a.Exited() {
		t.Errorf("the agent's tunnel did not survive the flood:\n%s", a.Output())
	}
}

// TestAgentResumesAfterShortFreeze: an agent process stopped with SIGSTOP
// for longer than its own ping_timeout but shorter than the hub's, then
// resumed. The hub kept pinging, and those pings wait in the agent's socket
// when it resumes: the agent must read them rather than call the hub silent.
// Its ping ticker and its reader wake together and the reader usually runs
// first, so this test rarely sees the race; the rule that makes the order
// not matter is tested in agent (TestSilentForCountsWaitingBytes). Its
// tunnels stay up, with no reconnect, and its streams work at once.
func TestAgentResumesAfterShortFreeze(t *testing.T) {
	echo := startServer(t, func(c net.Conn) { _, _ = io.Copy(c, c) })
	th := startHub(t, []string{"svc"}, func(c *hub.Config) {
		c.PingInterval, c.PingTimeout = 200*time.Millisecond, time.Minute
	})
	ag := startPremiseConfig(t, th.Control, "napper", echo.Addr(), 200*time.Millisecond, time.Second)
	testenv.WaitFor(t, 15*time.Second, "the agent's 2 tunnels", func() bool { return th.Tunnels() == 2 })
	if err := echoOnce(th.Addr["svc"], 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := ag.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	// Frozen for 2 s, twice the agent's ping_timeout: the hub's pings (every
	// 200 ms) pile up in the agent's socket meanwhile.
	frozen := time.Now()
	for time.Since(frozen) < 2*time.Second {
		time.Sleep(50 * time.Millisecond) // the length of the freeze, not synchronisation
	}
	if err := ag.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if err := echoOnce(th.Addr["svc"], 5*time.Second); err != nil {
			t.Fatalf("echo after the agent resumed: %v", err)
		}
	}
	// Past another ping_timeout of normal running: a false timeout on
	// resume would have closed the tunnels by now.
	resumed := time.Now()
	for time.Since(resumed) < 1500*time.Millisecond {
		time.Sleep(50 * time.Millisecond) // a span to watch, not synchronisation
	}
	if out := ag.Output(); strings.Contains(out, `"msg":"tunnel closed"`) {
		t.Fatalf("the agent closed a tunnel after resuming:\n%s", out)
	}
	if strings.Contains(th.Logs.String(), `"msg":"agent_disconnected"`) {
		t.Fatalf("the hub saw the agent disconnect:\n%s", th.Logs.String())
	}
	if n := th.Tunnels(); n != 2 {
		t.Fatalf("%d tunnels after the agent resumed, want its 2", n)
	}
}
