package testenv

import (
	"bytes"
	"runtime"
	"strings"
	"testing"
	"time"
)

// WaitGoroutinesGone polls until no goroutine other than the caller's runs
// a function whose name starts with prefix (for example
// "github.com/nowconnect/nowconnect/internal/wanlink."), and fails the test
// with their stacks once timeout has passed. Put the tests in an external
// test package (package x_test) so that their own goroutines do not match.
func WaitGoroutinesGone(t testing.TB, timeout time.Duration, prefix string) {
	t.Helper()
	var left []string
	if poll(timeout, func() bool { left = goroutinesIn(prefix); return len(left) == 0 }) {
		return
	}
	t.Fatalf("testenv: %d goroutines of %s still running after %v:\n\n%s", len(left), prefix, timeout, strings.Join(left, "\n\n"))
}

// goroutinesIn returns the stacks of the other goroutines that have a
// frame of a function starting with prefix.
func goroutinesIn(prefix string) []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var out []string
	for i, g := range bytes.Split(buf, []byte("\n\n")) {
		if i == 0 { // the calling goroutine comes first
			continue
		}
		for _, line := range strings.Split(string(g), "\n") {
			if strings.HasPrefix(line, prefix) || strings.HasPrefix(line, "created by "+prefix) {
				out = append(out, string(g))
				break
			}
		}
	}
	return out
}
