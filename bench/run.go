package bench

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Options configure a run.
type Options struct {
	Mode     string // "procs" (default): hub and agent as separate processes; "inproc": in this process
	Smoke    bool   // every scenario at tiny sizes and durations
	Binary   string // nowconnect binary for procs mode; "" builds ./cmd/nowconnect from Root
	Root     string // module root
	WorkDir  string // scratch directory ("" = a new temp dir)
	ChildExe string // executable re-run as the idle echo target ("" = os.Executable())
	Only     []string
	NoSweeps bool
	Command  string // recorded in the report
	// MemProfile, in inproc mode, is written (heap profile) once the
	// largest idle connection count is open; set runtime.MemProfileRate
	// low before anything allocates for a useful per-stream attribution.
	MemProfile string
	Progress   io.Writer // nil: silent
	TTY        bool      // Progress is a terminal: one updating line

	// AgentArgs are extra `nowconnect premise` flags for every gateway of
	// the run (procs mode), e.g. {"--tunnels", "1"} for an A-B of the
	// tunnel count.
	AgentArgs []string

	// Overrides; zero = defaults for the mode.
	Warm, Dur, SweepDur time.Duration
	OpenRates           []int
	IdleCounts          []int
}

// Scenario names for Options.Only.
var Scenarios = []string{"thr", "rr", "open", "setup", "slow", "idle", "wan", "mesh", "sweep"}

type runner struct {
	opts      Options
	quietLeft time.Duration // run-wide budget for waiting on background load
	childPid  int
	rep       *Report
	p         *progress
	t         *Targets
	idleTgt   string
	work      string
	bin       string
	w         window
	sw        window
	multi     int
	rrConns   []int
}

func (r *runner) want(s string) bool {
	return len(r.opts.Only) == 0 || slices.Contains(r.opts.Only, s)
}

// Run runs the scenarios and returns the report (also on error, as far as
// it got).
func Run(opts Options) (*Report, error) {
	if opts.Mode == "" {
		opts.Mode = "procs"
	}
	if opts.Mode != "procs" && opts.Mode != "inproc" {
		return nil, fmt.Errorf("mode %q: want procs or inproc", opts.Mode)
	}
	for _, o := range opts.Only {
		if !slices.Contains(Scenarios, o) {
			return nil, fmt.Errorf("unknown scenario %q (have %s)", o, strings.Join(Scenarios, ", "))
		}
	}
	if opts.Mode == "inproc" && slices.Contains(opts.Only, "mesh") {
		return nil, errors.New("scenario mesh needs -mode procs: it runs two hub processes, an agent and a redis-server")
	}
	nofile := raiseNoFile()
	r := &runner{opts: opts, p: newProgress(opts.Progress, opts.TTY), quietLeft: 20 * time.Second}
	defer r.p.close()
	r.rep = &Report{Schema: 1, Started: time.Now(), Command: opts.Command, Mode: opts.Mode, Smoke: opts.Smoke, Only: opts.Only}
	r.rep.Machine = machineInfo()
	r.rep.Machine.NoFile = nofile
	cfg := &r.rep.Config
	cfg.ReqSize, cfg.RespSize = 100, 1024
	if opts.Smoke {
		r.w = window{warm: 50 * time.Millisecond, dur: 150 * time.Millisecond}
		r.sw = window{warm: 30 * time.Millisecond, dur: 100 * time.Millisecond}
		r.multi = 8
		r.rrConns = []int{10, 50}
		cfg.OpenRates = []int{500, 2000}
		cfg.IdleCounts = []int{20, 100}
		cfg.SlowStreams = 4
		cfg.SetupParallel = 8
	} else {
		r.w = window{warm: 500 * time.Millisecond, dur: 2 * time.Second}
		r.sw = window{warm: 300 * time.Millisecond, dur: 1200 * time.Millisecond}
		r.multi = 8
		r.rrConns = []int{50, 500}
		cfg.OpenRates = []int{5000, 10000, 20000, 30000}
		cfg.IdleCounts = []int{1000, 10000}
		cfg.SlowStreams = 4
		cfg.SetupParallel = 32
	}
	if opts.Warm > 0 {
		r.w.warm = opts.Warm
	}
	if opts.Dur > 0 {
		r.w.dur = opts.Dur
	}
	if opts.SweepDur > 0 {
		r.sw.dur = opts.SweepDur
	}
	if len(opts.OpenRates) > 0 {
		cfg.OpenRates = opts.OpenRates
	}
	if len(opts.IdleCounts) > 0 {
		cfg.IdleCounts = opts.IdleCounts
	}
	cfg.WarmSec, cfg.DurSec, cfg.SweepDurSec = r.w.warm.Seconds(), r.w.dur.Seconds(), r.sw.dur.Seconds()
	cfg.RRConns, cfg.MultiStreams = r.rrConns, r.multi

	err := r.run()
	r.rep.Seconds = time.Since(r.rep.Started).Seconds()
	r.rep.Figures = figures(r.rep)
	return r.rep, err
}

