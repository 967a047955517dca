package bench

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

// Report is one run, written as bench/out/<timestamp>.json.
type Report struct {
	Schema      int                `json:"schema"`
	Started     time.Time          `json:"started"`
	Seconds     float64            `json:"seconds"`
	Command     string             `json:"command"`
	Mode        string             `json:"mode"` // procs | inproc
	Smoke       bool               `json:"smoke"`
	Only        []string           `json:"only,omitempty"` // a partial run: these scenarios only
	Machine     Machine            `json:"machine"`
	Config      RunConfig          `json:"config"`
	Figures     []Figure           `json:"figures"`
	Throughput  []ThroughputResult `json:"throughput"`
	ReqResp     []RRResult         `json:"req_resp"`
	Setup       []SetupResult      `json:"setup"`
	Idle        []IdleResult       `json:"idle"`
	Slow        []SlowResult       `json:"slow_consumer"`
	WAN         *WANReport         `json:"wan,omitempty"`
	Mesh        *MeshReport        `json:"mesh,omitempty"`
	Sweeps      []Sweep            `json:"sweeps"`
	Recommended *GatewayConfig     `json:"recommended,omitempty"`
	Notes       []string           `json:"notes"`
}

// Machine describes where the run happened.
type Machine struct {
	NProc     int    `json:"nproc"`
	CPUModel  string `json:"cpu_model"`
	Kernel    string `json:"kernel"`
	GoVersion string `json:"go_version"`
	MemTotal  string `json:"mem_total"`
	NoFile    uint64 `json:"nofile"`
}

// RunConfig are the sizes and durations used.
type RunConfig struct {
	WarmSec       float64 `json:"warm_sec"`
	DurSec        float64 `json:"dur_sec"`
	SweepDurSec   float64 `json:"sweep_dur_sec"`
	ReqSize       int     `json:"req_size"`
	RespSize      int     `json:"resp_size"`
	RRConns       []int   `json:"rr_conns"`
	OpenRates     []int   `json:"open_rates"`
	IdleCounts    []int   `json:"idle_counts"`
	SlowStreams   int     `json:"slow_streams"`
	SetupParallel int     `json:"setup_parallel"`
	MultiStreams  int     `json:"multi_streams"`
}

// Figure is one row of the targets table.
type Figure struct {
	Name     string  `json:"name"`
	Unit     string  `json:"unit"`
	Direct   float64 `json:"direct"`  // NaN-free: 0 when not applicable
	Gateway  float64 `json:"gateway"` // in Unit
	Ratio    float64 `json:"ratio"`   // gateway/direct (isolation: the gateway's own ratio)
	Target   string  `json:"target"`  // e.g. "≥0.5×"; "" = informational
	Met      *bool   `json:"met,omitempty"`
	NoDirect bool    `json:"no_direct,omitempty"`
	BgCPU    float64 `json:"background_cpu_cores"` // other processes\' CPU while measured (max of both paths)
}

// IdleResult is idle memory at one connection count (procs mode).
type IdleResult struct {
	Conns        int     `json:"conns"`
	HubRSSBase   int64   `json:"hub_rss_base"`
	HubRSS       int64   `json:"hub_rss"`
	AgentRSSBase int64   `json:"agent_rss_base"`
	AgentRSS     int64   `json:"agent_rss"`
	HubPerConn   float64 `json:"hub_rss_per_conn"`   // bytes
	AgentPerConn float64 `json:"agent_rss_per_conn"` // bytes
	HubAnonPer   float64 `json:"hub_anon_per_conn"`  // RssAnon based
	AgentAnonPer float64 `json:"agent_anon_per_conn"`
	OpenSeconds  float64 `json:"open_seconds"`
	HubActive    int     `json:"hub_active_streams"` // from the hub's /metrics
	// From go_memstats_heap_inuse_bytes / go_memstats_stack_inuse_bytes of
	// the hub's /metrics and the agent's metrics_listen (procs mode; 0 and
	// HeapNote set when a process does not export them).
	HubHeapPerConn    float64 `json:"hub_heap_per_conn"`
	HubStackPerConn   float64 `json:"hub_stack_per_conn"`
	AgentHeapPerConn  float64 `json:"agent_heap_per_conn"`
	AgentStackPerConn float64 `json:"agent_stack_per_conn"`
	HeapNote          string  `json:"heap_note,omitempty"`
	// Inproc: hub and agent ran in the runner. Then HubRSS* and HubPerConn
	// are the runner's (hub + agent + client side), and the Go heap and
	// stacks are measured after a GC.
	Inproc       bool    `json:"inproc,omitempty"`
	HeapPerConn  float64 `json:"heap_per_conn,omitempty"`
	StackPerConn float64 `json:"stack_per_conn,omitempty"`
}

// Sweep is one parameter varied with the others at their defaults.
type Sweep struct {
	Param       string       `json:"param"`
	Key         string       `json:"key"` // config key
	Points      []SweepPoint `json:"points"`
	Recommended int          `json:"recommended"`
	Why         string       `json:"why"`
}

// SweepPoint is one value of a sweep.
type SweepPoint struct {
	Value   int     `json:"value"`
	Up1     float64 `json:"up1_bytes_per_sec"`
	Down1   float64 `json:"down1_bytes_per_sec"`
	Down8   float64 `json:"down8_bytes_per_sec"`
	RR50    float64 `json:"rr50_per_sec"`
	RR50P99 float64 `json:"rr50_p99_us"`
	SlowIso float64 `json:"slow_isolation,omitempty"`
	BgCPU   float64 `json:"background_cpu_cores"`
	Score   float64 `json:"score"`
	Error   string  `json:"error,omitempty"`
}

func machineInfo() Machine {
	m := Machine{NProc: runtime.NumCPU(), GoVersion: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "MemTotal:"); ok {
				var kb int64
				fmt.Sscan(strings.TrimSuffix(strings.TrimSpace(v), " kB"), &kb)
				m.MemTotal = fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
			}
		}
	}
	if out, err := exec.Command("go", "version").Output(); err == nil {
		m.GoVersion = strings.TrimSpace(strings.TrimPrefix(string(out), "go version "))
	}
	return m
}

// WriteJSON writes r into dir as <timestamp>.json (smoke runs:
// smoke-<timestamp>.json, runs of some scenarios: partial-<timestamp>.json)
// and returns the path.
func WriteJSON(r *Report, dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	name := r.Started.UTC().Format("20060102T150405Z") + ".json"
	switch {
	case r.Smoke:
		name = "smoke-" + name
	case len(r.Only) > 0:
		name = "partial-" + name
	}
	p := filepath.Join(dir, name)
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return "", err
	}
	return p, os.WriteFile(p, append(b, '\n'), 0o644)
}

// LatestJSON returns the newest full-run JSON in dir.
func LatestJSON(dir string) (string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	var names []string
	for _, e := range ents {
		n := e.Name()
		if strings.HasSuffix(n, ".json") && !strings.HasPrefix(n, "smoke-") && !strings.HasPrefix(n, "partial-") {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		return "", fmt.Errorf("no run JSON in %s", dir)
	}
	slices.Sort(names)
	return filepath.Join(dir, names[len(names)-1]), nil
}

// ReadJSON loads a report.
func ReadJSON(path string) (*Report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &r, nil
}
