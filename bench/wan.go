package bench

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/nowconnect/nowconnect/internal/wanlink"
)

// The wan scenario puts an emulated link (internal/wanlink) between the
// agent and the hub's control port:
//
//	gateway: client → hub listener → hub ══link══ agent → target
//	direct:  client ══link══ target
//
// Every link holds each chunk for half the round trip in each direction,
// has no rate cap and holds at most wanInflight per direction of a
// connection (enough for 10 Gbit/s over 50 ms). The links run in the
// runner process, with the load generators and the targets.

// wanInflight is each link's MaxInflight: 10 Gbit/s for a 25 ms one-way
// delay needs 31 MiB.
const wanInflight = 64 << 20

// wanRRConns is the request/response concurrency (smoke runs too).
const wanRRConns = 50

// WANReport is the wan scenario's results.
type WANReport struct {
	RTTsMs       []float64       `json:"rtts_ms"`
	WarmSec      float64         `json:"warm_sec"`
	DurSec       float64         `json:"dur_sec"`
	StreamWindow int             `json:"stream_window"` // bytes: what a stalled client may cost the hub and the agent each
	Gateway      GatewayConfig   `json:"gateway"`       // the hooks the gateway ran with
	Throughput   []WANThroughput `json:"throughput"`
	ReqResp      []WANReqResp    `json:"req_resp"`
	Stall        *WANStall       `json:"stall,omitempty"`
}

// WANThroughput is one bulk transfer at one round-trip time.
type WANThroughput struct {
	RTTMs float64 `json:"rtt_ms"`
	ThroughputResult
}

// WANReqResp is one closed-loop request/response run at one round-trip
// time.
type WANReqResp struct {
	RTTMs float64 `json:"rtt_ms"`
	RRResult
}

// WANStall is clients that never read while their target sends, on a
// fresh gateway: the hub's and the agent's memory before they connect and
// once nothing moves (see wanStall).
type WANStall struct {
	RTTMs        float64 `json:"rtt_ms"`
	Clients      int     `json:"clients"`       // stalled at once; the growth is divided by it
	SourceBytes  int64   `json:"source_bytes"`  // what the target wrote for them before the path stalled (whole 256 KiB writes)
	StallSeconds float64 `json:"stall_seconds"` // from the connects to the target's last write
	Settled      bool    `json:"settled"`       // the path stalled within the deadline
	QuietSec     float64 `json:"quiet_sec"`     // "stalled": the target wrote nothing for this long
	Env          string  `json:"env"`           // the environment both processes ran with (GOGC)
	// go_memstats_heap_alloc_bytes of the hub's /metrics and the agent's
	// metrics_listen, the least of three readings; 0 and HeapNote when
	// missing.
	HubHeapBase   float64 `json:"hub_heap_alloc_base"`
	HubHeap       float64 `json:"hub_heap_alloc"`
	AgentHeapBase float64 `json:"agent_heap_alloc_base"`
	AgentHeap     float64 `json:"agent_heap_alloc"`
	HeapNote      string  `json:"heap_note,omitempty"`
	HubRSSBase    int64   `json:"hub_rss_base"`
	HubRSS        int64   `json:"hub_rss"`
	AgentRSSBase  int64   `json:"agent_rss_base"`
	AgentRSS      int64   `json:"agent_rss"`
}

// wanGatewayConfig is the gateway the wan scenario measures: the
// defaults. To measure a variant (the agent's --tunnels, the hub's
// [tunnel] max_stream_window or tunnel_window), set its hooks here, e.g.
// GatewayConfig{AgentArgs: []string{"--tunnels", "1"}, HubConfig:
// map[string][]string{"tunnel": {"max_stream_window = 16777216"}}}.
func (r *runner) wanGatewayConfig() GatewayConfig { return GatewayConfig{} }

func (r *runner) wanPlan() (rtts []time.Duration, w window) {
	if r.opts.Smoke {
		return []time.Duration{0, 2 * time.Millisecond}, window{warm: 20 * time.Millisecond, dur: 80 * time.Millisecond}
	}
	// The warm-up leaves auto-tuned windows time to grow (doubling once
	// per round trip, 256 KiB → 16 MiB in six) before the measurement.
	return []time.Duration{0, 20 * time.Millisecond, 50 * time.Millisecond}, window{warm: 500 * time.Millisecond, dur: 1200 * time.Millisecond}
}

