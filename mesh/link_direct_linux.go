package mesh

import (
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
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
	n := 0
	for _, b := range bufs[:min(len(bufs), len(d.iovecs))] {
		if len(b) == 0 {
			continue
		}
		d.iovecs[n].Base = &b[0]
		d.iovecs[n].SetLen(len(b))
		n++
	}
	if n == 0 {
		return 0, nil
	}
	var written int
	var errno syscall.Errno
	// Control, not Write: RawConn.Write fails once the write deadline of an
	// earlier blocking batch has passed, and it would wait for the socket.
	// The sender's busy flag already makes this the socket's only writer.
	err := d.rc.Control(func(fd uintptr) {
		for {
			r, _, e := unix.Syscall(unix.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&d.iovecs[0])), uintptr(n))
			if e != unix.EINTR {
				written, errno = int(r), e
				return
			}
		}
	})
	clear(d.iovecs[:n])
	switch {
	case err != nil:
		return 0, err
	case errno == unix.EAGAIN:
		return 0, nil
	case errno != 0:
		return 0, errno
	}
	return written, nil
}
