package bench

import (
	"fmt"
	"strings"
)

// The wan scenario's figures (the targets) and its BENCHMARKS.md
// section.

func (rep *WANReport) maxRTT() float64 {
	m := 0.0
	for _, v := range rep.RTTsMs {
		m = max(m, v)
	}
	return m
}

func (rep *WANReport) thr(rtt float64, path string, streams int, dir string) *ThroughputResult {
	for i := range rep.Throughput {
		t := &rep.Throughput[i]
		if t.RTTMs == rtt && t.Path == path && t.Streams == streams && t.Direction == dir {
			return &t.ThroughputResult
		}
	}
	return nil
}

func (rep *WANReport) rr(rtt float64, path string) *RRResult {
	for i := range rep.ReqResp {
		x := &rep.ReqResp[i]
		if x.RTTMs == rtt && x.Path == path {
			return &x.RRResult
		}
	}
	return nil
}

// wanFigures are the targets for the WAN: at the largest round
// trip, one stream ≥ 1.5 Gbit/s and 8 streams ≥ 5 Gbit/s each way, and a
// stalled client costs the hub and the agent at most its window each.
func wanFigures(rep *Report) []Figure {
	w := rep.WAN
	if w == nil {
		return nil
	}
	var out []Figure
	rtt := w.maxRTT()
	for _, s := range []struct {
		streams int
		target  float64
	}{{1, 1.5}, {rep.Config.MultiStreams, 5}} {
		for _, dir := range []string{"upload", "download"} {
			d, g := w.thr(rtt, "direct", s.streams, dir), w.thr(rtt, "gateway", s.streams, dir)
			if d == nil || g == nil {
				continue
			}
			gbps := g.BytesPerSec * 8 / 1e9
			met := gbps >= s.target
			out = append(out, Figure{Name: fmt.Sprintf("WAN %g ms RTT: %d-stream throughput, %s (direct: through the same link)", rtt, s.streams, dir),
				Unit: "Gbit/s", Direct: d.BytesPerSec * 8 / 1e9, Gateway: gbps, Ratio: safeDiv(g.BytesPerSec, d.BytesPerSec),
				Target: fmt.Sprintf("≥%g Gbit/s", s.target), Met: &met, BgCPU: max(d.BgCPU, g.BgCPU)})
		}
	}
	if st := w.Stall; st != nil && st.HeapNote == "" {
		win := float64(w.StreamWindow)
		hub, agent := st.PerClient()
		for _, side := range []struct {
			name string
			m    memPerClient
		}{{"hub", hub}, {"agent", agent}} {
			met := side.m.heap <= win
			out = append(out, Figure{Name: fmt.Sprintf("WAN %g ms RTT: Go heap per stalled client, %s (%d stalled at once; ≤ its window)", st.RTTMs, side.name, st.Clients),
				Unit: "KiB", Gateway: side.m.heap / 1024, Target: fmt.Sprintf("≤%g KiB", win/1024), Met: &met, NoDirect: true})
		}
	}
	return out
}