func msOf(d time.Duration) float64 { return float64(d) / 1e6 }

// links is the set of links a scenario started.
type links []*wanlink.Link

func (ls *links) start(target string, delay time.Duration) (*wanlink.Link, error) {
	l, err := wanlink.Start(wanlink.Config{Target: target, Delay: delay, MaxInflight: wanInflight})
	if err != nil {
		return nil, err
	}
	*ls = append(*ls, l)
	return l, nil
}

func (ls links) setDelay(d time.Duration) error {
	for _, l := range ls {
		if err := l.SetDelay(d); err != nil {
			return err
		}
	}
	return nil
}

func (ls links) close() {
	for _, l := range ls {
		_ = l.Close()
	}
}

func (r *runner) wan() error {
	rtts, w := r.wanPlan()
	cfg := r.wanGatewayConfig()
	rep := &WANReport{WarmSec: w.warm.Seconds(), DurSec: w.dur.Seconds(), StreamWindow: orInt(cfg.Window, 256<<10), Gateway: cfg}
	for _, rtt := range rtts {
		rep.RTTsMs = append(rep.RTTsMs, msOf(rtt))
	}
	r.rep.WAN = rep

	var ls links
	defer func() { ls.close() }()
	direct := map[string]string{}
	for name, target := range map[string]string{"sink": r.t.Sink, "source": r.t.Source, "rr": r.t.RR} {
		l, err := ls.start(target, 0)
		if err != nil {
			return err
		}
		direct[name] = l.Addr()
	}
	for _, rtt := range rtts {
		if err := ls.setDelay(rtt / 2); err != nil {
			return err
		}
		// A fresh gateway per round trip: windows start at stream_window
		// and the RTT estimate at nothing, as on a real path (a path whose
		// delay jumps keeps the old minimum RTT for a while, 8 pings).
		var gls links
		cfg.AgentDial = func(control string) (string, error) {
			l, err := gls.start(control, rtt/2)
			if err != nil {
				return "", err
			}
			return l.Addr(), nil
		}
		r.p.phase(fmt.Sprintf("wan %g ms RTT: starting gateway (agent → link → hub)", msOf(rtt)), nil, "", 0)
		gw, err := r.gateway(cfg)
		if err != nil {
			gls.close()
			return err
		}
		err = r.wanRTT(rep, gw, direct, rtt, w)
		gw.Close() // before its link closes
		gls.close()
		if err != nil {
			return err
		}
	}
	ls.close()
	ls = nil

	if r.opts.Mode != "procs" {
		r.note("wan stalled client: measured in procs mode only (it reads the hub's and the agent's own memory)")
		return nil
	}
	st, err := r.wanStall(rtts[len(rtts)-1])
	if err != nil {
		return fmt.Errorf("stalled client: %w", err)
	}
	rep.Stall = st
	return nil
}

// wanRTT measures the figures of one round trip through gw.
func (r *runner) wanRTT(rep *WANReport, gw Gateway, direct map[string]string, rtt time.Duration, w window) error {
	hubPid, agentPid := gw.Pids()
	pids := [2]int{hubPid, agentPid}
	{
		for _, streams := range []int{1, r.multi} {
			for _, up := range []bool{true, false} {
				conn, dir := "source", "download"
				if up {
					conn, dir = "sink", "upload"
				}
				for _, p := range [][2]string{{"direct", direct[conn]}, {"gateway", gw.Addr(conn)}} {
					label := fmt.Sprintf("wan %g ms RTT: throughput %d-stream %s, %s", msOf(rtt), streams, dir, p[0])
					bg := r.quiet(gw)
					res, err := throughput(r.p, label, r.t, p[1], streams, up, w, pids)
					if err != nil {
						return fmt.Errorf("%s: %w", label, err)
					}
					res.Path, res.BgCPU = p[0], bg.cores()
					if res.Errors > 0 {
						r.note("%s: %d of %d streams failed (reset) during the measurement", label, res.Errors, streams)
					}
					rep.Throughput = append(rep.Throughput, WANThroughput{RTTMs: msOf(rtt), ThroughputResult: res})
					r.p.note("%s: %.2f Gbit/s", label, res.BytesPerSec*8/1e9)
				}
			}
		}
		n := wanRRConns
		for _, p := range [][2]string{{"direct", direct["rr"]}, {"gateway", gw.Addr("rr")}} {
			label := fmt.Sprintf("wan %g ms RTT: req/resp closed loop, %d conns, %s", msOf(rtt), n, p[0])
			bg := r.quiet(gw)
			res, err := rrClosed(r.p, label, p[1], n, r.rep.Config.ReqSize, r.rep.Config.RespSize, w)
			if err != nil {
				return fmt.Errorf("%s: %w", label, err)
			}
			res.Path, res.BgCPU = p[0], bg.cores()
			rep.ReqResp = append(rep.ReqResp, WANReqResp{RTTMs: msOf(rtt), RRResult: res})
			r.p.note("%s: %.0f req/s, p50 %.0fµs p99 %.0fµs", label, res.Rate, res.Latency.P50, res.Latency.P99)
		}
	}
	return nil
}

