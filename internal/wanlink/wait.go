package wanlink

import (
	"sync"
	"time"
)

// waiter is how a writer sleeps until its head chunk is due. Go's timers
// wake an idle process in whole milliseconds (the netpoller's epoll
// timeout), which would add up to a millisecond to every hop; on Linux a
// timerfd in the netpoller wakes the writer within microseconds.
type waiter interface {
	// sleep waits d; false once cancel was called (before or during).
	// Called by the writer only.
	sleep(d time.Duration) bool
	// cancel makes the current and every later sleep return false. Safe
	// from any goroutine.
	cancel()
	// close releases the waiter; called by the writer as it returns.
	close()
}

// newWaiter returns the precise waiter where the system has one, else a
// timer-based one.
func newWaiter() waiter {
	if w, err := newFDWaiter(); err == nil {
		return w
	}
	return newTimerWaiter()
}

// timerWaiter sleeps on one reused time.Timer.
type timerWaiter struct {
	t    *time.Timer
	done chan struct{}
	once sync.Once
}

func newTimerWaiter() *timerWaiter {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &timerWaiter{t: t, done: make(chan struct{})}
}

func (w *timerWaiter) sleep(d time.Duration) bool { return sleepFor(w.t, d, w.done) }
func (w *timerWaiter) cancel()                    { w.once.Do(func() { close(w.done) }) }
func (w *timerWaiter) close()                     { w.t.Stop() }
