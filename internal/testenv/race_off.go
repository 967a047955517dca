//go:build !race

package testenv

// raceEnabled reports whether the test binary was built with -race; Binary then builds
// the gateway with -race too.
const raceEnabled = false
