package bench

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The mesh scenario: two hubs of an HA mesh and one agent, all real
// processes of the binary, with a real redis-server as the registry:
//
//	direct:    client → target
//	local:     client → hub A listener → hub A ══tunnel══ agent → target
//	cross-hub: client → hub B listener → hub B ══mesh══ hub A ══tunnel══ agent → target
//
// Both hubs run `[ha] enabled = true, mode = "active"` against the same
// redis-server and link to each other over their control ports' /mesh
// (`[ha.mesh] secret_file`, `advertise_url`, discovery through the
// registry); the agent's only tunnel ends on hub A, so every stream through
// hub B crosses the mesh. Everything else is at the defaults the other
// scenarios use. The load generators and the targets run in the runner.

// meshRRConns is the open-loop request/response concurrency (the open
// scenario's first count).
const meshRRConns = 50

// meshLowRate is the second open loop's rate: a quiet hour, where every
// process sleeps between requests.
const meshLowRate = 200

// meshConnectors are the connectors (and targets) of the mesh scenario.
var meshConnectors = []string{"sink", "source", "rr", "echo"}

// meshIDs are the hubs' replica ids: the agent's tunnel ends on the first.
var meshIDs = [2]string{"hub-a", "hub-b"}

// meshPlan is the offered request rate and the window of every figure.
func (r *runner) meshPlan() (rate int, w window) {
	if r.opts.Smoke {
		return 1000, r.w
	}
	return 5000, r.w
}

func (r *runner) mesh() error {
	rate, w := r.meshPlan()
	rep := &MeshReport{WarmSec: w.warm.Seconds(), DurSec: w.dur.Seconds(), RRConns: meshRRConns, RRRate: rate}
	r.rep.Mesh = rep
	r.p.phase("mesh: starting redis-server, hub A, hub B, the agent on hub A", nil, "", 0)
	start := time.Now()
	mc, err := startMeshCluster(r.bin, r.work, r.connectors(), r.opts.AgentArgs)
	if err != nil {
		return err
	}
	defer mc.Close()
	rep.StartSec = time.Since(start).Seconds()
	a, b := mc.hubs[0], mc.hubs[1]
	pids := [2]int{pidOf(a.cmd), pidOf(b.cmd)} // throughput's "hub" and "agent" CPU: hub A's and hub B's
	ours := []int{pidOf(a.cmd), pidOf(b.cmd), pidOf(mc.agent), pidOf(mc.redis.cmd)}
	paths := func(connector, direct string) [][2]string {
		return [][2]string{{"direct", direct}, {"local", a.addrs[connector]}, {"cross-hub", b.addrs[connector]}}
	}
	for _, up := range []bool{true, false} {
		conn, direct, dir := "source", r.t.Source, "download"
		if up {
			conn, direct, dir = "sink", r.t.Sink, "upload"
		}
		for _, p := range paths(conn, direct) {
			label := fmt.Sprintf("mesh: throughput 1-stream %s, %s", dir, p[0])
			bg := r.quietPids(ours...)
			opens0 := b.meshOpens()
			res, err := throughput(r.p, label, r.t, p[1], 1, up, w, pids)
			if err != nil {
				return fmt.Errorf("%s: %w", label, err)
			}
			opens, err := checkOpens(p[0], b, opens0, 1)
			if err != nil {
				return fmt.Errorf("%s: %w", label, err)
			}
			if res.Errors > 0 {
				r.note("%s: the stream failed (reset) during the measurement", label)
			}
			rep.Throughput = append(rep.Throughput, MeshThroughput{Path: p[0], Direction: res.Direction, Streams: res.Streams,
				BytesPerSec: res.BytesPerSec, Bytes: res.Bytes, Seconds: res.Seconds, HubACPU: res.HubCPU, HubBCPU: res.AgentCPU,
				BgCPU: bg.cores(), Errors: res.Errors, MeshOpens: opens})
			r.p.note("%s: %.2f Gbit/s", label, res.BytesPerSec*8/1e9)
		}
	}
	cfg := r.rep.Config
	for _, p := range paths("rr", r.t.RR) {
		label := fmt.Sprintf("mesh: req/resp closed loop, 1 conn, %s", p[0])
		opens0 := b.meshOpens()
		cpu0 := readCPUs(ours[:3])
		res, err := rrClosed(r.p, label, p[1], 1, cfg.ReqSize, cfg.RespSize, w)
		if err != nil {
			return fmt.Errorf("%s: %w", label, err)
		}
		opens, err := checkOpens(p[0], b, opens0, 1)
		if err != nil {
			return fmt.Errorf("%s: %w", label, err)
		}
		res.Path = p[0]
		rep.Quiet = append(rep.Quiet, MeshReqResp{RRResult: res, MeshOpens: opens, CPU: cpuPerReq(cpu0, readCPUs(ours[:3]), res, w)})
		r.p.note("%s: %.0f req/s, p50 %.0fµs p99 %.0fµs", label, res.Rate, res.Latency.P50, res.Latency.P99)
	}
	openLoop := func(rate int, into *[]MeshReqResp) error {
		for _, p := range paths("rr", r.t.RR) {
			label := fmt.Sprintf("mesh: req/resp open loop, %d conns at %d/s, %s", meshRRConns, rate, p[0])
			bg := r.quietPids(ours...)
			opens0 := b.meshOpens()
			cpu0 := readCPUs(ours[:3])
			res, err := rrOpen(r.p, label, p[1], meshRRConns, cfg.ReqSize, cfg.RespSize, float64(rate), w)
			if err != nil {
				return fmt.Errorf("%s: %w", label, err)
			}
			opens, err := checkOpens(p[0], b, opens0, meshRRConns)
			if err != nil {
				return fmt.Errorf("%s: %w", label, err)
			}
			res.Path, res.BgCPU = p[0], bg.cores()
			*into = append(*into, MeshReqResp{RRResult: res, MeshOpens: opens, CPU: cpuPerReq(cpu0, readCPUs(ours[:3]), res, w)})
			r.p.note("%s: %.0f req/s, p50 %.0fµs p99 %.0fµs (unfinished %d)", label, res.Rate, res.Latency.P50, res.Latency.P99, res.Unfinished)
		}
		return nil
	}
	if err := openLoop(rate, &rep.ReqResp); err != nil {
		return err
	}
	rep.LowRate = meshLowRate
	if err := openLoop(meshLowRate, &rep.Low); err != nil {
		return err
	}
	for _, h := range mc.hubs {
		hh, err := h.health()
		if err != nil {
			return err
		}
		rep.Health = append(rep.Health, hh)
		if hh.troubled() {
			r.note("mesh: %s: %s", h.id, hh)
		}
	}
	return nil
}

