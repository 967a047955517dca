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
	ctl    func(fd uintptr) // d.control, made once: a closure per write would allocate
	iovecs [maxBatchItems]unix.Iovec
	// one write's arguments and results, for ctl
	bufs [][]byte
	n    int
	err  error
}

func newDirectConn(c *net.TCPConn) *directConn {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil
	}
	d := &directConn{rc: rc}
	d.ctl = d.control
	return d
}

// writev writes bufs with one writev that does not wait for the socket, and
// returns how many bytes it took (0 when the socket buffer is full).
func (d *directConn) writev(bufs [][]byte) (int, error) {
	// Control, not Write: RawConn.Write fails once the write deadline of an
	// earlier blocking batch has passed, and it would wait for the socket.
	// The sender's busy flag already makes this the socket's only writer.
	d.bufs = bufs
	err := d.rc.Control(d.ctl)
	n, werr := d.n, d.err
	d.bufs, d.n, d.err = nil, 0, nil
	if err != nil {
		return 0, err
	}
	return n, werr
}

func (d *directConn) control(fd uintptr) { d.n, d.err = iov.Writev(int(fd), d.iovecs[:], d.bufs) }