// renderWAN writes the WAN section; chart registers an SVG and returns
// its Markdown.
func renderWAN(rep *Report, w func(string, ...any), chart func(name, svg string) string) {
	wr := rep.WAN
	if wr == nil {
		return
	}
	w("## WAN\n\n")
	w("An emulated link (`internal/wanlink`: a user-space proxy that holds every chunk for half the round trip in each\n")
	w("direction, no rate cap, at most 64 MiB held per direction of a connection) between the agent and the hub's control\n")
	w("port: client → hub listener → hub ⇄ link ⇄ agent → target. The direct path crosses the same emulator (client ⇄ link\n")
	w("⇄ target), measured in the same run just before the gateway. The links run in the runner process, beside the load\n")
	w("generators and the targets. %.2g s warm-up + %.2g s per figure.\n\n", wr.WarmSec, wr.DurSec)
	w("Command: `go run ./bench/runner -only wan` for this section alone (it writes `bench/out/partial-*.json`; render that\n")
	w("with `go run ./bench/runner -report -in FILE`); every full run (`go run ./bench/runner`) includes it.\n\n")
	gw := "default settings"
	if len(wr.Gateway.AgentArgs) > 0 || len(wr.Gateway.HubConfig) > 0 {
		gw = fmt.Sprintf("default settings plus agent flags `%s` and hub config `%v`", strings.Join(wr.Gateway.AgentArgs, " "), wr.Gateway.HubConfig)
	}
	w("Gateway: %s (stream window %s).\n\n", gw, sizeStr(wr.StreamWindow))

	w("### Throughput\n\n")
	w("| RTT ms | streams | direction | direct via link Gbit/s | gateway Gbit/s | ratio | hub CPU-s/GB | agent CPU-s/GB | background CPU |\n")
	w("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	var cats []string
	var dv, gv []float64
	for _, g := range wr.Throughput {
		if g.Path != "gateway" {
			continue
		}
		d := wr.thr(g.RTTMs, "direct", g.Streams, g.Direction)
		if d == nil {
			continue
		}
		gb := float64(g.Bytes) / 1e9
		w("| %g | %d | %s | %.2f | %.2f | %.2f× | %s | %s | %s |\n", g.RTTMs, g.Streams, g.Direction,
			d.BytesPerSec*8/1e9, g.BytesPerSec*8/1e9, safeDiv(g.BytesPerSec, d.BytesPerSec),
			cpuPer(g.HubCPU, gb, rep.Mode), cpuPer(g.AgentCPU, gb, rep.Mode), bgStr(max(d.BgCPU, g.BgCPU), false))
		cats = append(cats, fmt.Sprintf("%g ms, %d-stream %s", g.RTTMs, g.Streams, g.Direction))
		dv, gv = append(dv, d.BytesPerSec*8/1e9), append(gv, g.BytesPerSec*8/1e9)
	}
	w("\n")
	if len(cats) > 0 {
		w("%s", chart("wan.svg", barChart("Throughput across an emulated WAN (Gbit/s)", "Gbit/s", cats,
			[]series{{"direct via link", colDirect, dv}, {"gateway", colGateway, gv}}, nil)))
	}

	if len(wr.ReqResp) > 0 {
		w("### Request/response, closed loop\n\n")
		w("`rr` target (%d B request, %d B response), one request in flight per connection.\n\n", rep.Config.ReqSize, rep.Config.RespSize)
		w("| RTT ms | conns | path | req/s | ratio | p50 µs | p90 µs | p99 µs | max µs | errors |\n")
		w("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
		for _, rtt := range wr.RTTsMs {
			d, g := wr.rr(rtt, "direct"), wr.rr(rtt, "gateway")
			for _, x := range []*RRResult{d, g} {
				if x == nil {
					continue
				}
				ratio := ""
				if x == g && d != nil {
					ratio = fmt.Sprintf("%.2f×", safeDiv(g.Rate, d.Rate))
				}
				l := x.Latency
				w("| %g | %d | %s | %.0f | %s | %.0f | %.0f | %.0f | %.0f | %d |\n", rtt, x.Conns, x.Path, x.Rate, ratio, l.P50, l.P90, l.P99, l.Max, x.Errors)
			}
		}
		w("\n")
	}

	if st := wr.Stall; st != nil {
		w("### Stalled clients\n\n")
		w("A fresh gateway across a %g ms link, with `%s` in both processes (no GC can be forced from outside; this keeps\n", st.RTTMs, st.Env)
		w("the allocated heap close to the live heap). After a warm-up (one stalled client, then closed), %d clients of `source`\n", st.Clients)
		w("that never read (receive buffer 64 KiB) connect at once; once the target has written nothing for %.2g s, the growth of\n", st.QuietSec)
		w("the hub's and the agent's Go heap (`go_memstats_heap_alloc_bytes`, the least of three readings) and VmRSS over\n")
		w("their values before the clients connected is divided by %d: one stalled client's cost is within the heap's own\n", st.Clients)
		w("noise. The target wrote %.1f MiB for them before the path stalled (%.2f s after the connects", float64(st.SourceBytes)/(1<<20), st.StallSeconds)
		if !st.Settled {
			w("; **it had not stalled after 15 s**")
		}
		w("); the clients' and the\ntarget's socket buffers hold most of it.\n\n")
		hub, agent := st.PerClient()
		w("| per stalled client | hub | agent |\n| --- | ---: | ---: |\n")
		if st.HeapNote == "" {
			w("| Go heap growth KiB | %.0f | %.0f |\n", hub.heap/1024, agent.heap/1024)
		}
		w("| RSS growth KiB | %.0f | %.0f |\n", hub.rss/1024, agent.rss/1024)
		w("| stream window KiB | %d | %d |\n\n", wr.StreamWindow>>10, wr.StreamWindow>>10)
		if st.HeapNote != "" {
			w("Heap not available: %s.\n\n", st.HeapNote)
		}
	}
}
