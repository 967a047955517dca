package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nowconnect/nowconnect/internal/pace"
)

// Load generators. They run in the runner process, a goroutine per
// connection with its buffer allocated once, so that the generator costs
// the same on the direct and the gateway path; on a 2-core machine the
// generator, the targets, the hub and the agent all share the cores.

// dialAll opens n connections with up to par dials in flight.
func dialAll(addr string, n, par int) ([]net.Conn, error) {
	conns := make([]net.Conn, n)
	var next atomic.Int64
	var firstErr error
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range min(par, n) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				c, err := net.DialTimeout("tcp", addr, 10*time.Second)
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
				conns[i] = c
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		closeAll(conns)
		return nil, firstErr
	}
	return conns, nil
}

func closeAll(conns []net.Conn) {
	for _, c := range conns {
		if c != nil {
			_ = c.Close()
		}
	}
}

// window is a measurement window: warm-up, then dur of measurement.
type window struct {
	warm, dur time.Duration
}

// cpuSnap reads the CPU time of the hub, the agent and this process.
type cpuSnap struct {
	hub, agent, self time.Duration
}

func snapCPU(hubPid, agentPid int) cpuSnap {
	var s cpuSnap
	if hubPid > 0 {
		st, _ := readProc(hubPid)
		s.hub = st.CPU
	}
	if agentPid > 0 {
		st, _ := readProc(agentPid)
		s.agent = st.CPU
	}
	st, _ := readProc(0)
	s.self = st.CPU
	return s
}

// bgMeter measures the CPU used by processes other than ours (the runner,
// the hub, the agent, the child target) while a figure is measured: the
// machine is shared, and a busy neighbour skews the ratios.
type bgMeter struct {
	pids  []int
	t0    time.Time
	busy0 time.Duration
	ours0 time.Duration
}

func startBg(pids ...int) *bgMeter {
	m := &bgMeter{pids: pids, t0: time.Now()}
	m.busy0, m.ours0 = m.read()
	return m
}

func (m *bgMeter) read() (busy, ours time.Duration) {
	busy = systemBusy()
	st, _ := readProc(0)
	ours = st.CPU
	for _, p := range m.pids {
		if p > 0 {
			st, _ := readProc(p)
			ours += st.CPU
		}
	}
	return
}

// cores returns the average number of cores other processes used.
func (m *bgMeter) cores() float64 {
	busy, ours := m.read()
	wall := time.Since(m.t0).Seconds()
	if wall <= 0 {
		return 0
	}
	return math.Max(0, ((busy-m.busy0)-(ours-m.ours0)).Seconds()/wall)
}

// systemBusy is user+nice+system time of all CPUs from /proc/stat.
func systemBusy() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 4 || f[0] != "cpu" {
		return 0
	}
	var sum int64
	for _, x := range f[1:4] {
		v, _ := strconv.ParseInt(x, 10, 64)
		sum += v
	}
	return time.Duration(sum) * time.Second / clkTck
}

// ThroughputResult is one bulk-transfer run.
type ThroughputResult struct {
	Path        string  `json:"path"` // direct | gateway
	Direction   string  `json:"direction"`
	Streams     int     `json:"streams"`
	BytesPerSec float64 `json:"bytes_per_sec"`
	Bytes       int64   `json:"bytes"`
	Seconds     float64 `json:"seconds"`
	HubCPU      float64 `json:"hub_cpu_sec"`   // procs mode only
	AgentCPU    float64 `json:"agent_cpu_sec"` // procs mode only
	RunnerCPU   float64 `json:"runner_cpu_sec"`
	BgCPU       float64 `json:"background_cpu_cores"`
	Errors      int     `json:"errors"` // streams that failed (reset) before the end
}

