package bench

import (
	"encoding/xml"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nowconnect/nowconnect/internal/testenv"
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
		"(bench/charts/ratios.svg)"} {
		if !strings.Contains(string(text), s) {
			t.Errorf("BENCHMARKS.md lacks %q", s)
		}
	}
	checkSVGs(t, charts)
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
