package hub

import "syscall"

// Descriptor budget. Running out of descriptors must never leave the hub
// alive but deaf, so it caps the client connections it holds below
// RLIMIT_NOFILE and keeps the rest for what must go on working: the control
// port (/healthz, /metrics, agents' tunnels), the descriptors a stream
// needs for a moment while it is handed to a loop, parked or half-closed,
// and the process's own files. A client beyond the cap is accepted and
// reset at once (counted as listener_errors_total{type="accept"}, logged at
// a limited rate); the engine's accept loops survive EMFILE anyway (see
// package engine), so a limit hit by something else costs only the
// connections that arrive meanwhile. Go raises the soft limit to the hard
// limit at start, so the budget is taken from the limit in force.
const (
	minFDReserve = 64
	maxFDReserve = 1024
)

// defaultMaxConnections derives the cap from RLIMIT_NOFILE: a quarter of it
// (64..1024 descriptors) is kept in reserve.
func defaultMaxConnections() int64 {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Cur == 0 {
		return 1 << 20
	}
	n := int64(rl.Cur)
	if rl.Cur > 1<<40 { // RLIM_INFINITY
		return 1 << 30
	}
	reserve := min(max(n/4, minFDReserve), maxFDReserve)
	return max(n-reserve, 1)
}