// throughput moves bytes over streams connections for w: up = client →
// sink (counted at the sink), down = source → client (counted at the
// client).
func throughput(p *progress, label string, t *Targets, addr string, streams int, up bool, w window, pids [2]int) (ThroughputResult, error) {
	r := ThroughputResult{Streams: streams, Direction: "download"}
	if up {
		r.Direction = "upload"
	}
	conns, err := dialAll(addr, streams, streams)
	if err != nil {
		return r, err
	}
	var recv, errs atomic.Int64
	var stopping atomic.Bool
	counter := &recv
	if up {
		counter = &t.SinkBytes
	}
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() {
			buf := make([]byte, ioBuf)
			if up {
				for {
					if _, err := c.Write(buf); err != nil {
						if !stopping.Load() {
							errs.Add(1)
						}
						return
					}
				}
			}
			for {
				n, err := c.Read(buf)
				recv.Add(int64(n))
				if err != nil {
					if !stopping.Load() {
						errs.Add(1)
					}
					return
				}
			}
		})
	}
	p.phase(label, counter.Load, "Gbit/s", 8e-9)
	time.Sleep(w.warm)
	b0, c0, t0 := counter.Load(), snapCPU(pids[0], pids[1]), time.Now()
	time.Sleep(w.dur)
	b1, c1, t1 := counter.Load(), snapCPU(pids[0], pids[1]), time.Now()
	stopping.Store(true)
	closeAll(conns)
	wg.Wait()
	r.Errors = int(errs.Load())
	r.Bytes = b1 - b0
	r.Seconds = t1.Sub(t0).Seconds()
	r.BytesPerSec = float64(r.Bytes) / r.Seconds
	r.HubCPU = (c1.hub - c0.hub).Seconds()
	r.AgentCPU = (c1.agent - c0.agent).Seconds()
	r.RunnerCPU = (c1.self - c0.self).Seconds()
	return r, nil
}

// Latency summarises latencies in microseconds.
type Latency struct {
	N    int     `json:"n"`
	P50  float64 `json:"p50_us"`
	P90  float64 `json:"p90_us"`
	P99  float64 `json:"p99_us"`
	P999 float64 `json:"p999_us"`
	Max  float64 `json:"max_us"`
}

func summarize(ds []time.Duration) Latency {
	if len(ds) == 0 {
		return Latency{}
	}
	slices.Sort(ds)
	q := func(f float64) float64 {
		i := int(f * float64(len(ds)-1))
		return float64(ds[i]) / 1e3
	}
	return Latency{N: len(ds), P50: q(0.50), P90: q(0.90), P99: q(0.99), P999: q(0.999), Max: float64(ds[len(ds)-1]) / 1e3}
}

// RRResult is one request/response run.
type RRResult struct {
	Path       string  `json:"path"`
	Mode       string  `json:"mode"` // closed | open
	Conns      int     `json:"conns"`
	Offered    float64 `json:"offered_per_sec,omitempty"` // open loop
	Rate       float64 `json:"rate_per_sec"`              // completed per second
	Latency    Latency `json:"latency"`
	Unfinished int     `json:"unfinished,omitempty"` // open loop: no response within the grace period
	Errors     int     `json:"errors"`
	LagP99     float64 `json:"send_lag_p99_us,omitempty"` // open loop: generator's lateness sending, p99
	// Service is the open loop's latency from the actual send instead of
	// the scheduled one (hides queueing in the generator; shown beside
	// Latency to tell the generator's timer lateness from the path's).
	Service *Latency `json:"service,omitempty"`
	BgCPU   float64  `json:"background_cpu_cores"`
}