// readCPUs reads the CPU time of hub A, hub B and the agent (pids in that
// order), then of this process.
func readCPUs(pids []int) [4]time.Duration {
	var c [4]time.Duration
	for i, pid := range append(pids[:3:3], 0) {
		st, _ := readProc(pid)
		c[i] = st.CPU
	}
	return c
}

// cpuPerReq is the CPU each process used between before and after per
// request: res counts the requests of w's measurement, and the rate held
// through its warm-up too.
func cpuPerReq(before, after [4]time.Duration, res RRResult, w window) *MeshCPU {
	n := float64(res.Latency.N) * (w.warm + w.dur).Seconds() / w.dur.Seconds()
	if n == 0 {
		return nil
	}
	us := func(i int) float64 { return float64((after[i] - before[i]).Microseconds()) / n }
	return &MeshCPU{HubA: us(0), HubB: us(1), Agent: us(2), Runner: us(3)}
}

// checkOpens returns how many streams hub B opened over the mesh since
// before (nowconnect_mesh_frames_total of M_OPEN sent), and fails when a
// cross-hub measurement opened fewer than its connections: then its
// figure is not of the mesh.
func checkOpens(path string, b *meshHub, before float64, conns int) (int, error) {
	after := b.meshOpens()
	if before < 0 || after < 0 {
		return 0, fmt.Errorf("hub B's /metrics has no %s", meshOpenSeries)
	}
	n := int(after - before)
	if path == "cross-hub" && n < conns {
		return n, fmt.Errorf("hub B sent %d M_OPEN over the mesh for %d connections", n, conns)
	}
	return n, nil
}

// meshOpenSeries counts the streams a hub opened on its peers.
const meshOpenSeries = `nowconnect_mesh_frames_total{dir="out",type="M_OPEN"}`

// ---------------------------------------------------------------------------
// The processes.

// meshHub is one `nowconnect cloud` process of the mesh scenario.
type meshHub struct {
	id, control string
	addrs       map[string]string // connector → listener
	cmd         *exec.Cmd
	log         string
}

