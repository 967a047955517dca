// Package inq tells whether a socket has received bytes nobody has read yet.
//
// The hub, the agent and the mesh links call a peer dead after PingTimeout
// of silence. When this process itself did not run for that long (SIGSTOP and
// SIGCONT, a paused VM, a stalled host), the peer's pings are waiting in the
// socket when it resumes, yet its read deadline or ticker fires first: that
// closed healthy tunnels and mesh links on resume, and a resumed hub refused
// clients (mesh_down) until its links came back. Each liveness check asks
// Pending first: bytes waiting mean the peer spoke, and the read will say so.
package inq

import (
	"net"
	"syscall"
)

// Pending reports whether c's socket holds received bytes not yet read. It
// looks through TLS (tls.Conn's NetConn) to the TCP socket; for a connection
// without one it reports false. Safe from any goroutine.
func Pending(c net.Conn) bool {
	for {
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		c = u.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var n int
	if rc.Control(func(fd uintptr) { n = PendingFD(int(fd)) }) != nil {
		return false
	}
	return n > 0
}
