// Package pace waits for an absolute time more precisely than time.Sleep, for
// the open-loop load generators (bench/ and loadtest/) whose latencies are
// measured from each request's scheduled time.
//
// time.Sleep and Go timers wake through the runtime's netpoller, whose
// epoll_wait timeout is in whole milliseconds: in a process with nothing else
// to do, a 200 µs sleep ends about 0.9 ms late (measured on the 2-core bench
// box: p50 902 µs). An open loop at 5000 req/s then sends its requests in bursts
// at each millisecond and every latency it reports carries up to a millisecond
// of the generator's own lateness. A Sleeper instead sleeps in clock_nanosleep
// on a thread of its own with a timer slack of 1 µs (p50 37 µs late, p99 78 µs
// on the same box; the rest is the VM waking a halted vCPU).
package pace

import "time"

// A Sleeper sleeps until absolute times. It belongs to the goroutine that
// created it, which stays on its OS thread until Close: create it, use it and
// close it on that goroutine.
type Sleeper struct {
	precise bool // the platform's precise sleep is in use
}

// NewSleeper locks the calling goroutine to its thread and sets that thread up
// for precise sleeps.
func NewSleeper() *Sleeper { return &Sleeper{precise: lockThread()} }

// Until sleeps until t; it returns at once when t has passed.
func (s *Sleeper) Until(t time.Time) {
	d := time.Until(t)
	if d <= 0 {
		return
	}
	if !s.precise {
		time.Sleep(d)
		return
	}
	preciseSleep(d)
}

// Precise reports whether sleeps use the precise clock (Linux) or fall back
// to time.Sleep.
func (s *Sleeper) Precise() bool { return s.precise }

// Close restores the thread and unlocks the goroutine from it.
func (s *Sleeper) Close() { unlockThread(s.precise) }
