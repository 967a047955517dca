package bench

import (
	"encoding/xml"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/internal/testenv"
	"github.com/nowconnect/nowconnect/internal/wanlink"
)

func TestMain(m *testing.M) {
	ChildMain() // the idle scenario re-executes this binary as its echo target
	os.Exit(m.Run())
}

// TestBenchSmoke runs every scenario at tiny sizes against the real
// nowconnect binary (built with -race under -race) and renders the report:
// it proves the harness works and asserts nothing about the figures.
func TestBenchSmoke(t *testing.T) {
	dir := t.TempDir()
	var progress io.Writer
	if testing.Verbose() {
		progress = os.Stderr
	}
	rep, err := Run(Options{
		Smoke:    true,
		Binary:   testenv.Binary(t),
		Root:     testenv.ModuleRoot(t),
		WorkDir:  dir,
		Command:  "go test ./bench -run TestBenchSmoke",
		Progress: progress,
	})
	if err != nil {
		t.Fatalf("smoke run: %v", err)
	}
	want := map[string][2]int{ // scenario: results produced, results expected
		"throughput":    {len(rep.Throughput), 8},
		"req/resp":      {len(rep.ReqResp), 2*len(rep.Config.RRConns) + 2*len(rep.Config.RRConns)*len(rep.Config.OpenRates)},
		"setup":         {len(rep.Setup), 4},
		"idle":          {len(rep.Idle), len(rep.Config.IdleCounts)},
		"slow consumer": {len(rep.Slow), 2},
		"sweeps":        {len(rep.Sweeps), 4},
	}
	for name, n := range want {
		if n[0] != n[1] {
			t.Errorf("%s: %d results, want %d", name, n[0], n[1])
		}
	}
	for _, x := range rep.ReqResp {
		// The pacer sends every request it schedules: the count of the
		// measurement is the offered rate's, whatever the latencies.
		if want := x.Offered * rep.Config.DurSec; x.Mode == "open" &&
			(float64(x.Latency.N) < 0.95*want || x.Unfinished != 0 || x.Errors != 0) {
			t.Errorf("open loop %s at %.0f/s over %d conns: %d answered, %d unfinished, %d errors, want about %.0f answered",
				x.Path, x.Offered, x.Conns, x.Latency.N, x.Unfinished, x.Errors, want)
		}
	}
	if w := rep.WAN; w == nil {
		t.Error("no wan results")
	} else {
		for name, n := range map[string][2]int{
			"wan throughput": {len(w.Throughput), 8 * len(w.RTTsMs)},
			"wan req/resp":   {len(w.ReqResp), 2 * len(w.RTTsMs)},
		} {
			if n[0] != n[1] || n[1] == 0 {
				t.Errorf("%s: %d results, want %d", name, n[0], n[1])
			}
		}
		if st := w.Stall; st == nil || !st.Settled || st.HeapNote != "" || st.SourceBytes == 0 {
			t.Errorf("wan stalled client: %+v, want a settled stall with heap readings", st)
		}
	}
	if m := rep.Mesh; m == nil {
		t.Error("no mesh results")
	} else {
		if len(m.Throughput) != 6 || len(m.ReqResp) != 3 || len(m.Quiet) != 3 || len(m.Low) != 3 {
			t.Errorf("mesh: %d throughput, %d open-loop, %d closed-loop and %d low-rate req/resp results, want 6, 3, 3 and 3",
				len(m.Throughput), len(m.ReqResp), len(m.Quiet), len(m.Low))
		}
		for _, x := range m.Throughput {
			// A stream the mesh resets may have moved nothing (the run
			// reports it); anything else moved bytes.
			if (x.Bytes == 0 && x.Errors == 0) || (x.Path == "cross-hub") != (x.MeshOpens > 0) {
				t.Errorf("mesh throughput %s %s: %d bytes, %d streams opened over the mesh", x.Path, x.Direction, x.Bytes, x.MeshOpens)
			}
		}
		for _, x := range slices.Concat(m.ReqResp, m.Low) {
			if (x.Latency.N == 0 && x.Errors == 0) || (x.Path == "cross-hub") != (x.MeshOpens >= m.RRConns) || x.CPU == nil {
				t.Errorf("mesh req/resp %s: %d latencies, %d streams opened over the mesh, CPU %v", x.Path, x.Latency.N, x.MeshOpens, x.CPU)
			}
		}
		for _, x := range m.Quiet {
			if x.Latency.N == 0 || x.Errors != 0 || (x.Path == "cross-hub") != (x.MeshOpens >= 1) {
				t.Errorf("mesh closed-loop req/resp %s: %d latencies, %d errors, %d streams opened over the mesh", x.Path, x.Latency.N, x.Errors, x.MeshOpens)
			}
		}
		if len(m.Health) != 2 || m.Health[0].ID != "hub-a" || m.Health[1].ID != "hub-b" {
			t.Errorf("mesh health: %+v, want hub-a's and hub-b's", m.Health)
		}
	}
	for _, id := range rep.Idle {
		if id.HubActive != id.Conns {
			t.Errorf("idle %d: the hub reports %d active streams", id.Conns, id.HubActive)
		}
	}
	for _, sw := range rep.Sweeps {
		for _, p := range sw.Points {
			if p.Error != "" {
				t.Errorf("sweep %s=%d: %s", sw.Param, p.Value, p.Error)
			}
		}
	}
	if len(rep.Figures) == 0 {
		t.Error("no figures derived")
	}

	path, err := WriteJSON(rep, filepath.Join(dir, "out"))
	if err != nil {
		t.Fatal(err)
	}
	back, err := ReadJSON(path)
	if err != nil {
		t.Fatal(err)
	}
	md := filepath.Join(dir, "BENCHMARKS.md")
	charts := filepath.Join(dir, "bench", "charts")
	if err := Render(back, md, charts, filepath.Join(dir, "no-analysis.md")); err != nil {
		t.Fatal(err)
	}
	text, err := os.ReadFile(md)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"## Targets", "## Throughput", "## Request/response", "## Connection setup",
		"## Idle memory", "## Slow-consumer isolation", "## Capacity tuning sweeps", "### Recommended settings",
		"(bench/charts/ratios.svg)", "## WAN", "`go run ./bench/runner -only wan`", "### Stalled clients", "(bench/charts/wan.svg)",
		"WAN 2 ms RTT: 1-stream throughput, download", "## Mesh", "`go run ./bench/runner -only mesh`", "(bench/charts/mesh.svg)",
		"Mesh: 1-stream throughput, upload, through hub B", "Mesh: the hop's added p50", "### Request/response, one connection, closed loop"} {
		if !strings.Contains(string(text), s) {
			t.Errorf("BENCHMARKS.md lacks %q", s)
		}
	}
	checkSVGs(t, charts)
}

