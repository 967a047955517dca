package iov

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// MaxVec is the most buffers one Conn.Writev passes to the kernel; what lies
// beyond stays with the caller like any other unwritten rest.
const MaxVec = 512

// Conn writes a socket that Go's netpoller owns without going through it:
// one writev that never waits, from whichever goroutine the caller's own
// rule makes the socket's only writer at that moment. The mesh link and the
// agent's tunnel write small batches with it from the goroutine that
// queued them, instead of waking their writer goroutine.
type Conn struct {
	rc  syscall.RawConn
	ctl func(fd uintptr) // c.control, made once: a closure per write would allocate
	vec [MaxVec]unix.Iovec
	// one write's arguments and results, for ctl
	bufs [][]byte
	n    int
	err  error
}

// NewConn returns a Conn for sc (a *net.TCPConn), or nil when its
// descriptor cannot be reached.
func NewConn(sc syscall.Conn) *Conn {
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	c := &Conn{rc: rc}
	c.ctl = c.control
	return c
}

// Writev writes bufs with one writev that does not wait for the socket and
// returns how many bytes the kernel took: 0 when the socket buffer is full.
// It does not allocate.
func (c *Conn) Writev(bufs [][]byte) (int, error) {
	// Control, not Write: RawConn.Write fails once the write deadline of an
	// earlier blocking write has passed, and it waits for the socket.
	c.bufs = bufs
	err := c.rc.Control(c.ctl)
	n, werr := c.n, c.err
	c.bufs, c.n, c.err = nil, 0, nil
	if err != nil {
		return 0, err
	}
	return n, werr
}

func (c *Conn) control(fd uintptr) { c.n, c.err = Writev(int(fd), c.vec[:], c.bufs) }