func (r *runner) run() error {
	work := r.opts.WorkDir
	if work == "" {
		d, err := os.MkdirTemp("", "nc-bench-*")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		work = d
	}
	r.work = work
	if r.opts.Mode == "procs" {
		r.bin = r.opts.Binary
		if r.bin == "" {
			r.p.phase("building ./cmd/nowconnect", nil, "", 0)
			b, err := BuildBinary(r.opts.Root, work)
			if err != nil {
				return err
			}
			r.bin = b
		}
	}
	t, err := StartTargets(r.rep.Config.ReqSize, r.rep.Config.RespSize)
	if err != nil {
		return err
	}
	defer t.Close()
	r.t = t
	if r.want("idle") {
		exe := r.opts.ChildExe
		if exe == "" {
			if exe, err = os.Executable(); err != nil {
				return err
			}
		}
		child, err := startChild(exe, "echo")
		if err != nil {
			return err
		}
		defer child.Close()
		r.idleTgt = child.Addr
		r.childPid = child.Pid
	}

	if r.want("thr") || r.want("rr") || r.want("open") || r.want("setup") || r.want("slow") {
		r.p.phase("starting gateway (defaults)", nil, "", 0)
		gw, err := r.gateway(GatewayConfig{})
		if err != nil {
			return err
		}
		err = r.mainScenarios(gw)
		gw.Close()
		if err != nil {
			return err
		}
	}
	if r.want("idle") {
		if err := r.idle(); err != nil {
			return fmt.Errorf("idle: %w", err)
		}
	}
	if r.want("wan") {
		if err := r.wan(); err != nil {
			return fmt.Errorf("wan: %w", err)
		}
	}
	if r.want("mesh") {
		if r.opts.Mode != "procs" {
			r.note("mesh: not measured in %s mode (it runs two hub processes, an agent and a redis-server)", r.opts.Mode)
		} else if err := r.mesh(); err != nil {
			return fmt.Errorf("mesh: %w", err)
		}
	}
	if r.want("sweep") && !r.opts.NoSweeps {
		if err := r.sweeps(); err != nil {
			return fmt.Errorf("sweeps: %w", err)
		}
	}
	return nil
}

// quiet waits (full runs only, at most 5 s per figure and 20 s per run)
// until other processes use less than a quarter of a core, and returns a
// meter for the figure.
func (r *runner) quiet(gw Gateway) *bgMeter {
	var pids []int
	if gw != nil {
		h, a := gw.Pids()
		pids = append(pids, h, a)
	}
	return r.quietPids(pids...)
}

// quietPids is quiet for a scenario whose own processes are pids (besides
// the runner and the idle target).
func (r *runner) quietPids(pids ...int) *bgMeter {
	pids = append(pids, r.childPid)
	if !r.opts.Smoke {
		start := time.Now()
		deadline := start.Add(min(5*time.Second, r.quietLeft))
		for r.quietLeft > 0 {
			m := startBg(pids...)
			time.Sleep(300 * time.Millisecond)
			c := m.cores()
			if c < 0.25 || time.Now().After(deadline) {
				break
			}
			r.p.phase(fmt.Sprintf("waiting for background load (%.2f cores) to settle", c), nil, "", 0)
		}
		if waited := time.Since(start) - 300*time.Millisecond; waited > 0 {
			r.quietLeft -= waited
		}
	}
	return startBg(pids...)
}

func (r *runner) note(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	r.rep.Notes = append(r.rep.Notes, msg)
	r.p.note("note: %s", msg)
}

func (r *runner) connectors() connectors {
	c := connectors{"sink": r.t.Sink, "source": r.t.Source, "echo": r.t.Echo, "once": r.t.Once, "rr": r.t.RR}
	if r.idleTgt != "" {
		c["idle"] = r.idleTgt
	}
	return c
}