// rrClosed runs closed-loop request/response: every connection sends the
// next request as soon as the previous response is in.
func rrClosed(p *progress, label, addr string, conns, reqSize, respSize int, w window) (RRResult, error) {
	r := RRResult{Mode: "closed", Conns: conns}
	cs, err := dialAll(addr, conns, 64)
	if err != nil {
		return r, err
	}
	var done atomic.Int64
	var stop atomic.Bool
	var errs atomic.Int64
	start := time.Now()
	mStart, mEnd := start.Add(w.warm), start.Add(w.warm+w.dur)
	lats := make([][]time.Duration, conns)
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Go(func() {
			req := make([]byte, reqSize)
			resp := make([]byte, respSize)
			var own []time.Duration
			for !stop.Load() {
				t0 := time.Now()
				if _, err := c.Write(req); err != nil {
					if !stop.Load() {
						errs.Add(1)
					}
					break
				}
				if _, err := io.ReadFull(c, resp); err != nil {
					if !stop.Load() {
						errs.Add(1)
					}
					break
				}
				t1 := time.Now()
				done.Add(1)
				if t0.After(mStart) && t1.Before(mEnd) {
					own = append(own, t1.Sub(t0))
				}
			}
			lats[i] = own
		})
	}
	p.phase(label, done.Load, "req/s", 1)
	time.Sleep(time.Until(mEnd))
	stop.Store(true)
	closeAll(cs)
	wg.Wait()
	all := slices.Concat(lats...)
	r.Latency = summarize(all)
	r.Rate = float64(len(all)) / w.dur.Seconds()
	r.Errors = int(errs.Load())
	return r, nil
}

// rrOpen runs open-loop request/response at a fixed offered rate spread
// over conns connections: each request has a scheduled send time, is sent
// then (or as soon as the generator can, never skipped), and its latency is
// measured from the scheduled time, so queueing anywhere shows up in the
// percentiles (no coordinated omission). Requests are pipelined per
// connection; responses come back in order.
//
// One pacer goroutine sends every request, request j on connection j mod
// conns at start + j/rate, sleeping in between with internal/pace: with
// time.Sleep a request went up to a millisecond late (the runtime's timers
// have millisecond resolution in an idle process), so every latency carried
// the generator's own lateness and the requests left in bursts. The send lag
// column reports what lateness remains.
func rrOpen(p *progress, label, addr string, conns, reqSize, respSize int, rate float64, w window) (RRResult, error) {
	r := RRResult{Mode: "open", Conns: conns, Offered: rate}
	cs, err := dialAll(addr, conns, 64)
	if err != nil {
		return r, err
	}
	grace := 3 * time.Second
	start := time.Now().Add(20 * time.Millisecond)
	mStart, end := start.Add(w.warm), start.Add(w.warm+w.dur)
	interval := 1e9 / rate // ns between two requests, over all connections
	total := int(float64(w.warm+w.dur) / interval)
	var done, errs, unfinished atomic.Int64
	var completedIn atomic.Int64
	lats := make([][]time.Duration, conns)
	svc := make([][]time.Duration, conns)
	type sent struct{ at, sent time.Time }
	scheds := make([]chan sent, conns)
	for i := range scheds {
		scheds[i] = make(chan sent, total/conns+1)
	}
	var lag []time.Duration
	var wg sync.WaitGroup
	wg.Go(func() { // pacer
		req := make([]byte, reqSize)
		failed := make([]bool, conns)
		for j := range total {
			i := j % conns
			if failed[i] {
				continue
			}
			at := start.Add(time.Duration(float64(j) * interval))
			_ = pace.Until(context.Background(), at)
			now := time.Now()
			if at.After(mStart) {
				lag = append(lag, now.Sub(at))
			}
			// Queued before the write: the reader takes it once the
			// response is in, and the response cannot come earlier.
			scheds[i] <- sent{at, now}
			if _, err := cs[i].Write(req); err != nil {
				errs.Add(1)
				failed[i] = true
				close(scheds[i])
			}
		}
		for i, f := range failed {
			if !f {
				close(scheds[i])
			}
		}
	})
	for i, c := range cs {
		// Requests j ≡ i (mod conns) of the total.
		count := total / conns
		if i < total%conns {
			count++
		}
		wg.Go(func() { // reader
			resp := make([]byte, respSize)
			_ = c.SetReadDeadline(end.Add(grace))
			sched := scheds[i]
			var own, ownSvc []time.Duration
			// The response is read first and its schedule entry taken
			// after (it is queued before the request is written): a
			// reader parked on the channel would cost a thread wake-up
			// at every send, on the cores the gateway needs.
			for range count {
				_, err := io.ReadFull(c, resp)
				if err == nil {
					x, ok := <-sched
					if !ok {
						break // the pacer gave up on this connection
					}
					now := time.Now()
					done.Add(1)
					if x.at.After(mStart) {
						own = append(own, now.Sub(x.at))
						ownSvc = append(ownSvc, now.Sub(x.sent))
					}
					if now.After(mStart) && now.Before(end) {
						completedIn.Add(1)
					}
					continue
				}
				var ne net.Error
				if !errors.As(err, &ne) || !ne.Timeout() {
					errs.Add(1)
				}
				for range sched { // sent and never answered
					unfinished.Add(1)
				}
				break
			}
			lats[i], svc[i] = own, ownSvc
		})
	}
	p.phase(label, done.Load, "req/s", 1)
	wg.Wait()
	closeAll(cs)
	all := slices.Concat(lats...)
	r.Latency = summarize(all)
	r.Rate = float64(completedIn.Load()) / w.dur.Seconds()
	r.Unfinished = int(unfinished.Load())
	r.Errors = int(errs.Load())
	r.LagP99 = summarize(lag).P99
	sv := summarize(slices.Concat(svc...))
	r.Service = &sv
	return r, nil
}

