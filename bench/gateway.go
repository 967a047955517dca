package bench

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nowconnect/nowconnect/agent"
	"github.com/nowconnect/nowconnect/hub"
	"github.com/nowconnect/nowconnect/internal/auth"
)

// GatewayConfig is what the sweeps vary. Zero fields take the product's
// defaults (which are also what the main scenarios run with).
type GatewayConfig struct {
	Window     int `json:"window"`      // tunnel.stream_window (hub and agent)
	QueueDepth int `json:"queue_depth"` // queue_depth_per_cid
	ReadBuffer int `json:"read_buffer"` // engine.read_buffer_bytes
	EventLoops int `json:"event_loops"` // engine.event_loops (0: one per CPU)

	// Hooks for a scenario (zero: none).

	// HubConfig adds lines to the hub's config file by table: "" for
	// top-level keys, "tunnel", "engine", … (a table the launcher does not
	// write is added), e.g. {"tunnel": {"max_stream_window = 16777216"}}.
	// Procs mode only.
	HubConfig map[string][]string `json:"hub_config,omitempty"`
	// AgentArgs are extra `nowconnect premise` flags, e.g.
	// {"--tunnels", "1"}. Procs mode only.
	AgentArgs []string `json:"agent_args,omitempty"`
	// Env is added to the environment of both processes ("K=V"), e.g.
	// GOGC for a memory measurement. Procs mode only.
	Env []string `json:"env,omitempty"`
	// AgentDial, when set, is called with the hub's control address once
	// the hub is healthy and returns the address the agent dials instead
	// (the wan scenario's link, which forwards to the control port).
	AgentDial func(control string) (string, error) `json:"-"`
}

func (c GatewayConfig) String() string {
	s := fmt.Sprintf("window=%s queue_depth=%d read_buffer=%s event_loops=%d",
		sizeStr(c.Window), c.QueueDepth, sizeStr(c.ReadBuffer), c.EventLoops)
	if len(c.HubConfig) > 0 {
		s += fmt.Sprintf(" hub_config=%v", c.HubConfig)
	}
	if len(c.AgentArgs) > 0 {
		s += fmt.Sprintf(" agent_args=%q", c.AgentArgs)
	}
	if len(c.Env) > 0 {
		s += fmt.Sprintf(" env=%q", c.Env)
	}
	return s
}

// hubTables are the tables the launcher writes, in order.
var hubTables = []string{"", "auth", "tunnel", "engine", "log"}

// hubExtra returns the extra lines of a table, each ending in a newline.
func (c GatewayConfig) hubExtra(table string) string {
	var b strings.Builder
	for _, l := range c.HubConfig[table] {
		b.WriteString(l + "\n")
	}
	return b.String()
}

// hubOtherTables writes the tables of HubConfig the launcher does not.
func (c GatewayConfig) hubOtherTables(b *strings.Builder) {
	var names []string
	for t := range c.HubConfig {
		if !slices.Contains(hubTables, t) {
			names = append(names, t)
		}
	}
	slices.Sort(names)
	for _, t := range names {
		fmt.Fprintf(b, "\n[%s]\n%s", t, c.hubExtra(t))
	}
}

// Gateway is a running hub + agent pair whose listeners forward to the
// targets. The connectors are named after the targets.
type Gateway interface {
	// Addr is the hub listener of a connector (sink, source, echo, once, rr, idle).
	Addr(connector string) string
	// Pids of the hub and agent processes; 0 when they run in this process.
	Pids() (hubPid, agentPid int)
	// HubMetrics returns the hub's /metrics text.
	HubMetrics() (string, error)
	// AgentMetrics returns the agent's /metrics text (premise
	// metrics_listen); an error where there is none.
	AgentMetrics() (string, error)
	Close()
}

// connectors maps connector name to target address.
type connectors map[string]string

func (c connectors) names() []string {
	var out []string
	for _, n := range []string{"sink", "source", "echo", "once", "rr", "idle"} {
		if _, ok := c[n]; ok {
			out = append(out, n)
		}
	}
	return out
}