func (r *runner) gateway(cfg GatewayConfig) (Gateway, error) {
	if len(r.opts.AgentArgs) > 0 && r.opts.Mode != "inproc" {
		cfg.AgentArgs = append(append([]string(nil), r.opts.AgentArgs...), cfg.AgentArgs...)
	}
	if r.opts.Mode == "inproc" {
		return startInprocGateway(cfg, r.connectors())
	}
	return startProcGateway(r.bin, r.work, cfg, r.connectors())
}

// paths yields the direct address and the gateway address of a target.
func (r *runner) paths(gw Gateway, connector, direct string) [2][2]string {
	return [2][2]string{{"direct", direct}, {"gateway", gw.Addr(connector)}}
}

func (r *runner) mainScenarios(gw Gateway) error {
	hubPid, agentPid := gw.Pids()
	pids := [2]int{hubPid, agentPid}
	if r.want("thr") {
		for _, streams := range []int{1, r.multi} {
			for _, up := range []bool{true, false} {
				conn, direct, dir := "source", r.t.Source, "download"
				if up {
					conn, direct, dir = "sink", r.t.Sink, "upload"
				}
				for _, p := range r.paths(gw, conn, direct) {
					label := fmt.Sprintf("throughput %d-stream %s, %s", streams, dir, p[0])
					bg := r.quiet(gw)
					res, err := throughput(r.p, label, r.t, p[1], streams, up, r.w, pids)
					if err != nil {
						return fmt.Errorf("%s: %w", label, err)
					}
					res.Path, res.BgCPU = p[0], bg.cores()
					if res.Errors > 0 {
						r.note("%s: %d of %d streams failed (reset) during the measurement", label, res.Errors, streams)
					}
					r.rep.Throughput = append(r.rep.Throughput, res)
					r.p.note("%s: %.2f Gbit/s", label, res.BytesPerSec*8/1e9)
				}
			}
		}
	}
	cfg := r.rep.Config
	if r.want("rr") {
		for _, n := range r.rrConns {
			for _, p := range r.paths(gw, "rr", r.t.RR) {
				label := fmt.Sprintf("req/resp closed loop, %d conns, %s", n, p[0])
				bg := r.quiet(gw)
				res, err := rrClosed(r.p, label, p[1], n, cfg.ReqSize, cfg.RespSize, r.w)
				if err != nil {
					return fmt.Errorf("%s: %w", label, err)
				}
				res.Path, res.BgCPU = p[0], bg.cores()
				r.rep.ReqResp = append(r.rep.ReqResp, res)
				r.p.note("%s: %.0f req/s, p50 %.0fµs p99 %.0fµs", label, res.Rate, res.Latency.P50, res.Latency.P99)
			}
		}
	}
	if r.want("open") {
		for _, n := range r.rrConns {
			for _, rate := range cfg.OpenRates {
				for _, p := range r.paths(gw, "rr", r.t.RR) {
					label := fmt.Sprintf("req/resp open loop, %d conns at %d/s, %s", n, rate, p[0])
					bg := r.quiet(gw)
					res, err := rrOpen(r.p, label, p[1], n, cfg.ReqSize, cfg.RespSize, float64(rate), r.w)
					if err != nil {
						return fmt.Errorf("%s: %w", label, err)
					}
					res.Path, res.BgCPU = p[0], bg.cores()
					r.rep.ReqResp = append(r.rep.ReqResp, res)
					r.p.note("%s: %.0f req/s, p50 %.0fµs p99 %.0fµs (unfinished %d)", label, res.Rate, res.Latency.P50, res.Latency.P99, res.Unfinished)
				}
			}
		}
	}
	if r.want("setup") {
		for _, par := range []int{1, cfg.SetupParallel} { // unloaded first-byte latency, then the rate
			for _, p := range r.paths(gw, "once", r.t.Once) {
				label := fmt.Sprintf("connection setup, %d parallel, %s", par, p[0])
				bg := r.quiet(gw)
				res := setupRate(r.p, label, p[1], par, r.w)
				res.Path, res.BgCPU = p[0], bg.cores()
				r.rep.Setup = append(r.rep.Setup, res)
				r.p.note("%s: %.0f conn/s, first byte p50 %.0fµs p99 %.0fµs, errors %d", label, res.Rate, res.FirstByte.P50, res.FirstByte.P99, res.Errors)
				// Let TIME_WAIT sockets and the gateway's teardown settle.
				time.Sleep(r.w.warm)
			}
		}
	}
	if r.want("slow") {
		for _, p := range r.paths(gw, "source", r.t.Source) {
			label := fmt.Sprintf("slow consumer, %d streams, %s", cfg.SlowStreams, p[0])
			bg := r.quiet(gw)
			res, err := slowConsumer(r.p, label, p[1], cfg.SlowStreams, r.w)
			if err != nil {
				return fmt.Errorf("%s: %w", label, err)
			}
			res.Path, res.BgCPU = p[0], bg.cores()
			if p[0] == "gateway" && hubPid > 0 {
				res.StallHubCPU, res.StallAgentCPU = stalledCPU(r.p, p[1], hubPid, agentPid, r.w)
				r.p.note("one stalled client and no other traffic: hub %.1f%%, agent %.1f%% of a core", 100*res.StallHubCPU, 100*res.StallAgentCPU)
			}
			r.rep.Slow = append(r.rep.Slow, res)
			r.p.note("%s: %.2f → %.2f Gbit/s (%.2f×)", label, res.BaseBPS*8/1e9, res.StalledBPS*8/1e9, res.Ratio)
		}
	}
	return nil
}

