package bench

import (
	"fmt"
	"strings"
)

// The mesh scenario's results, figures (the targets) and its
// BENCHMARKS.md section.

// MeshReport is the mesh scenario's results.
type MeshReport struct {
	WarmSec    float64          `json:"warm_sec"`
	DurSec     float64          `json:"dur_sec"`
	RRConns    int              `json:"rr_conns"`
	RRRate     int              `json:"rr_rate"`   // offered req/s of the open loop
	StartSec   float64          `json:"start_sec"` // from redis-server's start to the first echo through hub B
	Throughput []MeshThroughput `json:"throughput"`
	ReqResp    []MeshReqResp    `json:"req_resp"`
	Quiet      []MeshReqResp    `json:"quiet_rr"` // closed loop, one connection: the hop without queueing for the cores
	LowRate    int              `json:"low_rate,omitempty"`
	Low        []MeshReqResp    `json:"low_rr,omitempty"` // open loop at LowRate: a quiet hour's traffic
	Health     []MeshHubHealth  `json:"health"`           // each hub's, at the end
}

// MeshHubHealth is what went wrong on a hub's mesh link over the whole
// scenario, from its /metrics.
type MeshHubHealth struct {
	ID                 string  `json:"id"`
	LinkReconnects     float64 `json:"link_reconnects"`     // nowconnect_mesh_link_reconnects_total: the link went down and came back
	BackpressureDrops  float64 `json:"backpressure_drops"`  // nowconnect_mesh_backpressure_drops_total: frames the link refused
	BackpressureResets float64 `json:"backpressure_resets"` // nowconnect_mesh_stream_resets_total: streams reset because their link refused a frame
	MeshDownResets     float64 `json:"mesh_down_resets"`    // nowconnect_stream_resets_total{reason="mesh_down"}: streams ended by a link going down
}

// metricSum adds the samples of a metric family whose labels contain
// label ("" for all of them).
func metricSum(text, name, label string) float64 {
	sum := 0.0
	for _, l := range strings.Split(text, "\n") {
		series, v, ok := strings.Cut(l, " ")
		if !ok || (series != name && !strings.HasPrefix(series, name+"{")) || !strings.Contains(series, label) {
			continue
		}
		var f float64
		if _, err := fmt.Sscan(strings.TrimSpace(v), &f); err == nil {
			sum += f
		}
	}
	return sum
}

func (h MeshHubHealth) troubled() bool {
	return h.LinkReconnects+h.BackpressureDrops+h.BackpressureResets+h.MeshDownResets > 0
}

func (h MeshHubHealth) String() string {
	return fmt.Sprintf("link reconnects %.0f, backpressure drops %.0f, streams reset because the link refused a frame %.0f, streams reset by a link going down %.0f",
		h.LinkReconnects, h.BackpressureDrops, h.BackpressureResets, h.MeshDownResets)
}

// MeshThroughput is one bulk transfer on one path.
type MeshThroughput struct {
	Path        string  `json:"path"` // direct | local (through hub A) | cross-hub (through hub B and the mesh)
	Direction   string  `json:"direction"`
	Streams     int     `json:"streams"`
	BytesPerSec float64 `json:"bytes_per_sec"`
	Bytes       int64   `json:"bytes"`
	Seconds     float64 `json:"seconds"`
	HubACPU     float64 `json:"hub_a_cpu_sec"`
	HubBCPU     float64 `json:"hub_b_cpu_sec"`
	BgCPU       float64 `json:"background_cpu_cores"`
	Errors      int     `json:"errors"`
	MeshOpens   int     `json:"mesh_opens"` // M_OPEN hub B sent during the measurement
}

// MeshReqResp is one request/response run on one path (open loop, or
// closed loop on one connection).
type MeshReqResp struct {
	RRResult
	MeshOpens int `json:"mesh_opens"` // M_OPEN hub B sent during the measurement
	// CPU is the CPU time each process used per request answered, in µs
	// (whole run: warm-up, measurement and drain; /proc's 10 ms ticks).
	CPU *MeshCPU `json:"cpu_us_per_req,omitempty"`
}

// MeshCPU is CPU time per request by process, in µs.
type MeshCPU struct {
	HubA   float64 `json:"hub_a"`
	HubB   float64 `json:"hub_b"`
	Agent  float64 `json:"agent"`
	Runner float64 `json:"runner"` // the load generator and the targets
}

// Mesh targets (the issue's): cross-hub throughput at least 0.7× local,
// the hop adds at most 0.3 ms to the p50.
const (
	meshMinThrRatio = 0.7
	meshMaxAddedP50 = 300.0 // µs
)

func (m *MeshReport) thr(path, dir string) *MeshThroughput {
	for i := range m.Throughput {
		if t := &m.Throughput[i]; t.Path == path && t.Direction == dir {
			return t
		}
	}
	return nil
}