// freePorts returns n distinct loopback ports that were free a moment ago.
func freePorts(n int) ([]int, error) {
	var lns []net.Listener
	defer func() {
		for _, l := range lns {
			_ = l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// ---------------------------------------------------------------------------
// procs: `nowconnect cloud` and `nowconnect premise` as separate processes.

type procGateway struct {
	dir     string
	control string
	agentMx string // the agent's metrics_listen
	addrs   map[string]string
	hub     *exec.Cmd
	agent   *exec.Cmd
	hubLog  string
	agLog   string
}

// BuildBinary builds ./cmd/nowconnect into dir and returns its path.
func BuildBinary(root, dir string) (string, error) {
	out := filepath.Join(dir, "nowconnect")
	cmd := exec.Command("go", "build", "-o", out, "./cmd/nowconnect")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/nowconnect: %v\n%s", err, b)
	}
	return out, nil
}

func startProcGateway(bin, workDir string, cfg GatewayConfig, conns connectors) (_ *procGateway, err error) {
	dir, err := os.MkdirTemp(workDir, "gw-*")
	if err != nil {
		return nil, err
	}
	names := conns.names()
	ports, err := freePorts(2 + len(names))
	if err != nil {
		return nil, err
	}
	g := &procGateway{dir: dir, control: fmt.Sprintf("127.0.0.1:%d", ports[0]), addrs: map[string]string{},
		agentMx: fmt.Sprintf("127.0.0.1:%d", ports[len(ports)-1])}
	defer func() {
		if err != nil {
			g.Close()
		}
	}()
	secret := make([]byte, 32)
	_, _ = rand.Read(secret)
	secretFile := filepath.Join(dir, "secret")
	if err := os.WriteFile(secretFile, []byte(base64.StdEncoding.EncodeToString(secret)+"\n"), 0o600); err != nil {
		return nil, err
	}
	tok, err := exec.Command(bin, "token", "--secret-file", secretFile, "--agent-id", "bench-agent", "--no-expiry").Output()
	if err != nil {
		return nil, fmt.Errorf("nowconnect token: %w", err)
	}
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, tok, 0o600); err != nil {
		return nil, err
	}
	window := cfg.Window
	if window == 0 {
		window = 256 << 10
	}
	var hc strings.Builder
	fmt.Fprintf(&hc, "listen = %q\n", g.control)
	if cfg.QueueDepth > 0 {
		fmt.Fprintf(&hc, "queue_depth_per_cid = %d\n", cfg.QueueDepth)
	}
	hc.WriteString(cfg.hubExtra(""))
	for i, n := range names {
		bind := fmt.Sprintf("127.0.0.1:%d", ports[1+i])
		g.addrs[n] = bind
		fmt.Fprintf(&hc, "\n[[listeners]]\nname = %q\nbind = %q\nconnector = %q\n", n, bind, n)
	}
	fmt.Fprintf(&hc, "\n[auth]\njwt_secret_file = %q\n%s", secretFile, cfg.hubExtra("auth"))
	fmt.Fprintf(&hc, "\n[tunnel]\nstream_window = %d\nmax_frame_payload = %d\n%s", window, min(window, 65536), cfg.hubExtra("tunnel"))
	fmt.Fprintf(&hc, "\n[engine]\nevent_loops = %d\n", cfg.EventLoops)
	if cfg.ReadBuffer > 0 {
		fmt.Fprintf(&hc, "read_buffer_bytes = %d\n", cfg.ReadBuffer)
	}
	hc.WriteString(cfg.hubExtra("engine"))
	fmt.Fprintf(&hc, "\n[log]\nlevel = \"warn\"\n%s", cfg.hubExtra("log"))
	cfg.hubOtherTables(&hc)
	hubFile := filepath.Join(dir, "cloud.toml")
	if err := os.WriteFile(hubFile, []byte(hc.String()), 0o600); err != nil {
		return nil, err
	}
	g.hubLog = filepath.Join(dir, "hub.log")
	if g.hub, err = spawn(bin, g.hubLog, cfg.Env, "cloud", "--config", hubFile); err != nil {
		return nil, err
	}
	if err := g.waitHealthy(10 * time.Second); err != nil {
		return nil, err
	}
	cloud := g.control
	if cfg.AgentDial != nil {
		if cloud, err = cfg.AgentDial(g.control); err != nil {
			return nil, err
		}
	}
	var ac strings.Builder
	fmt.Fprintf(&ac, "cloud_url = %q\nagent_id = \"bench-agent\"\ntoken_file = %q\nstream_window = %d\n", "ws://"+cloud+"/tunnel", tokenFile, window)
	fmt.Fprintf(&ac, "reconnect_min = \"50ms\"\nreconnect_max = \"500ms\"\nmetrics_listen = %q\n", g.agentMx)
	for _, n := range names {
		fmt.Fprintf(&ac, "\n[[connectors]]\nname = %q\ntarget = %q\n", n, conns[n])
	}
	fmt.Fprintf(&ac, "\n[log]\nlevel = \"warn\"\n")
	agentFile := filepath.Join(dir, "premise.toml")
	if err := os.WriteFile(agentFile, []byte(ac.String()), 0o600); err != nil {
		return nil, err
	}

	g.agLog = filepath.Join(dir, "agent.log")
	if g.agent, err = spawn(bin, g.agLog, cfg.Env, append([]string{"premise", "--config", agentFile}, cfg.AgentArgs...)...); err != nil {
		return nil, err
	}
	if err := waitAgent(g, 10*time.Second, func() error { return g.exited() }); err != nil {
		return nil, err
	}
	return g, nil
}

func spawn(bin, logFile string, env []string, args ...string) (*exec.Cmd, error) {
	f, err := os.Create(logFile)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, err
	}
	f.Close() // the child has its own descriptor
	return cmd, nil
}