// idle measures the hub's and the agent's RSS per idle tunneled connection
// on a fresh gateway (so that buffers left by bulk transfers do not absorb
// the growth). Clients are in this process, the targets in a child.
func (r *runner) idle() error {
	r.p.phase("idle: starting a fresh gateway", nil, "", 0)
	gw, err := r.gateway(GatewayConfig{})
	if err != nil {
		return err
	}
	defer gw.Close()
	hubPid, agentPid := gw.Pids()
	time.Sleep(r.settle())
	hb, err := readProc(hubPid)
	if err != nil {
		return err
	}
	ab, err := readProc(agentPid)
	if err != nil {
		return err
	}
	hm0, hubOK := readGoMem(gw.HubMetrics)
	am0, agentOK := readGoMem(gw.AgentMetrics)
	var conns []net.Conn
	defer func() { closeAll(conns) }()
	if r.opts.Mode == "inproc" {
		return r.idleInproc(gw)
	}
	for _, n := range r.rep.Config.IdleCounts {
		start := time.Now()
		label := fmt.Sprintf("idle: opening %d connections", n)
		conns, err = openIdle(r.p, label, gw.Addr("idle"), conns, n, 64)
		if err != nil {
			return err
		}
		res := IdleResult{Conns: n, OpenSeconds: time.Since(start).Seconds()}
		r.p.phase(fmt.Sprintf("idle: %d connections open, settling", n), nil, "", 0)
		time.Sleep(r.settle())
		res.HubActive = activeStreams(gw, "idle")
		h, err := readProc(hubPid)
		if err != nil {
			return err
		}
		a, err := readProc(agentPid)
		if err != nil {
			return err
		}
		res.HubRSSBase, res.HubRSS, res.AgentRSSBase, res.AgentRSS = hb.RSS, h.RSS, ab.RSS, a.RSS
		res.HubPerConn = float64(h.RSS-hb.RSS) / float64(n)
		res.AgentPerConn = float64(a.RSS-ab.RSS) / float64(n)
		res.HubAnonPer = float64(h.RssAnon-hb.RssAnon) / float64(n)
		res.AgentAnonPer = float64(a.RssAnon-ab.RssAnon) / float64(n)
		if hm, ok := readGoMem(gw.HubMetrics); ok && hubOK {
			res.HubHeapPerConn, res.HubStackPerConn = (hm.heap-hm0.heap)/float64(n), (hm.stack-hm0.stack)/float64(n)
		} else {
			res.HeapNote = "the hub's /metrics has no go_memstats_*"
		}
		if am, ok := readGoMem(gw.AgentMetrics); ok && agentOK {
			res.AgentHeapPerConn, res.AgentStackPerConn = (am.heap-am0.heap)/float64(n), (am.stack-am0.stack)/float64(n)
		} else {
			res.HeapNote = strings.TrimPrefix(res.HeapNote+"; the agent serves no /metrics with go_memstats_* (metrics_listen)", "; ")
		}
		r.rep.Idle = append(r.rep.Idle, res)
		r.p.note("idle %d conns: hub %.2f KiB/conn RSS, %.2f heap, %.2f stacks; agent %.2f KiB/conn RSS, %.2f heap, %.2f stacks; hub active streams %d",
			n, res.HubPerConn/1024, res.HubHeapPerConn/1024, res.HubStackPerConn/1024,
			res.AgentPerConn/1024, res.AgentHeapPerConn/1024, res.AgentStackPerConn/1024, res.HubActive)
	}
	return nil
}

