package agent

import (
	"os"
	"sync"
	"syscall"
)

// wsaeWouldBlock is WSAEWOULDBLOCK, which package syscall does not name.
const wsaeWouldBlock syscall.Errno = 10035

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
	waited  bool // the last rawRead returned false: the runtime's wait for readability is over now
}

// rawRead is the syscall.RawConn.Read callback on Windows. Windows sockets
// have no readiness poll in Go, but RawConn.Read waits for readability (a
// zero-byte overlapped WSARecv) each time the callback returns false. So
// the first call of each read only asks for that wait, holding no buffer
// while the target is idle; the next, made once data (or EOF) is there,
// receives it with a WSARecv that does not block.
func (st *stream) rawRead(fd uintptr) bool {
	if !st.rd.waited {
		st.rd.waited = true
		return false
	}
	st.rd.waited = false
	if !st.reserveRead() {
		return true
	}
	fb := getFrameBuf()
	b := fb.b[hdrRoom : hdrRoom+st.rd.want]
	buf := syscall.WSABuf{Len: uint32(len(b)), Buf: &b[0]}
	var n, flags uint32
	err := syscall.WSARecv(syscall.Handle(fd), &buf, 1, &n, &flags, nil, nil)
	if err == wsaeWouldBlock { // a non-blocking socket with nothing after all: wait again
		putFrameBuf(fb)
		st.releaseRead()
		st.rd.waited = true
		return false
	}
	if err == nil && n > 0 {
		st.rd.rn, st.rd.rb = int(n), fb
		return true
	}
	putFrameBuf(fb)
	if err != nil {
		st.rd.rerr = os.NewSyscallError("wsarecv", err)
	}
	return true // n == 0 without an error: the target's EOF
}
