package testenv

import (
	"net"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// UnacceptingAddr returns a 127.0.0.1 address whose accept queue is full: a listener with
// backlog 0 that never accepts, holding one connection. The kernel drops further SYNs, so
// a connect to it hangs until the dialer gives up or is cancelled: a black hole that works
// on a loopback-only machine. Everything is closed in t.Cleanup.
func UnacceptingAddr(t testing.TB) string {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("testenv: socket: %v", err)
	}
	t.Cleanup(func() { _ = unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatalf("testenv: bind: %v", err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatalf("testenv: listen: %v", err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatalf("testenv: getsockname: %v", err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*unix.SockaddrInet4).Port))
	filler, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("testenv: filling the accept queue of %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = filler.Close() })
	return addr
}
