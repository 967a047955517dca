//go:build unix

package agent

import (
	"os"
	"syscall"
)

// initRead binds rawRead once so reads allocate nothing.
func (st *stream) initRead() { st.readFn = st.rawRead }

// readTarget reads up to st.want bytes from the target into a pooled frame
// buffer taken only once the socket is readable: while the target is idle
// the goroutine is parked in the netpoller holding no buffer. It returns
// (n > 0, buffer, nil), (0, nil, nil) at EOF, or (0, nil, err).
func (st *stream) readTarget() (int, *frameBuf, error) {
	st.rn, st.rb, st.rerr = 0, nil, nil
	if err := st.raw.Read(st.readFn); err != nil {
		return 0, nil, err
	}
	return st.rn, st.rb, st.rerr
}

// rawRead is the syscall.RawConn.Read callback: it returns false on EAGAIN
// so the runtime parks the goroutine until the fd is readable.
func (st *stream) rawRead(fd uintptr) bool {
	fb := getFrameBuf()
	for {
		n, err := syscall.Read(int(fd), fb.b[hdrRoom:hdrRoom+st.want])
		if err == syscall.EINTR {
			continue
		}
		if err == syscall.EAGAIN {
			putFrameBuf(fb)
			return false
		}
		if n > 0 {
			st.rn, st.rb = n, fb
			return true
		}
		putFrameBuf(fb)
		if err != nil {
			st.rerr = os.NewSyscallError("read", err)
		}
		return true
	}
}