// meshOpens reads meshOpenSeries from the hub's /metrics (-1 when it
// cannot; 0 before the first open, when the series is absent).
func (h *meshHub) meshOpens() float64 {
	m, err := getMetrics("http://" + h.control + "/metrics")
	if err != nil {
		return -1
	}
	return max(metricValue(m, meshOpenSeries), 0)
}

// health reads the hub's counters of what went wrong on its mesh link.
func (h *meshHub) health() (MeshHubHealth, error) {
	m, err := getMetrics("http://" + h.control + "/metrics")
	if err != nil {
		return MeshHubHealth{}, fmt.Errorf("%s /metrics: %w", h.id, err)
	}
	return MeshHubHealth{ID: h.id,
		LinkReconnects:     metricSum(m, "nowconnect_mesh_link_reconnects_total", ""),
		BackpressureDrops:  metricSum(m, "nowconnect_mesh_backpressure_drops_total", ""),
		BackpressureResets: metricSum(m, "nowconnect_mesh_stream_resets_total", ""),
		MeshDownResets:     metricSum(m, "nowconnect_stream_resets_total", `reason="mesh_down"`),
	}, nil
}

// meshCluster is redis-server, the two hubs and the agent; Close stops
// them all.
type meshCluster struct {
	dir      string
	redis    *redisProc
	hubs     [2]*meshHub
	agent    *exec.Cmd
	agentLog string
}

// startMeshCluster starts redis-server, hub A, hub B (once A is healthy,
// so that B finds A in the registry at its first discovery), waits for
// the mesh link between them, starts the agent on hub A and waits for an
// echo through A and then through B.
func startMeshCluster(bin, workDir string, targets connectors, agentArgs []string) (_ *meshCluster, err error) {
	dir, err := os.MkdirTemp(workDir, "mesh-*")
	if err != nil {
		return nil, err
	}
	mc := &meshCluster{dir: dir}
	defer func() {
		if err != nil {
			mc.Close()
		}
	}()
	if mc.redis, err = startRedis(dir); err != nil {
		return nil, err
	}
	jwtFile, meshFile := filepath.Join(dir, "jwt.secret"), filepath.Join(dir, "mesh.secret")
	for _, f := range []string{jwtFile, meshFile} {
		secret := make([]byte, 32)
		_, _ = rand.Read(secret)
		// base64 of 32 random bytes: 44 bytes, the mesh needs at least 32.
		if err := os.WriteFile(f, []byte(base64.StdEncoding.EncodeToString(secret)+"\n"), 0o600); err != nil {
			return nil, err
		}
	}
	ports, err := freePorts(len(mc.hubs) * (1 + len(meshConnectors)))
	if err != nil {
		return nil, err
	}
	for i, id := range meshIDs {
		h := &meshHub{id: id, control: fmt.Sprintf("127.0.0.1:%d", ports[0]), addrs: map[string]string{},
			log: filepath.Join(dir, id+".log")}
		ports = ports[1:]
		for _, c := range meshConnectors {
			h.addrs[c], ports = fmt.Sprintf("127.0.0.1:%d", ports[0]), ports[1:]
		}
		mc.hubs[i] = h
		file := filepath.Join(dir, id+".toml")
		if err := os.WriteFile(file, []byte(meshHubConfig(h, jwtFile, meshFile, mc.redis.url)), 0o600); err != nil {
			return nil, err
		}
		if h.cmd, err = spawn(bin, h.log, nil, "cloud", "--config", file); err != nil {
			return nil, err
		}
		if err := mc.waitFor(10*time.Second, id+" healthy", func() error { return healthz(h.control) }); err != nil {
			return nil, err
		}
	}
	for i, h := range mc.hubs {
		peer := mc.hubs[1-i].id
		key := `nowconnect_mesh_links{peer="` + peer + `",state="up"}`
		if err := mc.waitFor(20*time.Second, fmt.Sprintf("%s: mesh link to %s up", h.id, peer), func() error {
			m, err := getMetrics("http://" + h.control + "/metrics")
			if err != nil {
				return err
			}
			if v := metricValue(m, key); v != 1 {
				return fmt.Errorf("%s = %v", key, v)
			}
			return nil
		}); err != nil {
			return nil, err
		}
	}
	a, b := mc.hubs[0], mc.hubs[1]
	tok, err := exec.Command(bin, "token", "--secret-file", jwtFile, "--agent-id", "bench-agent", "--no-expiry").Output()
	if err != nil {
		return nil, fmt.Errorf("nowconnect token: %w", err)
	}
	tokenFile := filepath.Join(dir, "agent.token")
	if err := os.WriteFile(tokenFile, tok, 0o600); err != nil {
		return nil, err
	}
	var ac strings.Builder
	fmt.Fprintf(&ac, "cloud_url = %q\nagent_id = \"bench-agent\"\ntoken_file = %q\nstream_window = %d\n", "ws://"+a.control+"/tunnel", tokenFile, 256<<10)
	fmt.Fprintf(&ac, "reconnect_min = \"50ms\"\nreconnect_max = \"500ms\"\n")
	for _, n := range meshConnectors {
		fmt.Fprintf(&ac, "\n[[connectors]]\nname = %q\ntarget = %q\n", n, targets[n])
	}
	fmt.Fprintf(&ac, "\n[log]\nlevel = \"warn\"\n")
	agentFile := filepath.Join(dir, "premise.toml")
	if err := os.WriteFile(agentFile, []byte(ac.String()), 0o600); err != nil {
		return nil, err
	}
	mc.agentLog = filepath.Join(dir, "agent.log")
	if mc.agent, err = spawn(bin, mc.agentLog, nil, append([]string{"premise", "--config", agentFile}, agentArgs...)...); err != nil {
		return nil, err
	}
	if err := mc.waitFor(10*time.Second, "echo through hub A (local)", func() error { return echoOnce(a.addrs["echo"]) }); err != nil {
		return nil, err
	}
	// Hub B learns who owns the agents of its connectors from the registry
	// once per heartbeat_interval (5 s by default), and again soon after a
	// client finds no agent. It reads the connectors one by one, so the
	// agent's claim may land between two reads: every connector is waited for.
	if err := mc.waitFor(20*time.Second, "echo through hub B (cross-hub)", func() error { return echoOnce(b.addrs["echo"]) }); err != nil {
		return nil, err
	}
	for _, n := range meshConnectors {
		if err := mc.waitFor(20*time.Second, n+" served through hub B", func() error { return Served(b.addrs[n]) }); err != nil {
			return nil, err
		}
	}
	return mc, nil
}

