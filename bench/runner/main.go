// Command runner runs the NowConnect benchmarks (see BENCHMARKS.md):
//
//	go run ./bench/runner              # full run (make bench), < 5 min
//	go run ./bench/runner -smoke       # every scenario, tiny sizes (make bench-smoke)
//	go run ./bench/runner -report      # regenerate BENCHMARKS.md from the newest bench/out/*.json
//	go run ./bench/runner -only wan    # the WAN scenario alone (bench/out/partial-*.json; render with -report -in)
//	go run ./bench/runner -only mesh   # the HA mesh scenario alone (two hubs, an agent, redis-server; procs mode)
//	go run ./bench/runner -mode inproc -only thr -cpuprofile cpu.prof
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"

	"github.com/nowconnect/nowconnect/bench"
)

func main() {
	bench.ChildMain()
	os.Exit(run())
}

func run() int {
	mode := flag.String("mode", "procs", "procs: hub and agent as separate nowconnect processes; inproc: in this process (for -cpuprofile)")
	smoke := flag.Bool("smoke", false, "every scenario at tiny sizes and durations; asserts nothing about figures")
	only := flag.String("only", "", "comma-separated scenarios to run: "+strings.Join(bench.Scenarios, ","))
	noSweeps := flag.Bool("no-sweeps", false, "skip the capacity sweeps")
	bin := flag.String("bin", "", "prebuilt nowconnect binary (default: go build ./cmd/nowconnect into a temp dir)")
	outDir := flag.String("out", "", "directory for the run JSON (default bench/out; smoke: a temp dir)")
	md := flag.String("md", "", "BENCHMARKS.md to regenerate (default ./BENCHMARKS.md; smoke: in the temp dir)")
	report := flag.Bool("report", false, "only regenerate BENCHMARKS.md from the newest JSON in -out (or -in)")
	in := flag.String("in", "", "with -report: the run JSON to render")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of this process (use with -mode inproc)")
	memprofile := flag.String("memprofile", "", "with -mode inproc: heap profile once the idle connections are open")
	rates := flag.String("rates", "", "open-loop offered rates, req/s, comma-separated (default 5000,10000,20000)")
	idle := flag.String("idle", "", "idle connection counts, comma-separated (default 1000,10000)")
	dur := flag.Duration("dur", 0, "measurement duration per scenario (default 2s; smoke 150ms)")
	agentArgs := flag.String("agent-args", "", "extra premise flags for every gateway, space-separated (procs mode), e.g. \"--tunnels 1\"")
	flag.Parse()
	if *memprofile != "" {
		runtime.MemProfileRate = 64 // fine-grained: attribute per-stream allocations
	}

	root, err := moduleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "nc-bench:", err)
		return 1
	}
	if *outDir == "" {
		*outDir = filepath.Join(root, "bench", "out")
		if *smoke {
			d, err := os.MkdirTemp("", "nc-bench-smoke-*")
			if err != nil {
				fmt.Fprintln(os.Stderr, "nc-bench:", err)
				return 1
			}
			*outDir = d
		}
	}
	if *md == "" {
		*md = filepath.Join(root, "BENCHMARKS.md")
		if *smoke {
			*md = filepath.Join(*outDir, "BENCHMARKS.md")
		}
	}
	charts := filepath.Join(filepath.Dir(*md), "bench", "charts")
	if *report {
		path := *in
		if path == "" {
			if path, err = bench.LatestJSON(*outDir); err != nil {
				fmt.Fprintln(os.Stderr, "nc-bench:", err)
				return 1
			}
		}
		rep, err := bench.ReadJSON(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, "nc-bench:", err)
			return 1
		}
		if err := bench.Render(rep, *md, charts, filepath.Join(root, "bench", "analysis.md")); err != nil {
			fmt.Fprintln(os.Stderr, "nc-bench:", err)
			return 1
		}
		fmt.Fprintf(os.Stderr, "wrote %s from %s\n", *md, path)
		return 0
	}

	opts := bench.Options{
		Mode: *mode, Smoke: *smoke, Binary: *bin, Root: root, NoSweeps: *noSweeps,
		Command:  "go run ./bench/runner " + strings.Join(os.Args[1:], " "),
		Progress: os.Stderr, TTY: isTerminal(os.Stderr), Dur: *dur, MemProfile: *memprofile,
	}
	opts.Command = strings.TrimSpace(opts.Command)
	if *only != "" {
		opts.Only = strings.Split(*only, ",")
	}
	if *agentArgs != "" {
		if *mode == "inproc" {
			fmt.Fprintln(os.Stderr, "nc-bench: -agent-args needs -mode procs")
			return 2
		}
		opts.AgentArgs = strings.Fields(*agentArgs)
	}
	if opts.OpenRates, err = ints(*rates); err != nil {
		fmt.Fprintln(os.Stderr, "nc-bench: -rates:", err)
		return 2
	}
	if opts.IdleCounts, err = ints(*idle); err != nil {
		fmt.Fprintln(os.Stderr, "nc-bench: -idle:", err)
		return 2
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "nc-bench:", err)
			return 1
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "nc-bench:", err)
			return 1
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	rep, runErr := bench.Run(opts)
	code := 0
	if runErr != nil {
		fmt.Fprintln(os.Stderr, "nc-bench: run failed:", runErr)
		code = 1
	}
	path, err := bench.WriteJSON(rep, *outDir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "nc-bench:", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "wrote %s\n", path)
	// A partial or filtered run does not overwrite the real BENCHMARKS.md.
	if runErr == nil && (*smoke || len(opts.Only) == 0) {
		if *smoke {
			charts = filepath.Join(*outDir, "bench", "charts")
		}
		if err := bench.Render(rep, *md, charts, filepath.Join(root, "bench", "analysis.md")); err != nil {
			fmt.Fprintln(os.Stderr, "nc-bench:", err)
			return 1
		}
		fmt.Fprintf(os.Stderr, "wrote %s\n", *md)
	}
	bench.PrintFigures(os.Stdout, rep)
	return code
}

func ints(s string) ([]int, error) {
	if s == "" {
		return nil, nil
	}
	var out []int
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || v <= 0 {
			return nil, fmt.Errorf("bad value %q", f)
		}
		out = append(out, v)
	}
	return out, nil
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("not inside the nowconnect module")
	}
	return filepath.Dir(gomod), nil
}

func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0 && os.Getenv("TERM") != "dumb"
}