func (m *MeshReport) rr(path string) *RRResult { return meshRR(m.ReqResp, path) }

func (m *MeshReport) quiet(path string) *RRResult { return meshRR(m.Quiet, path) }

func meshRR(rs []MeshReqResp, path string) *RRResult {
	if x := meshRun(rs, path); x != nil {
		return &x.RRResult
	}
	return nil
}

func meshRun(rs []MeshReqResp, path string) *MeshReqResp {
	for i := range rs {
		if x := &rs[i]; x.Path == path {
			return x
		}
	}
	return nil
}

// cpuCells renders CPU per request of hub A, hub B, the agent and the
// runner ("—" without a reading).
func (x *MeshReqResp) cpuCells() string {
	if x == nil || x.CPU == nil {
		return "— | — | — | —"
	}
	c := x.CPU
	return fmt.Sprintf("%.0f | %.0f | %.0f | %.0f", c.HubA, c.HubB, c.Agent, c.Runner)
}

func gbps(bps float64) float64 { return bps * 8 / 1e9 }

// meshFigures: cross-hub ÷ local one-stream throughput each way, and the
// hop's added p50 at the fixed rate.
func meshFigures(rep *Report) []Figure {
	m := rep.Mesh
	if m == nil {
		return nil
	}
	var out []Figure
	for _, dir := range []string{"upload", "download"} {
		l, x := m.thr("local", dir), m.thr("cross-hub", dir)
		if l == nil || x == nil || l.BytesPerSec == 0 {
			continue
		}
		ratio := x.BytesPerSec / l.BytesPerSec
		met := ratio >= meshMinThrRatio && x.Errors == 0 && l.Errors == 0
		name := fmt.Sprintf("Mesh: 1-stream throughput, %s, through hub B across the mesh (direct column: local, through hub A)", dir)
		if x.Errors > 0 || l.Errors > 0 {
			name += "; ⚠ the stream was reset during the measurement"
		}
		out = append(out, Figure{Name: name,
			Unit: "Gbit/s", Direct: gbps(l.BytesPerSec), Gateway: gbps(x.BytesPerSec), Ratio: ratio,
			Target: fmt.Sprintf("≥%g× local", meshMinThrRatio), Met: &met, BgCPU: max(l.BgCPU, x.BgCPU)})
	}
	if l, x := m.rr("local"), m.rr("cross-hub"); l != nil && x != nil && l.Latency.N > 0 && x.Latency.N > 0 {
		added := x.Latency.P50 - l.Latency.P50
		met := added <= meshMaxAddedP50
		out = append(out, Figure{Name: fmt.Sprintf("Mesh: the hop's added p50 at %d req/s, open loop (p50 through hub B − through hub A)", m.RRRate),
			Unit: "µs", Gateway: added, Target: fmt.Sprintf("≤%g µs", meshMaxAddedP50), Met: &met, NoDirect: true})
	}
	return out
}

// renderMesh writes the Mesh section; chart registers an SVG and returns
// its Markdown.
// hopTable renders runs of the three paths (direct, local, cross-hub, in that
// order): their rate and latencies, what each path adds to the p50 of the one
// before, and the CPU per request of each process.
func hopTable(w func(string, ...any), rs []MeshReqResp) {
	w("| path | req/s | p50 µs | p90 µs | p99 µs | p50 added to the path before | CPU µs/req hub A | hub B | agent | runner |\n")
	w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for i := range rs {
		r := &rs[i]
		added := "—"
		if i > 0 {
			added = fmt.Sprintf("%.0f µs", r.Latency.P50-rs[i-1].Latency.P50)
		}
		w("| %s | %.0f | %.0f | %.0f | %.0f | %s | %s |\n", r.Path, r.Rate, r.Latency.P50, r.Latency.P90, r.Latency.P99, added, r.cpuCells())
	}
	w("\n")
}

