// Package pace waits for an absolute time more precisely than time.Sleep, for
// the open-loop load generators (bench/ and loadtest/) whose latencies are
// measured from each request's scheduled time.
//
// time.Sleep and Go timers wake through the runtime's netpoller, whose
// epoll_wait timeout is in whole milliseconds: in a process with nothing else
// to do, a 200 µs sleep ends about 0.9 ms late (measured on the 2-core bench
// box: p50 902 µs). An open loop at 5000 req/s then sends its requests in bursts
// at each millisecond and every latency it reports carries up to a millisecond
// of the generator's own lateness. Until instead sleeps the last stretch in
// clock_nanosleep with a timer slack of 1 µs (p50 37–48 µs late, p99 78–106 µs
// on the same box; the rest is the VM waking a halted vCPU).
package pace

import (
	"context"
	"time"
)

// coarse is how much of a wait is left to the precise sleep: the part before
// it is an ordinary timer, so that a cancelled context ends a long wait at
// once. Precise sleeps hold an OS thread; this bounds them to 2 ms each.
const coarse = 2 * time.Millisecond

// Until sleeps until t, or until ctx is done (then it returns ctx's error).
// It returns at once when t has passed, and never before t otherwise. Safe
// from any goroutine; each concurrent precise sleep holds a thread.
func Until(ctx context.Context, t time.Time) error {
	if d := time.Until(t) - coarse; d > 0 {
		tm := time.NewTimer(d)
		select {
		case <-tm.C:
		case <-ctx.Done():
			tm.Stop()
			return ctx.Err()
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if d := time.Until(t); d > 0 {
		preciseSleep(d)
	}
	return nil
}