// idleInproc measures the runner's heap and stacks per idle connection
// with hub and agent in this process: hub, agent and the client side
// together (the target is in the child). Each connection costs three
// descriptors here, so counts are capped to what RLIMIT_NOFILE allows.
func (r *runner) idleInproc(gw Gateway) error {
	limit := int(r.rep.Machine.NoFile) - 1000
	var conns []net.Conn
	defer func() { closeAll(conns) }()
	time.Sleep(time.Second) // let the previous scenarios' goroutines finish
	heapNow()
	base := heapNow()
	rb, _ := readProc(0)
	counts := r.rep.Config.IdleCounts
	for i, n := range counts {
		if 3*n > limit {
			capped := limit / 3 / 1000 * 1000
			if capped <= 0 || (i > 0 && capped <= counts[i-1]) {
				r.note("inproc idle: %d connections need %d descriptors in one process (limit %d): skipped", n, 3*n, limit+1000)
				continue
			}
			r.note("inproc idle: %d connections need %d descriptors in one process (limit %d): measured %d instead", n, 3*n, limit+1000, capped)
			n = capped
		}
		start := time.Now()
		var err error
		conns, err = openIdle(r.p, fmt.Sprintf("idle (inproc): opening %d connections", n), gw.Addr("idle"), conns, n, 64)
		if err != nil {
			return err
		}
		res := IdleResult{Conns: n, OpenSeconds: time.Since(start).Seconds(), Inproc: true}
		time.Sleep(r.settle())
		res.HubActive = activeStreams(gw, "idle")
		h := heapNow()
		st, _ := readProc(0)
		res.HeapPerConn = float64(h.heap-base.heap) / float64(n)
		res.StackPerConn = float64(h.stack-base.stack) / float64(n)
		res.HubRSSBase, res.HubRSS = rb.RSS, st.RSS
		res.HubPerConn = float64(st.RSS-rb.RSS) / float64(n)
		r.rep.Idle = append(r.rep.Idle, res)
		r.p.note("idle (inproc) %d conns: heap %.2f KiB/conn, stacks %.2f KiB/conn, RSS %.2f KiB/conn (hub+agent+client)",
			n, res.HeapPerConn/1024, res.StackPerConn/1024, res.HubPerConn/1024)
	}
	if r.opts.MemProfile != "" {
		if err := writeHeapProfile(r.opts.MemProfile); err != nil {
			return err
		}
		r.note("heap profile with %d idle connections open written to %s", len(conns), r.opts.MemProfile)
	}
	return nil
}

func (r *runner) settle() time.Duration {
	if r.opts.Smoke {
		return 100 * time.Millisecond
	}
	return time.Second
}

// activeStreams reads nowconnect_tcp_active_connections{connector=...}.
func activeStreams(gw Gateway, connector string) int {
	m, err := gw.HubMetrics()
	if err != nil {
		return -1
	}
	key := `nowconnect_tcp_active_connections{connector="` + connector + `"}`
	for _, l := range strings.Split(m, "\n") {
		if v, ok := strings.CutPrefix(l, key+" "); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return int(f)
		}
	}
	return -1
}

// sweepDef is one swept parameter.
type sweepDef struct {
	param, key string
	values     []int
	set        func(*GatewayConfig, int)
}

func (r *runner) sweepDefs() []sweepDef {
	defs := []sweepDef{
		{"window", "tunnel.stream_window (hub) and stream_window (agent)", []int{64 << 10, 256 << 10, 1 << 20, 4 << 20},
			func(c *GatewayConfig, v int) { c.Window = v }},
		{"queue depth", "queue_depth_per_cid", []int{16, 64, 256},
			func(c *GatewayConfig, v int) { c.QueueDepth = v }},
		{"read buffer", "engine.read_buffer_bytes", []int{16 << 10, 64 << 10, 256 << 10},
			func(c *GatewayConfig, v int) { c.ReadBuffer = v }},
		{"event loops", "engine.event_loops", []int{1, 2, 4},
			func(c *GatewayConfig, v int) { c.EventLoops = v }},
	}
	if r.opts.Smoke { // one non-default value each: exercises every sweep
		for i := range defs {
			defs[i].values = defs[i].values[:1]
		}
	}
	return defs
}