// wanStall measures what a client that never reads costs the hub and the
// agent while its target sends, through a fresh gateway whose tunnel
// crosses a link of the given round trip. One such client's cost is within
// the heap's own noise (a few hundred KiB between two readings of an idle
// process), so after a warm-up (one stalled client, then closed) it
// connects several at once (receive buffer 64 KiB each), waits until the
// target writes no more, and divides the growth of the hub's and the
// agent's memory by their number.
func (r *runner) wanStall(rtt time.Duration) (*WANStall, error) {
	res := &WANStall{RTTMs: msOf(rtt), Clients: 8}
	if r.opts.Smoke {
		res.Clients = 2
	}
	var ls links
	defer func() { ls.close() }()
	cfg := r.wanGatewayConfig()
	// No GC can be forced from outside: a low GOGC keeps the allocated heap
	// close to the live heap, so that garbage does not read as growth.
	cfg.Env = append(cfg.Env, stallGOGC)
	res.Env = stallGOGC
	// Small kernel buffers on both sides of the client connection: bytes a
	// kernel takes count as consumed (the hub cannot tell a socket buffer
	// from a reader), so megabytes of them would let a never-reading
	// client move at full speed, and its window rightly grow, before it
	// stalls. Here it stalls from the first byte, as the target asks.
	if cfg.HubConfig == nil {
		cfg.HubConfig = map[string][]string{}
	}
	cfg.HubConfig["engine"] = append(cfg.HubConfig["engine"], "socket_send_buffer = 16384")
	cfg.AgentDial = func(control string) (string, error) {
		l, err := ls.start(control, rtt/2)
		if err != nil {
			return "", err
		}
		return l.Addr(), nil
	}
	label := fmt.Sprintf("wan %g ms RTT: stalled clients", msOf(rtt))
	r.p.phase(label+": starting a fresh gateway", nil, "", 0)
	gw, err := r.gateway(cfg)
	if err != nil {
		return nil, err
	}
	defer gw.Close()
	hubPid, agentPid := gw.Pids()
	// Stalled: the source has written nothing for ten round trips (at
	// least 300 ms; smoke 100 ms), so no credit is coming back.
	quietFor := max(10*rtt, 300*time.Millisecond)
	if r.opts.Smoke {
		quietFor = max(10*rtt, 100*time.Millisecond)
	}
	res.QuietSec = quietFor.Seconds()

	r.p.phase(label+": warm-up (one, then closed)", nil, "", 0)
	warm, err := dialStalled(gw.Addr("source"), 1)
	if err != nil {
		return nil, err
	}
	r.waitStalled(quietFor)
	closeAll(warm)
	time.Sleep(r.settle())

	hm0, hubOK := minGoMem(gw.HubMetrics)
	am0, agentOK := minGoMem(gw.AgentMetrics)
	hp0, _ := readProc(hubPid)
	ap0, _ := readProc(agentPid)
	r.p.phase(fmt.Sprintf("%s: %d clients that never read, waiting for the path to stall", label, res.Clients), nil, "", 0)
	start := time.Now()
	src0 := r.t.SourceBytes.Load()
	cs, err := dialStalled(gw.Addr("source"), res.Clients)
	if err != nil {
		return nil, err
	}
	defer closeAll(cs)
	settled, lastWrite := r.waitStalled(quietFor)
	res.Settled = settled
	res.SourceBytes, res.StallSeconds = r.t.SourceBytes.Load()-src0, lastWrite.Sub(start).Seconds()
	if !res.Settled {
		r.note("wan stalled clients: the source still wrote after 15 s (%d bytes)", res.SourceBytes)
	}
	hm, hubOK2 := minGoMem(gw.HubMetrics)
	am, agentOK2 := minGoMem(gw.AgentMetrics)
	hp, err1 := readProc(hubPid)
	ap, err2 := readProc(agentPid)
	if err := errors.Join(err1, err2); err != nil {
		return nil, err
	}
	var notes []string
	if hubOK && hubOK2 {
		res.HubHeapBase, res.HubHeap = hm0.alloc, hm.alloc
	} else {
		notes = append(notes, "the hub's /metrics has no go_memstats_*")
	}
	if agentOK && agentOK2 {
		res.AgentHeapBase, res.AgentHeap = am0.alloc, am.alloc
	} else {
		notes = append(notes, "the agent serves no /metrics with go_memstats_* (metrics_listen)")
	}
	res.HeapNote = strings.Join(notes, "; ")
	res.HubRSSBase, res.HubRSS, res.AgentRSSBase, res.AgentRSS = hp0.RSS, hp.RSS, ap0.RSS, ap.RSS
	hub, agent := res.PerClient()
	r.p.note("%s: the source wrote %.1f MiB for %d clients; per client: heap hub %.0f KiB, agent %.0f KiB; RSS hub %.0f KiB, agent %.0f KiB",
		label, float64(res.SourceBytes)/(1<<20), res.Clients, hub.heap/1024, agent.heap/1024, hub.rss/1024, agent.rss/1024)
	return res, nil
}

