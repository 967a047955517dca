package pace

import (
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// The precise sleep runs with the small timer slack.
func TestPreciseSleepSetsTimerSlack(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := unix.Prctl(unix.PR_SET_TIMERSLACK, 0, 0, 0, 0); err != nil { // the default
		t.Fatal(err)
	}
	preciseSleep(10_000) // 10 µs; nested LockOSThread keeps this thread
	got, err := unix.PrctlRetInt(unix.PR_GET_TIMERSLACK, 0, 0, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got != slackNs {
		t.Fatalf("timer slack %d ns after a precise sleep, want %d", got, slackNs)
	}
}