func (r *runner) sweeps() error {
	cfg := r.rep.Config
	rec := GatewayConfig{}
	for _, d := range r.sweepDefs() {
		sw := Sweep{Param: d.param, Key: d.key}
		for _, v := range d.values {
			var gc GatewayConfig
			d.set(&gc, v)
			pt := SweepPoint{Value: v}
			label := fmt.Sprintf("sweep %s=%s", d.param, sweepVal(d.param, v))
			r.p.phase(label+": starting gateway", nil, "", 0)
			gw, err := r.gateway(gc)
			if err != nil {
				pt.Error = err.Error()
				sw.Points = append(sw.Points, pt)
				r.note("%s: %v", label, err)
				continue
			}
			hp, ap := gw.Pids()
			pids := [2]int{hp, ap}
			bg := r.quiet(gw)
			thr := func(what, conn string, streams int, up bool, dst *float64) {
				res, err := throughput(r.p, label+": "+what, r.t, gw.Addr(conn), streams, up, r.sw, pids)
				switch {
				case err != nil:
					pt.Error = what + ": " + err.Error()
				case res.Errors > 0:
					pt.Error = fmt.Sprintf("%s: %d of %d streams reset by the gateway", what, res.Errors, streams)
					*dst = res.BytesPerSec
				default:
					*dst = res.BytesPerSec
				}
			}
			thr("1-stream upload", "sink", 1, true, &pt.Up1)
			thr("1-stream download", "source", 1, false, &pt.Down1)
			thr(fmt.Sprintf("%d-stream download", r.multi), "source", r.multi, false, &pt.Down8)
			if res, err := rrClosed(r.p, label+": req/resp 50 conns", gw.Addr("rr"), r.rrConns[0], cfg.ReqSize, cfg.RespSize, r.sw); err == nil {
				pt.RR50, pt.RR50P99 = res.Rate, res.Latency.P99
			} else {
				pt.Error = err.Error()
			}
			if d.param == "queue depth" { // the per-stream queue is what a slow client fills
				if res, err := slowConsumer(r.p, label+": slow consumer", gw.Addr("source"), cfg.SlowStreams, r.sw); err == nil {
					pt.SlowIso = res.Ratio
				} else {
					pt.Error = err.Error()
				}
			}
			pt.BgCPU = bg.cores()
			gw.Close()
			sw.Points = append(sw.Points, pt)
			r.p.note("%s: up1 %.2f down1 %.2f down8 %.2f Gbit/s, rr50 %.0f/s p99 %.0fµs",
				label, pt.Up1*8/1e9, pt.Down1*8/1e9, pt.Down8*8/1e9, pt.RR50, pt.RR50P99)
			if pt.Error != "" {
				r.note("%s: %s", label, pt.Error)
			}
		}
		recommend(&sw)
		d.set(&rec, sw.Recommended)
		r.rep.Sweeps = append(r.rep.Sweeps, sw)
	}
	r.rep.Recommended = &rec
	return nil
}

// recommend scores every point by the geometric mean of its figures, each
// relative to the best of the sweep, and picks the smallest value (least
// memory, fewest threads) within 10% of the best score: bigger values cost
// memory per stream (window, queue, buffer) or threads (loops), and
// differences under 10% are within the run-to-run noise of a small shared
// machine.
func recommend(sw *Sweep) {
	get := []func(*SweepPoint) float64{
		func(p *SweepPoint) float64 { return p.Up1 },
		func(p *SweepPoint) float64 { return p.Down1 },
		func(p *SweepPoint) float64 { return p.Down8 },
		func(p *SweepPoint) float64 { return p.RR50 },
	}
	best := make([]float64, len(get))
	for i := range sw.Points {
		for k, g := range get {
			best[k] = math.Max(best[k], g(&sw.Points[i]))
		}
	}
	top := 0.0
	for i := range sw.Points {
		p := &sw.Points[i]
		if p.Error != "" {
			continue
		}
		s, n := 0.0, 0
		for k, g := range get {
			if best[k] > 0 {
				s += math.Log(math.Max(g(p), 1e-9) / best[k])
				n++
			}
		}
		if n > 0 {
			p.Score = math.Exp(s / float64(n))
		}
		top = math.Max(top, p.Score)
	}
	for _, p := range sw.Points {
		if p.Error == "" && p.Score >= 0.9*top {
			sw.Recommended = p.Value
			sw.Why = fmt.Sprintf("smallest value within 10%% of the best score (%.3f of %.3f)", p.Score, top)
			return
		}
	}
}

