package pace

import (
	"testing"

	"golang.org/x/sys/unix"
)

// The Sleeper's thread has the small timer slack while it is open.
func TestSleeperSetsTimerSlack(t *testing.T) {
	s := NewSleeper()
	defer s.Close()
	got, err := unix.PrctlRetInt(unix.PR_GET_TIMERSLACK, 0, 0, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got != slackNs {
		t.Fatalf("timer slack %d ns, want %d", got, slackNs)
	}
}
