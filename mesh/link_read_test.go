package mesh

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/nowconnect/nowconnect/internal/inq"
	"github.com/nowconnect/nowconnect/internal/testenv"
)

// lateConn is a TCP connection whose first Read reports its deadline passed,
// as Go's netpoller does when this hub resumes from SIGSTOP (or a paused VM)
// after its read deadline: the timer fires before the socket's readiness is
// looked at, although the peer's frames wait in the socket.
type lateConn struct {
	*net.TCPConn
	late bool
}

func (c *lateConn) Read(p []byte) (int, error) {
	if !c.late {
		c.late = true
		return 0, os.ErrDeadlineExceeded
	}
	return c.TCPConn.Read(p)
}

// A read deadline that passes while the peer's message waits in the socket is
// not a ping timeout: the reader reads the message (internal/inq). With
// nothing waiting, the deadline still ends the link.
func TestReaderDeadlinePassedWhileFramesWait(t *testing.T) {
	tc, peer := testenv.TCPPair(t)

	msg := ws.NewBinaryFrame([]byte{byte(0x7f), 1, 2, 3})
	if err := ws.WriteFrame(peer, msg); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 5*time.Second, "the message in the socket", func() bool { return inq.Pending(tc) })
	rd := wsReader{conn: &lateConn{TCPConn: tc}, buf: make([]byte, 2*maxMsgLen), timeout: 200 * time.Millisecond}
	op, p, err := rd.next()
	if err != nil {
		t.Fatalf("next after a late deadline with a message waiting: %v", err)
	}
	if op != ws.OpBinary || len(p) != 4 {
		t.Fatalf("next returned op %v, %d bytes", op, len(p))
	}

	rd = wsReader{conn: &lateConn{TCPConn: tc}, buf: make([]byte, 2*maxMsgLen), timeout: 200 * time.Millisecond}
	if _, _, err := rd.next(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("next with nothing waiting returned %v, want the deadline's error", err)
	}
}
