package check

import (
	"context"
	"errors"
	"sync"
	"time"
)

// Run runs checks with at most concurrency of them at a time, each under its own timeout,
// and returns their results in the order of checks. Every check ends by its deadline (the
// probes stop when their context does), so a run takes about the longest timeout per
// ceil(len(checks)/concurrency) wave at worst. Cancelling ctx ends every check at once
// (UNKNOWN "cancelled"). Run owns its worker goroutines and returns after they exit.
func Run(ctx context.Context, checks []*Check, concurrency int) []Result {
	results := make([]Result, len(checks))
	if len(checks) == 0 {
		return results
	}
	concurrency = max(1, min(concurrency, len(checks)))
	work := make(chan int)
	var wg sync.WaitGroup
	for range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			workerLoop(ctx, checks, results, work)
		}()
	}
	for i := range checks {
		work <- i
	}
	close(work)
	wg.Wait()
	return results
}

// workerLoop runs the checks whose indexes it receives until work is closed.
func workerLoop(ctx context.Context, checks []*Check, results []Result, work <-chan int) {
	for i := range work {
		results[i] = runOne(ctx, checks[i])
	}
}

// runOne runs a check under its timeout.
func runOne(parent context.Context, c *Check) Result {
	res := Result{Name: c.Name, Type: c.Type}
	r := &report{name: c.Name, timeout: c.Timeout, secrets: c.secrets}
	ctx, cancel := context.WithTimeout(parent, c.Timeout)
	start := time.Now()
	if parent.Err() != nil {
		r.unknown("cancelled")
	} else {
		c.probe.run(ctx, r)
	}
	res.Duration = time.Since(start)
	cancel()
	if errors.Is(parent.Err(), context.Canceled) && r.status != OK {
		r.status, r.notes = Unknown, []string{"cancelled"}
	}
	if !r.noTime {
		r.perf = append([]Perf{{Label: c.Name + " time", Value: res.Duration.Seconds(), UOM: "s", Min: f64(0), Max: f64(c.Timeout.Seconds())}}, r.perf...)
	}
	res.Status = r.status
	res.Detail = oneLine(joinNotes(r.notes))
	res.Perf = r.perf
	return res
}

func joinNotes(notes []string) string {
	if len(notes) == 0 {
		return "ok"
	}
	out := notes[0]
	for _, n := range notes[1:] {
		out += "; " + n
	}
	return out
}
