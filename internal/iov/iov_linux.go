// Package iov writes gathered buffers to a non-blocking socket with one
// writev, without copying and without blocking: the mesh link and the
// agent's tunnel write with it while their writer goroutine is idle (Conn).
package iov

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Writev writes bufs (as many of the non-empty ones as vec, the caller's
// iovec array, holds) to the non-blocking socket fd and returns how many
// bytes the kernel took: 0 when the socket buffer is full. What it did not
// take stays with the caller. vec is cleared again before it returns.
func Writev(fd int, vec []unix.Iovec, bufs [][]byte) (int, error) {
	n := 0
	for _, b := range bufs {
		if n == len(vec) {
			break
		}
		if len(b) == 0 {
			continue
		}
		vec[n].Base = &b[0]
		vec[n].SetLen(len(b))
		n++
	}
	if n == 0 {
		return 0, nil
	}
	defer clear(vec[:n])
	for {
		r, _, e := unix.Syscall(unix.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&vec[0])), uintptr(n))
		switch e {
		case 0:
			return int(r), nil
		case unix.EINTR:
		case unix.EAGAIN:
			return 0, nil
		default:
			return 0, fmt.Errorf("writev: %w", e)
		}
	}
}