// TestMeshNeedsProcs: the mesh scenario runs real hub processes, so an
// in-process run of it is refused up front, naming the mode.
func TestMeshNeedsProcs(t *testing.T) {
	_, err := Run(Options{Mode: "inproc", Only: []string{"mesh"}, Smoke: true, WorkDir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "mesh") || !strings.Contains(err.Error(), "-mode procs") {
		t.Fatalf("inproc mesh run: %v, want an error naming the scenario and -mode procs", err)
	}
}

// TestMetricSum: the mesh health counters add a family's samples whose
// labels match, and nothing of a family whose name only starts the same.
func TestMetricSum(t *testing.T) {
	text := "# TYPE nowconnect_x_total counter\n" +
		`nowconnect_x_total{peer="a",reason="inflight"} 2` + "\n" +
		`nowconnect_x_total{peer="a",reason="queue_full"} 3` + "\n" +
		"nowconnect_x_total_other 100\nnowconnect_y 7\n"
	for _, c := range []struct {
		name, label string
		want        float64
	}{
		{"nowconnect_x_total", "", 5},
		{"nowconnect_x_total", `reason="inflight"`, 2},
		{"nowconnect_x_total", `reason="nope"`, 0},
		{"nowconnect_y", "", 7},
		{"nowconnect_missing", "", 0},
	} {
		if got := metricSum(text, c.name, c.label); got != c.want {
			t.Errorf("metricSum(%s, %q) = %v, want %v", c.name, c.label, got, c.want)
		}
	}
}

func checkSVGs(t *testing.T, dir string) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "*.svg"))
	if len(files) < 5 {
		t.Errorf("%d charts in %s, want at least 5", len(files), dir)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		d := xml.NewDecoder(strings.NewReader(string(b)))
		for {
			_, err := d.Token()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Errorf("%s: not well-formed XML: %v", filepath.Base(f), err)
				break
			}
		}
	}
}

