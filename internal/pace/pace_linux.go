package pace

import (
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// slackNs is the thread's timer slack for a precise sleep: how late the kernel
// may fire its timers to batch wake-ups (the default is 50 µs).
const slackNs = 1000

// preciseSleep sleeps d on CLOCK_MONOTONIC (the clock of Go's monotonic
// readings) until an absolute deadline, so a signal's EINTR resumes the same
// wait instead of starting a new one. The goroutine stays on its thread for
// the slack and the sleep; the slack stays on the thread (it only tightens the
// timers the runtime sets on it).
func preciseSleep(d time.Duration) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var now unix.Timespec
	if setSlack() != nil || unix.ClockGettime(unix.CLOCK_MONOTONIC, &now) != nil {
		time.Sleep(d)
		return
	}
	at := unix.NsecToTimespec(now.Nano() + int64(d))
	for unix.ClockNanosleep(unix.CLOCK_MONOTONIC, unix.TIMER_ABSTIME, &at, nil) == unix.EINTR {
	}
}

func setSlack() error { return unix.Prctl(unix.PR_SET_TIMERSLACK, slackNs, 0, 0, 0) }

// Precise reports whether Until's last stretch is a precise sleep here.
func Precise() bool { return true }