// SetupResult is one connection-setup run.
type SetupResult struct {
	Path      string  `json:"path"`
	Parallel  int     `json:"parallel"`
	Rate      float64 `json:"conns_per_sec"`
	FirstByte Latency `json:"first_byte"` // dial start → echoed byte received
	Errors    int     `json:"errors"`
	BgCPU     float64 `json:"background_cpu_cores"`
}

// setupRate opens connections as fast as par workers can: dial, send one
// byte, read it back from the once target, wait for its close, close.
func setupRate(p *progress, label, addr string, par int, w window) SetupResult {
	r := SetupResult{Parallel: par}
	var done, errs atomic.Int64
	var stop atomic.Bool
	start := time.Now()
	mStart, mEnd := start.Add(w.warm), start.Add(w.warm+w.dur)
	lats := make([][]time.Duration, par)
	var wg sync.WaitGroup
	for i := range par {
		wg.Go(func() {
			var b [1]byte
			var own []time.Duration
			for !stop.Load() {
				t0 := time.Now()
				c, err := net.DialTimeout("tcp", addr, 5*time.Second)
				if err != nil {
					errs.Add(1)
					time.Sleep(10 * time.Millisecond)
					continue
				}
				_ = c.SetDeadline(t0.Add(5 * time.Second))
				_, err = c.Write(b[:])
				if err == nil {
					_, err = io.ReadFull(c, b[:])
				}
				t1 := time.Now()
				if err == nil { // the server closes first
					_, err = c.Read(b[:])
					if err == io.EOF {
						err = nil
					}
				}
				_ = c.Close()
				if err != nil {
					errs.Add(1)
					continue
				}
				done.Add(1)
				if t0.After(mStart) && t1.Before(mEnd) {
					own = append(own, t1.Sub(t0))
				}
			}
			lats[i] = own
		})
	}
	p.phase(label, done.Load, "conn/s", 1)
	time.Sleep(time.Until(mEnd))
	stop.Store(true)
	wg.Wait()
	all := slices.Concat(lats...)
	r.FirstByte = summarize(all)
	r.Rate = float64(len(all)) / w.dur.Seconds()
	r.Errors = int(errs.Load())
	return r
}

