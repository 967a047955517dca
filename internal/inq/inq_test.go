package inq

import (
	"crypto/tls"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/internal/testenv"
)

// Pending is false on a quiet socket, true once the peer wrote (also through
// TLS), and false again once the bytes are read.
func TestPending(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("SIOCINQ is Linux's")
	}
	c, s := testenv.TCPPair(t)
	if Pending(c) {
		t.Fatal("Pending on a socket nobody wrote to")
	}
	if _, err := s.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 5*time.Second, "the bytes to arrive", func() bool { return Pending(c) })
	if !Pending(tls.Client(c, &tls.Config{InsecureSkipVerify: true})) {
		t.Fatal("Pending does not look through tls.Conn")
	}
	if _, err := io.ReadFull(c, make([]byte, 4)); err != nil {
		t.Fatal(err)
	}
	if Pending(c) {
		t.Fatal("Pending after every byte was read")
	}
	if Pending(pipeConn{}) {
		t.Fatal("Pending on a connection without a socket")
	}
}

type pipeConn struct{ net.Conn }
