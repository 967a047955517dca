package engine

import (
	"errors"
	"fmt"
	"net"
	"os"
	"unsafe"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"
)

// Errors of the fd helpers.
var (
	// ErrWouldBlock reports that a non-blocking read found nothing.
	ErrWouldBlock = errors.New("engine: would block")
	// ErrNotConnected reports a socket gnet cannot adopt: both directions
	// have ended (TCP_CLOSE), so it has no peer address. What is left in
	// its receive queue can still be read with ReadFD, without blocking.
	ErrNotConnected = errors.New("engine: socket no longer connected")
)

// ReadFD reads from a non-blocking socket the caller owns. It returns
// (0, nil) at EOF and ErrWouldBlock when nothing is queued.
func ReadFD(fd int, p []byte) (int, error) {
	for {
		n, err := unix.Read(fd, p)
		switch err {
		case nil:
			return n, nil
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return 0, ErrWouldBlock
		default:
			return 0, fmt.Errorf("read: %w", err)
		}
	}
}

// WriteFD writes bufs to the non-blocking socket fd with one writev and
// returns how many bytes the kernel took. It never blocks and never copies:
// what the socket did not take stays with the caller. Call on the loop (it
// uses the loop's iovec array).
func (l *Loop) WriteFD(fd int, bufs [][]byte) (int, error) {
	n := 0
	for _, b := range bufs {
		if len(b) == 0 {
			continue
		}
		if n == maxIov {
			break
		}
		l.iovecs[n].Base = &b[0]
		l.iovecs[n].SetLen(len(b))
		n++
	}
	if n == 0 {
		return 0, nil
	}
	for {
		r, _, e := unix.Syscall(unix.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&l.iovecs[0])), uintptr(n))
		switch e {
		case 0:
			clear(l.iovecs[:n])
			return int(r), nil
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			clear(l.iovecs[:n])
			return 0, nil
		default:
			clear(l.iovecs[:n])
			return 0, fmt.Errorf("writev: %w", e)
		}
	}
}

// ShutdownWrite half-closes the socket: the peer reads EOF after the bytes
// already written.
func ShutdownWrite(fd int) error {
	if err := unix.Shutdown(fd, unix.SHUT_WR); err != nil && err != unix.ENOTCONN {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

// CloseFD closes a descriptor the caller owns (a dup). With abort set, the
// peer gets an RST instead of a FIN.
func CloseFD(fd int, abort bool) {
	if fd < 0 {
		return
	}
	if abort {
		_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
	}
	_ = unix.Close(fd)
}

// Park detaches c from gnet while keeping its socket open and unread: it
// returns a dup the caller owns. The caller must then return gnet.Close from
// the callback it runs in and recognise the close as a park in OnClose. The
// client's further writes fill the kernel buffers and then block: real
// backpressure, no user-space bytes held.
func Park(c gnet.Conn) (int, error) {
	fd, err := c.Dup()
	if err != nil {
		return -1, fmt.Errorf("park: dup: %w", err)
	}
	return fd, nil
}

// Enroll hands the socket fd to loop l (see Loop.Adopt): gnet takes its own
// descriptor and calls o.OnOpen there, or o.EnrollFailed. The caller keeps
// owning fd and may close it as soon as Enroll returns.
func Enroll(l *Loop, fd int, o Opener) error {
	nfd, err := unix.Dup(fd)
	if err != nil {
		return fmt.Errorf("enroll: dup: %w", err)
	}
	f := os.NewFile(uintptr(nfd), "enroll")
	nc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("enroll: %w", err)
	}
	// gnet dereferences the peer address while adopting the socket; a
	// socket whose both directions ended has none (getpeername: ENOTCONN).
	if nc.RemoteAddr() == nil {
		nc.Close()
		return ErrNotConnected
	}
	return l.Adopt(nc, o)
}