// openIdle grows conns to n idle connections to addr, each proven end to
// end with a one-byte echo, with up to par in flight.
func openIdle(p *progress, label, addr string, conns []net.Conn, n, par int) ([]net.Conn, error) {
	have := len(conns)
	if n <= have {
		return conns, nil
	}
	conns = append(conns, make([]net.Conn, n-have)...)
	var next, done atomic.Int64
	next.Store(int64(have))
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	p.phase(label, done.Load, "conn/s", 1)
	for range par {
		wg.Go(func() {
			var b [1]byte
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				c, err := net.DialTimeout("tcp", addr, 10*time.Second)
				if err == nil {
					_ = c.SetDeadline(time.Now().Add(10 * time.Second))
					if _, err = c.Write(b[:]); err == nil {
						_, err = io.ReadFull(c, b[:])
					}
					_ = c.SetDeadline(time.Time{})
				}
				if err != nil {
					if c != nil {
						_ = c.Close()
					}
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("idle connection %d: %w", i, err)
					}
					mu.Unlock()
					return
				}
				conns[i] = c
				done.Add(1)
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		closeAll(conns)
		return nil, firstErr
	}
	return conns, nil
}

// SlowResult is the slow-consumer isolation run.
type SlowResult struct {
	Path       string  `json:"path"`
	Streams    int     `json:"streams"`               // streams that keep reading
	BaseBPS    float64 `json:"base_bytes_per_sec"`    // their throughput alone
	StalledBPS float64 `json:"stalled_bytes_per_sec"` // while one more client is stalled
	Ratio      float64 `json:"ratio"`
	BgCPU      float64 `json:"background_cpu_cores"`
	// With one stalled client and no other traffic (procs mode): the CPU
	// the hub and the agent spend on it, in cores.
	StallHubCPU   float64 `json:"stall_hub_cpu_cores,omitempty"`
	StallAgentCPU float64 `json:"stall_agent_cpu_cores,omitempty"`
}

// stalledCPU opens one client that never reads, lets it fill, and measures
// the hub's and the agent's CPU while nothing else moves.
func stalledCPU(p *progress, addr string, hubPid, agentPid int, w window) (hub, agent float64) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return 0, 0
	}
	defer c.Close()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetReadBuffer(64 << 10)
	}
	p.phase("one stalled client, nothing else: hub and agent CPU", nil, "", 0)
	time.Sleep(w.warm)
	c0, t0 := snapCPU(hubPid, agentPid), time.Now()
	time.Sleep(max(w.dur/2, 100*time.Millisecond))
	c1, sec := snapCPU(hubPid, agentPid), time.Since(t0).Seconds()
	return (c1.hub - c0.hub).Seconds() / sec, (c1.agent - c0.agent).Seconds() / sec
}

// slowConsumer downloads on `streams` connections from source, measures
// them, then opens one more that never reads, lets it fill and measures
// again, then closes it and measures once more; the baseline is the mean
// of the two measurements without the stalled client (A-B-A, so a drift
// of the machine does not read as interference).
func slowConsumer(p *progress, label, addr string, streams int, w window) (SlowResult, error) {
	r := SlowResult{Streams: streams}
	conns, err := dialAll(addr, streams, streams)
	if err != nil {
		return r, err
	}
	var recv atomic.Int64
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() {
			buf := make([]byte, ioBuf)
			for {
				n, err := c.Read(buf)
				recv.Add(int64(n))
				if err != nil {
					return
				}
			}
		})
	}
	measure := func() float64 {
		time.Sleep(w.warm)
		b0, t0 := recv.Load(), time.Now()
		time.Sleep(w.dur)
		return float64(recv.Load()-b0) / time.Since(t0).Seconds()
	}
	p.phase(label+" (alone)", recv.Load, "Gbit/s", 8e-9)
	base1 := measure()
	stalled, err := net.Dial("tcp", addr)
	if err != nil {
		closeAll(conns)
		wg.Wait()
		return r, err
	}
	if tc, ok := stalled.(*net.TCPConn); ok {
		_ = tc.SetReadBuffer(64 << 10) // a small client, stalled: its buffer fills fast
	}
	p.phase(label+" (one stalled)", recv.Load, "Gbit/s", 8e-9)
	r.StalledBPS = measure()
	_ = stalled.Close()
	p.phase(label+" (alone again)", recv.Load, "Gbit/s", 8e-9)
	r.BaseBPS = (base1 + measure()) / 2
	closeAll(conns)
	wg.Wait()
	if r.BaseBPS > 0 {
		r.Ratio = r.StalledBPS / r.BaseBPS
	}
	return r, nil
}
