package testenv

import (
	"net"
	"testing"
)

// TCPPair returns both ends of a loopback TCP connection (the dialer's end
// first); a cleanup closes both.
func TCPPair(t testing.TB) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c1, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c2, err := ln.Accept()
	if err != nil {
		_ = c1.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c1.Close(); _ = c2.Close() })
	return c1.(*net.TCPConn), c2.(*net.TCPConn)
}
