package mesh

import (
	"errors"
	"net"
	"os"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"

	"github.com/nowconnect/nowconnect/internal/inq"
)

// Reading a link on the hub's event loop.
//
// The streams a link carries live on the hub's event loops. Read on
// linkReadLoop, every frame is handed to its stream's loop: one wake-up of
// that loop's thread per frame, on both hubs, on the path of every request and
// every response that crosses the mesh. ReadOn lets the hub read a plain TCP
// link on a loop of its choice instead (the loop of the link's streams), so
// that a frame for a stream on that loop is handled where it was read. The
// bytes go through the same parser and handler as on linkReadLoop (feed); only
// who calls read(2) changes. A TLS link keeps its reader goroutine: the
// engine's loops read raw sockets.
//
// The switch happens on linkReadLoop between two messages, once it has used
// every byte it read, so no byte is read twice or skipped and frames stay in
// order. From then on, linkReadLoop waits (awaitReading) for the reading to
// end, enforces PingTimeout on it, and stops it when the link closes; then it
// finishes the link as before.

// ReadStart starts reading a link's socket elsewhere. fd is the link's socket;
// it stays the link's (the callee dups what it keeps). feed takes what was read,
// in order and one call at a time, and returns how many bytes it used (the rest
// must be fed again, with what follows) or an error that ends the reading. ended
// is called exactly once, after the last feed, when the reading has ended: with
// the error of feed or of the socket (io.EOF at its end), or nil after stop or
// when the callee stopped reading by itself (its event loops are going away: the
// link then ends as on shutdown). stop is safe from any goroutine, more than
// once. When ReadStart returns an error, ended is never called and nothing else
// was started.
type ReadStart func(fd int, feed func(p []byte) (int, error), ended func(error)) (stop func(), err error)

// ReadOn asks for the link to be read by start from now on instead of by its
// reader goroutine. Only a plain TCP link can be read elsewhere; ReadOn reports
// whether l is one. Call from Handler.LinkUp; if start fails, the reader
// goroutine goes on reading.
func (l *Link) ReadOn(start func(fd int, feed func([]byte) (int, error), ended func(error)) (stop func(), err error)) bool {
	if _, ok := l.conn.(*net.TCPConn); !ok {
		return false
	}
	l.readStart = ReadStart(start)
	return true
}

// readElsewhere hands the reading over to start (on linkReadLoop, every byte read
// used). moved is false when start failed: linkReadLoop reads on.
func (l *Link) readElsewhere(start ReadStart) (err error, moved bool) {
	rc, err := l.conn.(*net.TCPConn).SyscallConn()
	if err != nil {
		return nil, false
	}
	ended := make(chan error, 1)
	var once atomic.Bool
	end := func(err error) {
		if once.CompareAndSwap(false, true) {
			ended <- err
		}
	}
	var stop func()
	var serr error
	l.lastRead.Store(l.m.monoNow())
	if cerr := rc.Control(func(fd uintptr) { stop, serr = start(int(fd), l.feed, end) }); cerr != nil || serr != nil {
		l.log.Debug("mesh link read on its goroutine", "peer", l.peer, "err", errors.Join(cerr, serr))
		return nil, false
	}
	_ = l.conn.SetReadDeadline(time.Time{})
	l.log.Debug("mesh link read on an event loop")
	return l.awaitReading(stop, ended), true
}

// feed handles the whole messages at the front of p, read elsewhere, and
// returns how many bytes they took.
func (l *Link) feed(p []byte) (int, error) {
	l.lastRead.Store(l.m.monoNow())
	used := 0
	for {
		op, msg, n, _, err := l.rd.parse(p[used:])
		if err != nil || n == 0 {
			return used, err
		}
		used += n
		if err := l.handle(op, msg); err != nil {
			return used, err
		}
	}
}

// awaitReading waits, on linkReadLoop, for the reading started elsewhere to end,
// and returns why the link ends. A peer that sends nothing for PingTimeout is
// dead, unless its bytes wait unread in the socket (this hub did not run: a
// SIGSTOP, a paused VM). Read on a loop, the silence is checked twice,
// PingTimeout/16 apart, before it counts.
func (l *Link) awaitReading(stop func(), ended <-chan error) error {
	timeout := l.m.cfg.PingTimeout
	t := time.NewTimer(timeout)
	defer t.Stop()
	var why error
	silent := false // the last check found the peer silent for timeout
	for why == nil {
		select {
		case err := <-ended:
			return l.readEnd(err)
		case <-l.closing:
			why = l.cause()
		case <-t.C:
			idle := time.Duration(l.m.monoNow() - l.lastRead.Load())
			switch {
			case idle < timeout:
				silent = false
			case inq.Pending(l.conn):
				silent = false // this hub did not run; its loop reads them now
			case silent:
				why = l.readError(os.ErrDeadlineExceeded)
				continue
			default:
				// Look again after a grace: the loop may have taken the
				// bytes from the socket and not yet fed them (lastRead).
				silent = true
			}
			t.Reset(max(timeout-idle, timeout/16))
		}
	}
	stop()
	select {
	case <-ended:
	case <-time.After(2 * closeGrace):
		// The loop that read is gone with its engine, which closed its sockets.
		l.log.Warn("mesh link reading did not stop", "peer", l.peer)
	}
	return why
}

// readEnd is why the link ends when its reading ended without being stopped:
// the peer or the socket (err), or the host of the reading going away (nil),
// which is this hub shutting down.
func (l *Link) readEnd(err error) error {
	if err != nil {
		return l.readError(err)
	}
	if c := l.cause(); c != nil {
		return c
	}
	return &linkError{reason: reasonShutdown, code: ws.StatusGoingAway, err: ErrShutdown, detail: "this hub is shutting down"}
}
