//go:build !linux

package agent

import "github.com/nowconnect/nowconnect/codec"

// The target reader of a stream where no epoll is available (macOS, the
// BSDs, Windows): one goroutine per stream (targetReadLoop), parked in the
// netpoller without a buffer while the target is idle. Only the read
// itself differs per OS: rawRead and its readState are in
// targetread_unix.go and targetread_windows.go. rawRead reserves the
// tunnel-level credit only once the socket is readable, so an idle stream
// holds none while it waits.

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
			if !st.deliver(st.rd.rn, st.rd.rb, false) {
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

// reserveRead reserves the credit for the read rawRead is about to make:
// the stream's and the tunnel's (readableLocked). Without tunnel-level
// credit it marks the read starved; the loop then waits for the WINDOW.
func (st *stream) reserveRead() bool {
	st.mu.Lock()
	st.rd.want = st.readableLocked()
	st.mu.Unlock()
	if st.rd.want == 0 {
		st.rd.starved = true
		return false
	}
	return true
}

// releaseRead gives back the credit of a read that found nothing.
func (st *stream) releaseRead() {
	st.sess.refund(st.rd.want)
	st.rd.want = 0
}