// Served returns nil when a client of addr is carried to a target rather
// than closed at once (no agent): it gets data, or nothing for a while.
// The e2e tests wait on it too.
func Served(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	var b [1]byte
	_, err = c.Read(b[:])
	if ne := net.Error(nil); err == nil || errors.As(err, &ne) && ne.Timeout() {
		return nil
	}
	return fmt.Errorf("closed at once: %w", err)
}

// meshHubConfig is a hub's cloud.toml: the other scenarios' defaults plus
// [ha] and [ha.mesh].
func meshHubConfig(h *meshHub, jwtFile, meshFile, redisURL string) string {
	var c strings.Builder
	fmt.Fprintf(&c, "listen = %q\n", h.control)
	for _, n := range meshConnectors {
		fmt.Fprintf(&c, "\n[[listeners]]\nname = %q\nbind = %q\nconnector = %q\n", n, h.addrs[n], n)
	}
	fmt.Fprintf(&c, "\n[auth]\njwt_secret_file = %q\n", jwtFile)
	fmt.Fprintf(&c, "\n[tunnel]\nstream_window = %d\nmax_frame_payload = %d\n", 256<<10, 65536)
	fmt.Fprintf(&c, "\n[engine]\nevent_loops = 0\n")
	fmt.Fprintf(&c, "\n[log]\nlevel = \"warn\"\n")
	fmt.Fprintf(&c, "\n[ha]\nenabled = true\nmode = \"active\"\nreplica_id = %q\nredis_url = %q\n", h.id, redisURL)
	fmt.Fprintf(&c, "\n[ha.mesh]\nsecret_file = %q\nadvertise_url = %q\n", meshFile, "ws://"+h.control+"/mesh")
	return c.String()
}

