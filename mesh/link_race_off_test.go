//go:build !race

package mesh_test

// raceEnabled reports whether the test binary was built with -race.
const raceEnabled = false