func (g *procGateway) exited() error {
	for _, c := range []*exec.Cmd{g.hub, g.agent} {
		if c == nil || c.Process == nil {
			continue
		}
		var ws syscall.WaitStatus
		pid, _ := syscall.Wait4(c.Process.Pid, &ws, syscall.WNOHANG, nil)
		if pid == c.Process.Pid {
			c.Process = nil // reaped
			return fmt.Errorf("%s exited (%v); log:\n%s", c.Args[1], ws.ExitStatus(), g.logs())
		}
	}
	return nil
}

func (g *procGateway) logs() string {
	var b strings.Builder
	for _, f := range []string{g.hubLog, g.agLog} {
		if f == "" {
			continue
		}
		data, _ := os.ReadFile(f)
		fmt.Fprintf(&b, "--- %s\n%s", filepath.Base(f), tailStr(string(data), 4000))
	}
	return b.String()
}

func (g *procGateway) waitHealthy(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		resp, err := httpClient.Get("http://" + g.control + "/healthz")
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		if e := g.exited(); e != nil {
			return e
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("hub not healthy after %v: %v\n%s", timeout, err, g.logs())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitAgent waits until an echo round trip through the gateway works.
func waitAgent(g Gateway, timeout time.Duration, dead func() error) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		if dead != nil {
			if err := dead(); err != nil {
				return err
			}
		}
		if last = echoOnce(g.Addr("echo")); last == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	msg := ""
	if pg, ok := g.(*procGateway); ok {
		msg = "\n" + pg.logs()
	}
	return fmt.Errorf("gateway not forwarding after %v: %v%s", timeout, last, msg)
}

func echoOnce(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		return err
	}
	var b [4]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return err
	}
	if string(b[:]) != "ping" {
		return errors.New("echo mismatch")
	}
	return nil
}

var httpClient = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

func (g *procGateway) Addr(n string) string { return g.addrs[n] }

func (g *procGateway) Pids() (int, int) {
	p := func(c *exec.Cmd) int {
		if c == nil || c.Process == nil {
			return 0
		}
		return c.Process.Pid
	}
	return p(g.hub), p(g.agent)
}

func (g *procGateway) HubMetrics() (string, error) {
	return getMetrics("http://" + g.control + "/metrics")
}

func getMetrics(url string) (string, error) {
	resp, err := httpClient.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// metricValue returns the value of an unlabelled sample, or -1.
func metricValue(text, name string) float64 {
	for _, l := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			var f float64
			if _, err := fmt.Sscan(strings.TrimSpace(v), &f); err == nil {
				return f
			}
		}
	}
	return -1
}

// goMem is a process's Go heap and stacks in use from its /metrics
// (go_memstats_*, as of the last GC's accounting; no GC is forced).
// alloc is the bytes of allocated heap objects (go_memstats_heap_alloc_bytes),
// finer than heap in use (whole spans) once garbage is collected.
type goMem struct{ heap, stack, alloc float64 }

func readGoMem(fetch func() (string, error)) (goMem, bool) {
	text, err := fetch()
	if err != nil {
		return goMem{}, false
	}
	m := goMem{heap: metricValue(text, "go_memstats_heap_inuse_bytes"), stack: metricValue(text, "go_memstats_stack_inuse_bytes"),
		alloc: metricValue(text, "go_memstats_heap_alloc_bytes")}
	return m, m.heap >= 0 && m.stack >= 0 && m.alloc >= 0
}

// Close stops the agent and the hub together: SIGTERM, then SIGKILL after
// 5s.
func (g *procGateway) Close() {
	var wg sync.WaitGroup
	for _, c := range []*exec.Cmd{g.agent, g.hub} {
		wg.Go(func() { stopCmd(c) })
	}
	wg.Wait()
	_ = os.RemoveAll(g.dir)
}

func stopCmd(c *exec.Cmd) {
	if c == nil || c.Process == nil {
		return
	}
	_ = c.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = c.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
		<-done
	}
}

// ---------------------------------------------------------------------------
// inproc: hub.New + agent.New in the runner process (for -cpuprofile).

type inprocGateway struct {
	h       *hub.Hub
	control string
	addrs   map[string]string
	cancel  context.CancelFunc
	done    chan struct{}
}

