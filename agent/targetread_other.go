//go:build !linux

package agent

import (
	"os"
	"sync"
	"syscall"

	"github.com/nowconnect/nowconnect/codec"
)

// readState is the target reader of a stream where no epoll is available:
// one goroutine per stream (targetReadLoop), parked in the netpoller without
// a buffer while the target is idle.
type readState struct {
	wake sync.Cond // L is &st.mu; signalled when credit arrives or the stream ends
	// owned by targetReadLoop
	readFn  func(fd uintptr) bool // rawRead, bound once
	want    int                   // tunnel-level credit reserved for the read in progress
	rn      int
	rb      *frameBuf
	rerr    error
	starved bool // rawRead found no tunnel-level credit
}

// pollers is empty without epoll.
type pollers struct{}

func (p *pollers) start() error { return nil }
func (p *pollers) stop()        {}

func (st *stream) initReader() {
	st.rd.wake.L = &st.mu
	st.rd.readFn = st.rawRead
}

// startReaderLocked starts targetReadLoop. Called with mu held once the
// target is connected.
func (st *stream) startReaderLocked() error {
	st.sess.wg.Go(st.targetReadLoop)
	return nil
}

func (st *stream) creditLocked()     { st.rd.wake.Signal() }
func (st *stream) stopReaderLocked() { st.rd.wake.Broadcast() }

// targetReadLoop relays target→hub bytes under the hub's credit until the
// target's EOF (FIN) or an error (RST).
func (st *stream) targetReadLoop() {
	s := st.sess
	for {
		st.mu.Lock()
		for !st.closed && (st.fc.Send.Avail() < s.readMin || st.tunnelWait) {
			st.rd.wake.Wait()
		}
		if st.closed {
			st.mu.Unlock()
			return
		}
		st.mu.Unlock()

		st.rd.rn, st.rd.rb, st.rd.rerr, st.rd.want, st.rd.starved = 0, nil, nil, 0, false
		if err := st.raw.Read(st.rd.readFn); err != nil {
			st.rd.rerr = err
		}
		s.refund(st.rd.want - st.rd.rn)
		switch {
		case st.rd.starved:
			continue // waits above until the tunnel's WINDOW
		case st.rd.rn > 0:
			if !st.deliver(st.rd.rn, st.rd.rb) {
				return
			}
		case st.rd.rerr != nil:
			st.abort(codec.ReasonTargetReset, true, shortErr(st.rd.rerr))
			return
		default:
			st.targetEOF()
			return
		}
	}
}

// rawRead is the syscall.RawConn.Read callback: it takes a buffer only once
// the socket is readable and returns false on EAGAIN so the runtime parks
// the goroutine until it is.
func (st *stream) rawRead(fd uintptr) bool {
	// Credit is reserved only now that the socket is (likely) readable, so
	// an idle stream holds no tunnel-level credit while it waits.
	st.mu.Lock()
	st.rd.want = st.readableLocked()
	st.mu.Unlock()
	if st.rd.want == 0 {
		st.rd.starved = true
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
			st.sess.refund(st.rd.want)
			st.rd.want = 0
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
