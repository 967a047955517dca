package testenv

import (
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// leakTimeout is how long CheckGoroutines waits for goroutines to finish.
const leakTimeout = 10 * time.Second

// CheckGoroutines records the goroutines alive now and registers a cleanup that, once
// the cleanups registered after it have run (so call it first in the test), polls for
// up to 10s until every goroutine started since has exited, then fails the test with
// the stacks of those left. Goroutines of tests (testing.tRunner) are not counted, nor
// the idle workers of gnet's process-wide goroutine pool (ants), which expire on their
// own schedule and belong to no hub.
//
// A goroutine started by another test running in parallel would count as a leak: use it
// in tests that do not call t.Parallel (and whose package's other tests finished or are
// not parallel either).
func CheckGoroutines(t testing.TB) {
	t.Helper()
	before := goroutineIDs(goroutineStacks())
	t.Cleanup(func() {
		var left []string
		ok := poll(leakTimeout, func() bool {
			left = left[:0]
			for _, g := range goroutineStacks() {
				if !slices.Contains(before, goroutineID(g)) && !strings.Contains(g, "testing.tRunner(") &&
					!strings.Contains(g, "github.com/panjf2000/ants/") {
					left = append(left, g)
				}
			}
			return len(left) == 0
		})
		if !ok {
			t.Errorf("testenv: %d goroutine(s) still running %v after the test:\n\n%s",
				len(left), leakTimeout, strings.Join(left, "\n\n"))
		}
	})
}

// goroutineStacks returns the stack of every goroutine except the caller's.
func goroutineStacks() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	gs := strings.Split(strings.TrimSpace(string(buf)), "\n\n")
	return gs[1:] // the first is the calling goroutine
}

// goroutineID returns "goroutine N" of a stack ("goroutine N [state]:\n…").
func goroutineID(stack string) string {
	head, _, _ := strings.Cut(stack, " [")
	return head
}

func goroutineIDs(stacks []string) []string {
	ids := make([]string, len(stacks))
	for i, g := range stacks {
		ids[i] = goroutineID(g)
	}
	return ids
}

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
	var out []string
	for _, g := range goroutineStacks() {
		for _, line := range strings.Split(g, "\n") {
			if strings.HasPrefix(line, prefix) || strings.HasPrefix(line, "created by "+prefix) {
				out = append(out, g)
				break
			}
		}
	}
	return out
}
