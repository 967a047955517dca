//go:build !linux

package pace

import "time"

// Elsewhere the last stretch is time.Sleep too (bench/ and its figures are
// Linux's).
func preciseSleep(d time.Duration) { time.Sleep(d) }

// Precise reports whether Until's last stretch is a precise sleep here.
func Precise() bool { return false }
