//go:build !linux

package pace

import (
	"runtime"
	"time"
)

// Elsewhere a Sleeper falls back to time.Sleep (bench/ and its figures are
// Linux's).
func lockThread() bool {
	runtime.LockOSThread()
	return false
}

func unlockThread(bool) { runtime.UnlockOSThread() }

func preciseSleep(d time.Duration) { time.Sleep(d) }
