package pace

import (
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// slackNs is the thread's timer slack while it paces: how late the kernel may
// fire its timers to batch wake-ups (the default is 50 µs).
const slackNs = 1000

func lockThread() bool {
	runtime.LockOSThread()
	if err := unix.Prctl(unix.PR_SET_TIMERSLACK, slackNs, 0, 0, 0); err != nil {
		runtime.UnlockOSThread()
		return false
	}
	return true
}

func unlockThread(precise bool) {
	if precise {
		// 0 restores the thread's default slack before the runtime reuses it.
		_ = unix.Prctl(unix.PR_SET_TIMERSLACK, 0, 0, 0, 0)
	}
	runtime.UnlockOSThread()
}

// preciseSleep sleeps d on CLOCK_MONOTONIC (the clock of Go's monotonic
// readings) until an absolute deadline, so a signal's EINTR resumes the same
// wait instead of starting a new one.
func preciseSleep(d time.Duration) {
	var now unix.Timespec
	if unix.ClockGettime(unix.CLOCK_MONOTONIC, &now) != nil {
		time.Sleep(d)
		return
	}
	at := unix.NsecToTimespec(now.Nano() + int64(d))
	for {
		err := unix.ClockNanosleep(unix.CLOCK_MONOTONIC, unix.TIMER_ABSTIME, &at, nil)
		if err != unix.EINTR {
			return
		}
	}
}