func TestRecommend(t *testing.T) {
	sw := Sweep{Points: []SweepPoint{
		{Value: 1, Up1: 50, Down1: 50, Down8: 50, RR50: 50},
		{Value: 2, Up1: 95, Down1: 92, Down8: 95, RR50: 95},
		{Value: 4, Up1: 100, Down1: 100, Down8: 100, RR50: 100},
		{Value: 8, Error: "boom"},
	}}
	recommend(&sw)
	if sw.Recommended != 2 {
		t.Errorf("recommended %d, want 2 (smallest within 10%% of the best)", sw.Recommended)
	}
}

func TestBarChartLogScale(t *testing.T) {
	svg := barChart("t <&>", "µs", []string{"a", "b"}, []series{{"x", colDirect, []float64{10, 1e5}}, {"y", colGateway, []float64{0, 3}}}, []float64{5, 0}, logScale)
	d := xml.NewDecoder(strings.NewReader(svg))
	for {
		_, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("not well-formed: %v\n%s", err, svg)
		}
	}
}

// TestGatewayHooks: a scenario's hub config lines land in their tables
// (the hub starts with them, and refuses a key it does not know, so they
// reach it), its agent flags reach the agent, and AgentDial puts a link
// between the agent and the control port.
func TestGatewayHooks(t *testing.T) {
	bin := testenv.Binary(t)
	tg, err := StartTargets(100, 1024)
	if err != nil {
		t.Fatal(err)
	}
	defer tg.Close()
	conns := connectors{"echo": tg.Echo}
	var link *wanlink.Link
	defer func() {
		if link != nil {
			_ = link.Close()
		}
	}()
	cfg := GatewayConfig{
		HubConfig: map[string][]string{
			"":         {`allow_cidrs = ["127.0.0.0/8"]`},
			"tunnel":   {`ping_interval = "5s"`},
			"timeouts": {`idle = "1h"`},
		},
		AgentArgs: []string{"--log-level", "error"},
		AgentDial: func(control string) (string, error) {
			l, err := wanlink.Start(wanlink.Config{Target: control, Delay: time.Millisecond})
			link = l
			if err != nil {
				return "", err
			}
			return l.Addr(), nil
		},
	}
	gw, err := startProcGateway(bin, t.TempDir(), cfg, conns)
	if err != nil {
		t.Fatal(err)
	}
	if err := echoOnce(gw.Addr("echo")); err != nil {
		t.Error(err)
	}
	gw.Close()
	if link == nil || link.Stats().Accepted == 0 {
		t.Error("the agent did not dial through the link")
	}

	for _, bad := range []struct {
		cfg  GatewayConfig
		want string
	}{
		{GatewayConfig{HubConfig: map[string][]string{"tunnel": {"no_such_key = 1"}}}, "no_such_key"},
		{GatewayConfig{AgentArgs: []string{"--no-such-flag"}}, "no-such-flag"},
	} {
		gw, err := startProcGateway(bin, t.TempDir(), bad.cfg, conns)
		if err == nil {
			gw.Close()
			t.Errorf("%s: the gateway started", bad.cfg)
			continue
		}
		if !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s: %v, want it to name %q", bad.cfg, err, bad.want)
		}
	}
	if _, err := startInprocGateway(GatewayConfig{AgentArgs: []string{"--tunnels", "1"}}, conns); err == nil || !strings.Contains(err.Error(), "procs") {
		t.Errorf("inproc with agent flags: %v, want an error naming procs mode", err)
	}
}