func renderMesh(rep *Report, w func(string, ...any), chart func(name, svg string) string) {
	m := rep.Mesh
	if m == nil {
		return
	}
	w("## Mesh\n\n")
	w("Two hubs of an HA mesh and one agent, all separate processes of `./cmd/nowconnect`, with a real `redis-server` (no\n")
	w("persistence) as the ownership registry. Both hubs run `[ha] enabled = true`, `mode = \"active\"` against it and link to\n")
	w("each other over their control ports' `/mesh` (`[ha.mesh] secret_file`, `advertise_url`, discovery through the registry);\n")
	w("the agent's only tunnel ends on hub A, so every stream through hub B crosses the mesh:\n\n")
	w("- **direct**: client → target;\n")
	w("- **local**: client → hub A's listener → tunnel → agent → target;\n")
	w("- **cross-hub**: client → hub B's listener → mesh link B → A → hub A → tunnel → agent → target.\n\n")
	w("The three paths are measured one after the other, per figure, in the same run, with otherwise default settings (stream\n")
	w("window 256 KiB, mesh link window 8 MiB); %.2g s warm-up + %.2g s per figure. For every cross-hub figure hub B sent at\n", m.WarmSec, m.DurSec)
	w("least one `M_OPEN` per connection (`nowconnect_mesh_frames_total`; the run fails otherwise). The generators, the targets,\n")
	w("both hubs, the agent and redis-server share the %d cores. Setting the mesh up (redis-server's start to the first echo\n", rep.Machine.NProc)
	w("through hub B) took %.1f s: hub B reads the registry's owners once per `heartbeat_interval` (5 s by default), and\n", m.StartSec)
	w("again, at most once a second, when a client finds no agent.\n\n")
	w("Command: `go run ./bench/runner -only mesh` for this section alone (it writes `bench/out/partial-*.json`; render that\n")
	w("with `go run ./bench/runner -report -in FILE`); every full run (`go run ./bench/runner`) includes it.\n\n")

	w("### Throughput, one stream\n\n")
	w("| direction | direct Gbit/s | local Gbit/s | cross-hub Gbit/s | local ÷ direct | cross-hub ÷ direct | cross-hub ÷ local | hub A CPU-s/GB local → cross-hub | hub B CPU-s/GB cross-hub | background CPU |\n")
	w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	var cats []string
	var dv, lv, xv, thrRatios []float64
	for _, dir := range []string{"upload", "download"} {
		d, l, x := m.thr("direct", dir), m.thr("local", dir), m.thr("cross-hub", dir)
		if d == nil || l == nil || x == nil {
			continue
		}
		lgb, xgb := float64(l.Bytes)/1e9, float64(x.Bytes)/1e9
		w("| %s%s | %.2f | %.2f | %.2f | %.2f× | %.2f× | **%.2f×** | %s → %s | %s | %s |\n", dir, resetMark(d, l, x),
			gbps(d.BytesPerSec), gbps(l.BytesPerSec), gbps(x.BytesPerSec),
			safeDiv(l.BytesPerSec, d.BytesPerSec), safeDiv(x.BytesPerSec, d.BytesPerSec), safeDiv(x.BytesPerSec, l.BytesPerSec),
			cpuPer(l.HubACPU, lgb, rep.Mode), cpuPer(x.HubACPU, xgb, rep.Mode), cpuPer(x.HubBCPU, xgb, rep.Mode),
			bgStr(max(d.BgCPU, l.BgCPU, x.BgCPU), false))
		cats = append(cats, "1-stream "+dir)
		dv, lv, xv = append(dv, gbps(d.BytesPerSec)), append(lv, gbps(l.BytesPerSec)), append(xv, gbps(x.BytesPerSec))
		thrRatios = append(thrRatios, safeDiv(x.BytesPerSec, l.BytesPerSec))
	}
	w("\n")
	if len(cats) > 0 {
		w("%s", chart("mesh.svg", barChart("Throughput through the HA mesh, one stream (Gbit/s)", "Gbit/s", cats,
			[]series{{"direct", colDirect, dv}, {"local (hub A)", colGateway, lv}, {"cross-hub (hub B → A)", colAgent, xv}}, nil)))
	}

	d, l, x := m.rr("direct"), m.rr("local"), m.rr("cross-hub")
	if d != nil || l != nil || x != nil {
		w("### Request/response, open loop at %d req/s\n\n", m.RRRate)
		w("`rr` target (%d B request, %d B response) over %d connections, requests pipelined per connection and sent on schedule;\n",
			rep.Config.ReqSize, rep.Config.RespSize, m.RRConns)
		w("latency from the scheduled send time (no coordinated omission), \"service\" from the actual send. Achieved: responses\n")
		w("completed within the measurement ÷ its duration. Send lag: how late the generator sent (its pacer sleeps with\n")
		w("`clock_nanosleep`, internal/pace). CPU µs/req: each process's CPU time per request (hub A, hub B, the agent, and the\n")
		w("runner, which is the generator and the targets): on these 2 cores, their sum × the rate is how busy the box is.\n\n")
		w("| path | achieved req/s | p50 µs | p90 µs | p99 µs | max µs | p50 ÷ direct | p99 ÷ direct | service p50 µs | send lag p99 µs | unfinished | errors | CPU µs/req hub A | hub B | agent | runner | background CPU |\n")
		w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
		for _, r := range []*RRResult{d, l, x} {
			if r == nil {
				continue
			}
			run := meshRun(m.ReqResp, r.Path)
			vs50, vs99 := "—", "—"
			if r != d && d != nil {
				vs50, vs99 = fmt.Sprintf("%.2f×", safeDiv(r.Latency.P50, d.Latency.P50)), fmt.Sprintf("%.2f×", safeDiv(r.Latency.P99, d.Latency.P99))
			}
			svc := "—"
			if r.Service != nil {
				svc = fmt.Sprintf("%.0f", r.Service.P50)
			}
			lt := r.Latency
			w("| %s | %.0f | %.0f | %.0f | %.0f | %.0f | %s | %s | %s | %.0f | %d | %d | %s | %s |\n", r.Path, r.Rate, lt.P50, lt.P90, lt.P99, lt.Max,
				vs50, vs99, svc, r.LagP99, r.Unfinished, r.Errors, run.cpuCells(), bgStr(r.BgCPU, false))
		}
		w("\n")
	}

	qd, ql, qx := m.quiet("direct"), m.quiet("local"), m.quiet("cross-hub")
	if qd != nil && ql != nil && qx != nil {
		w("### Request/response, one connection, closed loop\n\n")
		w("The same `rr` target, one request at a time on one connection: the latency of each path when nothing queues for\n")
		w("the cores, that is what the hop itself costs (its copies, frames, system calls and thread wake-ups).\n\n")
		hopTable(w, m.Quiet)
	}

	if len(m.Low) > 0 {
		w("### Request/response, open loop at %d req/s\n\n", m.LowRate)
		w("The open loop of the first table at a quiet hour's rate (%d connections, each idle most of the time between its\n", m.RRConns)
		w("requests): what processes that sleep between requests cost in wake-ups. At this rate the CPU columns are mostly\n")
		w("what each process spends while idle (timers, pings, heartbeats), spread over few requests.\n\n")
		hopTable(w, m.Low)
	}

	if len(m.Health) > 0 {
		var bad []string
		for _, h := range m.Health {
			if h.troubled() {
				bad = append(bad, fmt.Sprintf("hub %s: %s", strings.ToUpper(strings.TrimPrefix(h.ID, "hub-")), h))
			}
		}
		if len(bad) == 0 {
			w("Over the whole scenario no mesh link went down and no stream was reset because its link refused a frame (both hubs' `/metrics`).\n\n")
		} else {
			w("**The mesh misbehaved during the scenario** (both hubs' `/metrics` at its end):\n\n")
			for _, b := range bad {
				w("- %s;\n", b)
			}
			w("\nRows marked ⚠ reset had their stream reset during the measurement: their figure counts only the bytes moved\n")
			w("until then.\n\n")
		}
	}

	// What the numbers mean, and the targets.
	w("Cross-hub ÷ local is what the mesh costs a client that lands on a hub other than its agent's: one more hub process and\n")
	w("one more WebSocket hop (with its copies and frames), competing for the same cores as everything else here; the added\n")
	w("p50 is that hop's latency at a modest load. Against the targets:\n\n")
	for i, r := range thrRatios {
		dir := strings.TrimPrefix(cats[i], "1-stream ")
		l, x := m.thr("local", dir), m.thr("cross-hub", dir)
		verdict := metWord(r >= meshMinThrRatio)
		if l.Errors > 0 || x.Errors > 0 {
			verdict = "**not met**: the stream was reset"
		}
		w("- cross-hub ≥ %g× local, one-stream %s: %.2f× (%.2f of %.2f Gbit/s; %s);\n", meshMinThrRatio, dir, r,
			gbps(x.BytesPerSec), gbps(l.BytesPerSec), verdict)
	}
	if l != nil && x != nil && l.Latency.N > 0 && x.Latency.N > 0 {
		added := x.Latency.P50 - l.Latency.P50
		w("- the hop adds ≤ %g ms to the p50 at %d req/s: %.0f µs (p50 %.0f µs through hub B, %.0f µs through hub A; %s);\n",
			meshMaxAddedP50/1000, m.RRRate, added, x.Latency.P50, l.Latency.P50, metWord(added <= meshMaxAddedP50))
		if d != nil && d.Latency.N > 0 {
			w("- against direct (p50 %.0f µs): local adds %.0f µs, cross-hub %.0f µs.\n", d.Latency.P50, l.Latency.P50-d.Latency.P50, x.Latency.P50-d.Latency.P50)
		}
	}
	if ql != nil && qx != nil {
		w("- not a target: on one connection, closed loop, the hop adds %.0f µs to the p50 (%.0f through hub B, %.0f through hub A):\n",
			qx.Latency.P50-ql.Latency.P50, qx.Latency.P50, ql.Latency.P50)
		w("  what it costs before anything waits for a core.\n")
	}
	w("\n")
}

// resetMark flags a table row whose stream was reset while measured.
func resetMark(ts ...*MeshThroughput) string {
	for _, t := range ts {
		if t.Errors > 0 {
			return " ⚠ reset"
		}
	}
	return ""
}

func metWord(ok bool) string {
	if ok {
		return "met"
	}
	return "**not met**"
}