func sweepVal(param string, v int) string {
	if param == "queue depth" || param == "event loops" {
		return strconv.Itoa(v)
	}
	return sizeStr(v)
}

// figures derives the targets table.
func figures(rep *Report) []Figure {
	var out []Figure
	met := func(b bool) *bool { return &b }
	thr := func(streams int, dir, name string) {
		var d, g *ThroughputResult
		for i := range rep.Throughput {
			t := &rep.Throughput[i]
			if t.Streams == streams && t.Direction == dir {
				if t.Path == "direct" {
					d = t
				} else {
					g = t
				}
			}
		}
		if d == nil || g == nil || d.BytesPerSec == 0 {
			return
		}
		ratio := g.BytesPerSec / d.BytesPerSec
		out = append(out, Figure{Name: name, Unit: "Gbit/s", Direct: d.BytesPerSec * 8 / 1e9, Gateway: g.BytesPerSec * 8 / 1e9,
			Ratio: ratio, Target: "≥0.5×", Met: met(ratio >= 0.5), BgCPU: max(d.BgCPU, g.BgCPU)})
	}
	thr(1, "upload", "1-stream throughput, upload (client→target)")
	thr(1, "download", "1-stream throughput, download (target→client)")
	thr(rep.Config.MultiStreams, "upload", fmt.Sprintf("%d-stream throughput, upload", rep.Config.MultiStreams))
	thr(rep.Config.MultiStreams, "download", fmt.Sprintf("%d-stream throughput, download", rep.Config.MultiStreams))
	rr := func(conns int) (d, g *RRResult) {
		for i := range rep.ReqResp {
			x := &rep.ReqResp[i]
			if x.Mode == "closed" && x.Conns == conns {
				if x.Path == "direct" {
					d = x
				} else {
					g = x
				}
			}
		}
		return
	}
	for i, n := range rep.Config.RRConns {
		d, g := rr(n)
		if d == nil || g == nil || d.Rate == 0 {
			continue
		}
		ratio := g.Rate / d.Rate
		out = append(out, Figure{Name: fmt.Sprintf("req/resp rate, %d conns (closed loop)", n), Unit: "req/s",
			Direct: d.Rate, Gateway: g.Rate, Ratio: ratio, Target: "≥0.6×", Met: met(ratio >= 0.6), BgCPU: max(d.BgCPU, g.BgCPU)})
		if i == 0 && d.Latency.P99 > 0 {
			lr := g.Latency.P99 / d.Latency.P99
			out = append(out, Figure{Name: fmt.Sprintf("req/resp p99, %d conns (closed loop)", n), Unit: "µs",
				Direct: d.Latency.P99, Gateway: g.Latency.P99, Ratio: lr, Target: "≤2× direct", Met: met(lr <= 2), BgCPU: max(d.BgCPU, g.BgCPU)})
		}
	}
	setup := func(par int) (d, g *SetupResult) {
		for i := range rep.Setup {
			if rep.Setup[i].Parallel != par {
				continue
			}
			if rep.Setup[i].Path == "direct" {
				d = &rep.Setup[i]
			} else {
				g = &rep.Setup[i]
			}
		}
		return
	}
	if sd, sg := setup(rep.Config.SetupParallel); sd != nil && sg != nil && sd.Rate > 0 {
		ratio := sg.Rate / sd.Rate
		out = append(out, Figure{Name: fmt.Sprintf("new connections/s (%d in parallel, first byte echoed)", sd.Parallel), Unit: "conn/s",
			Direct: sd.Rate, Gateway: sg.Rate, Ratio: ratio, Target: "≥0.5×", Met: met(ratio >= 0.5), BgCPU: max(sd.BgCPU, sg.BgCPU)})
		if sd.FirstByte.P99 > 0 {
			out = append(out, Figure{Name: "first-byte latency p99 at that rate", Unit: "µs", Direct: sd.FirstByte.P99,
				Gateway: sg.FirstByte.P99, Ratio: sg.FirstByte.P99 / sd.FirstByte.P99, BgCPU: max(sd.BgCPU, sg.BgCPU)})
		}
	}
	if sd, sg := setup(1); sd != nil && sg != nil && sd.FirstByte.P50 > 0 {
		out = append(out, Figure{Name: "first-byte latency p50, one connection at a time (unloaded)", Unit: "µs", Direct: sd.FirstByte.P50,
			Gateway: sg.FirstByte.P50, Ratio: sg.FirstByte.P50 / sd.FirstByte.P50, BgCPU: max(sd.BgCPU, sg.BgCPU)})
	}
	for _, id := range rep.Idle {
		if id.Inproc {
			continue
		}
		out = append(out, Figure{Name: fmt.Sprintf("idle memory per tunneled conn, hub, %s conns (RSS)", countStr(id.Conns)), Unit: "KiB",
			Gateway: id.HubPerConn / 1024, Target: "≤2 KiB", Met: met(id.HubPerConn <= 2048), NoDirect: true})
		out = append(out, Figure{Name: fmt.Sprintf("idle memory per tunneled conn, agent, %s conns (RSS)", countStr(id.Conns)), Unit: "KiB",
			Gateway: id.AgentPerConn / 1024, Target: "≤4 KiB", Met: met(id.AgentPerConn <= 4096), NoDirect: true})
		if id.HeapNote == "" {
			hub := id.HubHeapPerConn + id.HubStackPerConn
			agent := id.AgentHeapPerConn + id.AgentStackPerConn
			out = append(out, Figure{Name: fmt.Sprintf("idle memory per tunneled conn, hub, %s conns (Go heap + stacks)", countStr(id.Conns)), Unit: "KiB",
				Gateway: hub / 1024, Target: "≤2 KiB", Met: met(hub <= 2048), NoDirect: true})
			out = append(out, Figure{Name: fmt.Sprintf("idle memory per tunneled conn, agent, %s conns (Go heap + stacks)", countStr(id.Conns)), Unit: "KiB",
				Gateway: agent / 1024, Target: "≤4 KiB", Met: met(agent <= 4096), NoDirect: true})
		}
	}
	var xd, xg *SlowResult
	for i := range rep.Slow {
		if rep.Slow[i].Path == "direct" {
			xd = &rep.Slow[i]
		} else {
			xg = &rep.Slow[i]
		}
	}
	if xg != nil {
		f := Figure{Name: fmt.Sprintf("slow-consumer isolation (%d streams' throughput with one client stalled ÷ without)", xg.Streams),
			Unit: "×", Gateway: xg.Ratio, Ratio: xg.Ratio, Target: "≥0.9×", Met: met(xg.Ratio >= 0.9), BgCPU: xg.BgCPU}
		if xd != nil {
			f.Direct = xd.Ratio
			f.BgCPU = max(f.BgCPU, xd.BgCPU)
		}
		out = append(out, f)
	}
	for _, t := range rep.Throughput {
		if t.Path != "gateway" || t.Streams != 1 || t.Bytes == 0 || rep.Mode != "procs" {
			continue
		}
		gb := float64(t.Bytes) / 1e9
		var direct float64
		for _, d := range rep.Throughput {
			if d.Path == "direct" && d.Streams == 1 && d.Direction == t.Direction && d.Bytes > 0 {
				direct = d.RunnerCPU / (float64(d.Bytes) / 1e9)
			}
		}
		g := (t.HubCPU + t.AgentCPU) / gb
		out = append(out, Figure{Name: fmt.Sprintf("CPU per GB moved, 1-stream %s (gateway: hub+agent; direct: whole runner)", t.Direction),
			Unit: "CPU-s/GB", Direct: direct, Gateway: g, Ratio: safeDiv(g, direct), BgCPU: t.BgCPU})
	}
	out = append(out, wanFigures(rep)...)
	return append(out, meshFigures(rep)...)
}

func safeDiv(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

func countStr(n int) string {
	if n >= 1000 && n%1000 == 0 {
		return fmt.Sprintf("%dk", n/1000)
	}
	return strconv.Itoa(n)
}