// dialStalled opens n connections to addr that will never be read, with
// small receive buffers (set before the handshake, so the window they
// announce is small from the start).
func dialStalled(addr string, n int) ([]net.Conn, error) {
	d := net.Dialer{Timeout: 10 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		}); err != nil {
			return err
		}
		return serr
	}}
	cs := make([]net.Conn, 0, n)
	for range n {
		c, err := d.Dial("tcp", addr)
		if err != nil {
			closeAll(cs)
			return nil, err
		}
		cs = append(cs, c)
	}
	return cs, nil
}

// waitStalled waits (at most 15 s) until the source target has written
// nothing for quiet, after writing something, and returns when it last
// wrote.
func (r *runner) waitStalled(quiet time.Duration) (stalled bool, lastWrite time.Time) {
	start := time.Now()
	first := r.t.SourceBytes.Load()
	last, lastAt := first, start
	for deadline := start.Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if n := r.t.SourceBytes.Load(); n != last {
			last, lastAt = n, time.Now()
		}
		if time.Since(lastAt) >= quiet && last > first {
			return true, lastAt
		}
	}
	return false, lastAt
}

// memPerClient is one process's growth per stalled client.
type memPerClient struct{ heap, rss float64 }

// PerClient is the growth per stalled client of the hub and the agent.
func (st *WANStall) PerClient() (hub, agent memPerClient) {
	n := float64(max(st.Clients, 1))
	hub = memPerClient{(st.HubHeap - st.HubHeapBase) / n, float64(st.HubRSS-st.HubRSSBase) / n}
	agent = memPerClient{(st.AgentHeap - st.AgentHeapBase) / n, float64(st.AgentRSS-st.AgentRSSBase) / n}
	return hub, agent
}

// stallGOGC is the stalled-client gateway's GOGC.
const stallGOGC = "GOGC=1"

// minGoMem is the smallest of a few readings 50 ms apart: a reading's
// own garbage (rendering /metrics allocates) is gone after the next GC.
func minGoMem(fetch func() (string, error)) (goMem, bool) {
	var best goMem
	ok := false
	for i := range 3 {
		if i > 0 {
			time.Sleep(50 * time.Millisecond)
		}
		m, got := readGoMem(fetch)
		if got && (!ok || m.alloc < best.alloc) {
			best, ok = m, true
		}
	}
	return best, ok
}