func startInprocGateway(cfg GatewayConfig, conns connectors) (_ *inprocGateway, err error) {
	if len(cfg.HubConfig) > 0 || len(cfg.AgentArgs) > 0 || len(cfg.Env) > 0 {
		return nil, fmt.Errorf("gateway hooks HubConfig, AgentArgs and Env (%s) need -mode procs", cfg)
	}
	names := conns.names()
	ports, err := freePorts(1 + len(names))
	if err != nil {
		return nil, err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	g := &inprocGateway{control: fmt.Sprintf("127.0.0.1:%d", ports[0]), addrs: map[string]string{}, done: make(chan struct{})}
	hc := hub.Config{Control: g.control, Window: cfg.Window, QueueDepth: cfg.QueueDepth,
		EventLoops: cfg.EventLoops, ReadBufferBytes: cfg.ReadBuffer, Logger: log}
	for i, n := range names {
		bind := fmt.Sprintf("127.0.0.1:%d", ports[1+i])
		g.addrs[n] = bind
		hc.Listeners = append(hc.Listeners, hub.Listener{Name: n, Bind: bind, Connector: n})
	}
	secret := make([]byte, 32)
	_, _ = rand.Read(secret)
	ver, err := auth.NewVerifier(auth.VerifierConfig{HS256Secret: secret, Audience: "nowconnect"})
	if err != nil {
		return nil, err
	}
	hc.Verifier = ver
	tok, err := auth.Mint(secret, "bench-agent", nil, 0, "")
	if err != nil {
		return nil, err
	}
	h, err := hub.New(hc)
	if err != nil {
		return nil, err
	}
	if err := h.Start(); err != nil {
		return nil, err
	}
	g.h = h
	cloud := g.control
	if cfg.AgentDial != nil {
		if cloud, err = cfg.AgentDial(g.control); err != nil {
			_ = h.Stop(context.Background())
			return nil, err
		}
	}
	a, err := agent.New(agent.Config{URLs: []string{"ws://" + cloud + "/tunnel"}, AgentID: "bench-agent",
		Token: tok, Connectors: conns, Window: cfg.Window, Logger: log,
		ReconnectMin: 50 * time.Millisecond, ReconnectMax: 500 * time.Millisecond})
	if err != nil {
		_ = h.Stop(context.Background())
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	g.cancel = cancel
	go func() {
		defer close(g.done)
		_ = a.Run(ctx)
	}()
	if err := waitAgent(g, 10*time.Second, nil); err != nil {
		g.Close()
		return nil, err
	}
	return g, nil
}

func (g *inprocGateway) Addr(n string) string { return g.addrs[n] }
func (g *inprocGateway) Pids() (int, int)     { return 0, 0 }
func (g *inprocGateway) HubMetrics() (string, error) {
	return getMetrics("http://" + g.control + "/metrics")
}

func (g *inprocGateway) Close() {
	if g.cancel != nil {
		g.cancel()
		<-g.done
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = g.h.Stop(ctx)
}

// ---------------------------------------------------------------------------
// /proc readings.

// procStat is a process's CPU time and memory.
type procStat struct {
	CPU     time.Duration // utime + stime
	RSS     int64         // VmRSS, bytes
	RssAnon int64         // RssAnon, bytes
}

const clkTck = 100 // USER_HZ on Linux

func readProc(pid int) (procStat, error) {
	var st procStat
	p := "self"
	if pid > 0 {
		p = fmt.Sprint(pid)
	}
	b, err := os.ReadFile("/proc/" + p + "/stat")
	if err != nil {
		return st, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return st, errors.New("bad /proc stat")
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return st, errors.New("short /proc stat")
	}
	var ut, stt int64
	fmt.Sscan(f[11], &ut)
	fmt.Sscan(f[12], &stt)
	st.CPU = time.Duration(ut+stt) * time.Second / clkTck
	b, err = os.ReadFile("/proc/" + p + "/status")
	if err != nil {
		return st, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		var kb int64
		fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), &kb)
		switch k {
		case "VmRSS":
			st.RSS = kb << 10
		case "RssAnon":
			st.RssAnon = kb << 10
		}
	}
	return st, nil
}

func tailStr(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

func sizeStr(n int) string {
	switch {
	case n == 0:
		return "default"
	case n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprint(n)
}

type heapStat struct{ heap, stack int64 }

// heapNow is this process's heap in use and goroutine stacks after a GC.
func heapNow() heapStat {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return heapStat{heap: int64(m.HeapInuse), stack: int64(m.StackInuse)}
}

func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	runtime.GC()
	if err := pprof.WriteHeapProfile(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func (g *procGateway) AgentMetrics() (string, error) {
	return getMetrics("http://" + g.agentMx + "/metrics")
}

func (g *inprocGateway) AgentMetrics() (string, error) {
	return "", errors.New("in-process agent: no metrics endpoint")
}