// waitFor polls cond every 20 ms until it returns nil, a process of the
// cluster exits, or timeout.
func (mc *meshCluster) waitFor(timeout time.Duration, what string, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		last := cond()
		if last == nil {
			return nil
		}
		if err := mc.exited(); err != nil {
			return fmt.Errorf("waiting for %s: %w", what, err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not after %v: %v\n%s", what, timeout, last, mc.logs())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// procs are the cluster's processes and their logs.
func (mc *meshCluster) procs() (cmds []*exec.Cmd, logs []string) {
	if mc.redis != nil {
		cmds, logs = append(cmds, mc.redis.cmd), append(logs, mc.redis.log)
	}
	for _, h := range mc.hubs {
		if h != nil {
			cmds, logs = append(cmds, h.cmd), append(logs, h.log)
		}
	}
	return append(cmds, mc.agent), append(logs, mc.agentLog)
}

// exited reaps and reports a process of the cluster that has exited.
func (mc *meshCluster) exited() error {
	cmds, _ := mc.procs()
	for _, c := range cmds {
		if err := reapExited(c); err != nil {
			return fmt.Errorf("%w; logs:\n%s", err, mc.logs())
		}
	}
	return nil
}

func (mc *meshCluster) logs() string {
	var b strings.Builder
	_, logs := mc.procs()
	for _, f := range logs {
		if f == "" {
			continue
		}
		data, _ := os.ReadFile(f)
		fmt.Fprintf(&b, "--- %s\n%s", filepath.Base(f), tailStr(string(data), 4000))
	}
	return b.String()
}

// Close stops the agent and the hubs together (SIGTERM, then SIGKILL
// after 5 s), then redis-server.
func (mc *meshCluster) Close() {
	var wg sync.WaitGroup
	cmds, _ := mc.procs()
	for _, c := range cmds {
		if mc.redis != nil && c == mc.redis.cmd {
			continue
		}
		wg.Go(func() { stopCmd(c) })
	}
	wg.Wait()
	if mc.redis != nil {
		stopCmd(mc.redis.cmd)
	}
	_ = os.RemoveAll(mc.dir)
}

// reapExited reports (and reaps) c when it has exited; nil while it runs.
func reapExited(c *exec.Cmd) error {
	if c == nil || c.Process == nil {
		return nil
	}
	var ws syscall.WaitStatus
	pid, _ := syscall.Wait4(c.Process.Pid, &ws, syscall.WNOHANG, nil)
	if pid != c.Process.Pid {
		return nil
	}
	c.Process = nil // reaped: stopCmd skips it
	return fmt.Errorf("%s %s exited (%d)", filepath.Base(c.Path), strings.Join(c.Args[1:min(2, len(c.Args))], " "), ws.ExitStatus())
}

func pidOf(c *exec.Cmd) int {
	if c == nil || c.Process == nil {
		return 0
	}
	return c.Process.Pid
}

// healthz asks a control port's /healthz once.
func healthz(control string) error {
	resp, err := httpClient.Get("http://" + control + "/healthz")
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("/healthz: %s", resp.Status)
	}
	return nil
}

// ---------------------------------------------------------------------------
// redis-server (the registry), without persistence, on a free loopback port.

type redisProc struct {
	addr, url string
	cmd       *exec.Cmd
	log       string
}

// errNoRedis is returned when no redis-server binary is found.
var errNoRedis = errors.New("redis-server not found in PATH or /usr/bin (bash scripts/deps.sh installs it)")

func startRedis(dir string) (*redisProc, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if _, serr := os.Stat("/usr/bin/redis-server"); serr != nil {
			return nil, errNoRedis
		}
		bin = "/usr/bin/redis-server"
	}
	ports, err := freePorts(1)
	if err != nil {
		return nil, err
	}
	rd := &redisProc{addr: fmt.Sprintf("127.0.0.1:%d", ports[0]), log: filepath.Join(dir, "redis.log")}
	rd.url = "redis://" + rd.addr + "/0"
	rd.cmd, err = spawn(bin, rd.log, nil, "--port", fmt.Sprint(ports[0]), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", dir, "--daemonize", "no")
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		last := redisPing(rd.addr)
		if last == nil {
			return rd, nil
		}
		if err := reapExited(rd.cmd); err != nil {
			data, _ := os.ReadFile(rd.log)
			return nil, fmt.Errorf("%w:\n%s", err, tailStr(string(data), 4000))
		}
		if time.Now().After(deadline) {
			stopCmd(rd.cmd)
			return nil, fmt.Errorf("redis-server on %s: no PONG after 10s: %v", rd.addr, last)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// redisPing sends PING (RESP) and wants +PONG.
func redisPing(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := io.WriteString(c, "*1\r\n$4\r\nPING\r\n"); err != nil {
		return err
	}
	var b [7]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return err
	}
	if string(b[:]) != "+PONG\r\n" {
		return fmt.Errorf("PING answered %q", b[:])
	}
	return nil
}
