//go:build unix && !linux

package agent

import (
	"os"
	"sync"
	"syscall"
)

// readState is the state of targetReadLoop (targetread_other.go).
type readState struct {
	wake sync.Cond // L is &st.mu; signalled when credit arrives or the stream ends
	// owned by targetReadLoop
	readFn func(fd uintptr) bool // rawRead, bound once
	want   int
	rn     int
	rb     *frameBuf
	rerr   error
}

// rawRead is the syscall.RawConn.Read callback: it takes a buffer only once
// the socket is readable and returns false on EAGAIN so the runtime parks
// the goroutine until it is.
func (st *stream) rawRead(fd uintptr) bool {
	fb := getFrameBuf()
	for {
		n, err := syscall.Read(int(fd), fb.b[hdrRoom:hdrRoom+st.rd.want])
		if err == syscall.EINTR {
			continue
		}
		if err == syscall.EAGAIN {
			putFrameBuf(fb)
			return false
		}
		if n > 0 {
			st.rd.rn, st.rd.rb = n, fb
			return true
		}
		putFrameBuf(fb)
		if err != nil {
			st.rd.rerr = os.NewSyscallError("read", err)
		}
		return true
	}
}
