package wanlink

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// pair is one relayed connection: the accepted client side, the dialled
// target side, and a pipe per direction.
//
// Lifecycle: connLoop waits Delay (the SYN's travel), dials, starts the
// other three goroutines and runs the up reader itself. It ends when
//   - both pipes forwarded their EOF (clean: both sides got a FIN), or
//   - abort: a reset seen by a reader arrives at the other side, a write
//     failed (the destination is gone; the reset travels back after
//     Delay), the dial failed, or the link closes.
//
// The last of its goroutines to return closes both sockets and removes the
// pair from the link.
type pair struct {
	// Set at construction.
	l      *Link
	client *net.TCPConn
	done   chan struct{} // closed by abort
	ctx    context.Context
	cancel context.CancelFunc

	refs atomic.Int32 // running goroutines of this pair

	mu      sync.Mutex // guards the fields below; set once by dial, read by abort
	target  *net.TCPConn
	pipes   [2]*pipe // set with target
	aborted bool
}

func newPair(l *Link, c *net.TCPConn) *pair {
	p := &pair{l: l, client: c, done: make(chan struct{})}
	p.ctx, p.cancel = context.WithCancel(l.ctx)
	p.refs.Store(1) // connLoop
	return p
}

// connLoop is the pair's first goroutine; once the target is connected it
// becomes the up reader (whose exit accounts for it).
func (p *pair) connLoop() {
	if p.dial() == nil {
		p.exit()
		return
	}
	p.refs.Add(3)
	p.l.wg.Add(3)
	go p.pipes[up].writeLoop()
	go p.pipes[down].readLoop()
	go p.pipes[down].writeLoop()
	p.pipes[up].readLoop()
}

// dial waits Delay and connects to the target; nil when that failed or
// the pair was aborted meanwhile.
func (p *pair) dial() *net.TCPConn {
	if !sleepFor(nil, p.l.Delay(), p.done) {
		return nil
	}
	c, err := p.l.dialer.DialContext(p.ctx, "tcp", p.l.cfg.Target)
	if err != nil {
		p.l.log.Debug("wanlink dial failed", "target", p.l.cfg.Target, "err", err)
		p.abort(true) // the client sees a reset, as for a refused connection
		return nil
	}
	t := c.(*net.TCPConn)
	maxBlocks := p.l.maxBlocks()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.aborted {
		_ = t.Close()
		return nil
	}
	p.target = t
	p.pipes[up] = newPipe(p, up, p.client, t, maxBlocks)
	p.pipes[down] = newPipe(p, down, t, p.client, maxBlocks)
	return t
}

// abort tears the pair down: every goroutine of it returns soon. With
// reset, both sockets are closed with SO_LINGER 0 (the peers see RST).
// Safe from any goroutine, more than once.
func (p *pair) abort(reset bool) {
	p.mu.Lock()
	if p.aborted {
		p.mu.Unlock()
		return
	}
	p.aborted = true
	t, pipes := p.target, p.pipes
	p.mu.Unlock()
	close(p.done)
	p.cancel()
	for _, pp := range pipes {
		if pp != nil {
			pp.w.cancel()
		}
	}
	for _, c := range []*net.TCPConn{p.client, t} {
		if c == nil {
			continue
		}
		if reset {
			_ = c.SetLinger(0)
		}
		_ = c.Close()
	}
}

// exit is called by each goroutine of the pair as it returns.
func (p *pair) exit() {
	if p.refs.Add(-1) == 0 {
		// Both sides already got their FIN (else abort ran): a plain close.
		p.abort(false)
		// pipes were set before the other goroutines started.
		for _, pp := range p.pipes {
			if pp != nil {
				pp.drop()
			}
		}
		p.l.removePair(p)
	}
	p.l.wg.Done()
}

// sleepFor waits d (on t, allocated if nil) or until done is closed; it
// reports whether the time passed.
func sleepFor(t *time.Timer, d time.Duration, done <-chan struct{}) bool {
	if d <= 0 {
		select {
		case <-done:
			return false
		default:
			return true
		}
	}
	if t == nil {
		t = time.NewTimer(d)
	} else {
		t.Reset(d)
	}
	select {
	case <-t.C:
		return true
	case <-done:
		t.Stop()
		return false
	}
}
