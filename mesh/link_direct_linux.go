package mesh

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/nowconnect/nowconnect/internal/iov"
)

// directConn writes to a link's TCP socket without blocking, from whichever
// goroutine owns the sender (sender.writeDirect).
type directConn struct {
	rc     syscall.RawConn
	iovecs [maxBatchItems]unix.Iovec
}

func newDirectConn(c *net.TCPConn) *directConn {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil
	}
	return &directConn{rc: rc}
}

// writev writes bufs with one writev that does not wait for the socket, and
// returns how many bytes it took (0 when the socket buffer is full).
func (d *directConn) writev(bufs [][]byte) (int, error) {
	var n int
	var werr error
	// Control, not Write: RawConn.Write fails once the write deadline of an
	// earlier blocking batch has passed, and it would wait for the socket.
	// The sender's busy flag already makes this the socket's only writer.
	err := d.rc.Control(func(fd uintptr) { n, werr = iov.Writev(int(fd), d.iovecs[:], bufs) })
	if err != nil {
		return 0, err
	}
	return n, werr
}
