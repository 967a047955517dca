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
	readFn  func(fd uintptr) bool // rawRead, bound once
	want    int                   // tunnel-level credit reserved for the read in progress (refunded by the loop)
	rn      int
	rb      *frameBuf
	rerr    error
	starved bool // rawRead found no tunnel-level credit: the loop waits for the tunnel's WINDOW
}

// rawRead is the syscall.RawConn.Read callback: it takes a buffer only once
// the socket is readable and returns false on EAGAIN so the runtime parks
// the goroutine until it is.
func (st *stream) rawRead(fd uintptr) bool {
	if !st.reserveRead() {
		return true
	}
	fb := getFrameBuf()
	for {
		n, err := syscall.Read(int(fd), fb.b[hdrRoom:hdrRoom+st.rd.want])
		if err == syscall.EINTR {
			continue
		}
		if err == syscall.EAGAIN {
			putFrameBuf(fb)
			st.releaseRead()
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
