package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"
)

// Acceptor takes the connections of one listener. Accept runs on the
// listener's acceptLoop goroutine, never on an event loop; it owns conn and
// must hand it to a loop (Loop.Adopt) or close it, without blocking for
// long. AcceptFailed reports a failed accept (descriptors exhausted, say),
// for the caller's metrics; the engine logs it at a limited rate itself.
type Acceptor interface {
	Accept(conn *net.TCPConn)
	AcceptFailed(err error)
}

// ErrFDLimit wraps accept errors caused by the descriptor limit (EMFILE,
// ENFILE); the waiting connection was shed (accepted and reset) when the
// reserve descriptor allowed it.
var ErrFDLimit = errors.New("descriptor limit reached")

// Accept backoff after errors (as net/http does), and the log rate limit.
const (
	minAcceptBackoff = 5 * time.Millisecond
	maxAcceptBackoff = time.Second
	acceptLogEvery   = time.Second
)

// Listener is one TCP listener and its acceptLoop.
type Listener struct {
	// set at construction
	s    *Server
	ln   *net.TCPListener
	name string
	addr string
	acc  Acceptor
	log  *slog.Logger

	closing atomic.Bool
	done    chan struct{} // closed when acceptLoop returned
	once    sync.Once

	// owned by acceptLoop
	lastLog    time.Time
	suppressed int
}

// Listen binds addr and accepts on it until the listener or the server is
// closed, handing every connection to acc. name labels its logs. The error
// names the address (net's errors do).
func (s *Server) Listen(name, addr string, acc Acceptor) (*Listener, error) {
	if s.closing.Load() {
		return nil, ErrStopped
	}
	ln, err := s.bind(addr)
	if err != nil {
		return nil, err
	}
	return s.serve(ln, name, acc), nil
}

func (s *Server) bind(addr string) (*net.TCPListener, error) {
	ln, err := net.Listen("tcp", addr) // SO_REUSEADDR, as gnet set it
	if err != nil {
		return nil, err
	}
	return ln.(*net.TCPListener), nil
}

func (s *Server) serve(ln *net.TCPListener, name string, acc Acceptor) *Listener {
	l := &Listener{s: s, ln: ln, name: name, addr: ln.Addr().String(), acc: acc,
		log: s.log.With("listener", name, "bind", ln.Addr().String()), done: make(chan struct{})}
	s.workers.Go(l.acceptLoop)
	return l
}

// Addr returns the bound address.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// Close stops accepting (connections already accepted are not touched) and
// waits for the acceptLoop. Safe from any goroutine; idempotent.
func (l *Listener) Close() {
	l.once.Do(func() {
		l.closing.Store(true)
		_ = l.ln.Close()
	})
	<-l.done
}

// acceptLoop accepts until Close. Errors never end it: descriptor
// exhaustion sheds the waiting connection (so the client sees a reset at
// once instead of hanging in the backlog) and backs off; the listener keeps
// serving as soon as descriptors free up.
func (l *Listener) acceptLoop() {
	defer close(l.done)
	backoff := time.Duration(0)
	for {
		conn, err := l.ln.AcceptTCP()
		if err == nil {
			backoff = 0
			l.tune(conn)
			l.acc.Accept(conn)
			continue
		}
		if l.closing.Load() || l.s.closing.Load() {
			return
		}
		if errors.Is(err, net.ErrClosed) {
			l.s.fail(fmt.Errorf("listener %s (%s) closed unexpectedly: %w", l.name, l.addr, err))
			return
		}
		if isFDLimit(err) {
			shed := l.s.shed(l.ln)
			err = fmt.Errorf("accept on %s: %w (%v)", l.addr, ErrFDLimit, err)
			l.acc.AcceptFailed(err)
			l.logRateLimited(err, shed)
			if shed {
				continue // descriptors exist for one at a time: keep shedding
			}
		} else {
			l.acc.AcceptFailed(err)
			l.logRateLimited(err, false)
		}
		backoff = min(max(2*backoff, minAcceptBackoff), maxAcceptBackoff)
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-l.s.done:
			t.Stop()
			return
		}
	}
}

// tune applies the socket options gnet would have set.
func (l *Listener) tune(c *net.TCPConn) {
	if n := l.s.opts.SocketRecvBuffer; n > 0 {
		_ = c.SetReadBuffer(n)
	}
	if n := l.s.opts.SocketSendBuffer; n > 0 {
		_ = c.SetWriteBuffer(n)
	}
}

// logRateLimited logs accept errors at most once per acceptLogEvery, with
// the count of lines suppressed since the last one.
func (l *Listener) logRateLimited(err error, shed bool) {
	now := time.Now()
	if now.Sub(l.lastLog) < acceptLogEvery {
		l.suppressed++
		return
	}
	l.log.Warn("accept_failed", "err", err.Error(), "shed", shed, "suppressed", l.suppressed)
	l.lastLog, l.suppressed = now, 0
}

// shed frees the reserve descriptor, accepts one connection waiting on ln
// without blocking and resets it, then takes the reserve back. It reports
// whether a connection was shed.
func (s *Server) shed(ln *net.TCPListener) bool {
	s.shedMu.Lock()
	defer s.shedMu.Unlock()
	if s.reserve == nil {
		s.reserve, _ = os.Open(os.DevNull) // lost to a race last time: try to take it back
		return false
	}
	_ = s.reserve.Close()
	s.reserve = nil
	shed := false
	if rc, err := ln.SyscallConn(); err == nil {
		_ = rc.Read(func(fd uintptr) bool {
			nfd, _, aerr := unix.Accept4(int(fd), unix.SOCK_CLOEXEC)
			if aerr == nil {
				_ = unix.SetsockoptLinger(nfd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
				_ = unix.Close(nfd)
				shed = true
			}
			return true // one attempt, never wait
		})
	}
	s.reserve, _ = os.Open(os.DevNull)
	return shed
}

func isFDLimit(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)
}

// controlAcceptor hands control-port connections to the loops in turn.
type controlAcceptor struct{ s *Server }

func (a controlAcceptor) Accept(conn *net.TCPConn) {
	l := a.s.NextLoop()
	_ = l.Adopt(conn, newHTTPConn(a.s, l))
}

func (a controlAcceptor) AcceptFailed(error) {}

// Adopt hands conn to the loop: gnet takes its own descriptor (conn is
// closed) and runs o.OnOpen there; if gnet cannot adopt it, o.EnrollFailed
// runs instead (see Opener) and Adopt returns nil. An error is returned,
// with conn closed and neither callback run, when the engine refuses the
// work at once. Safe from any goroutine.
func (l *Loop) Adopt(conn net.Conn, o Opener) error {
	s := l.srv
	if s.closing.Load() {
		_ = conn.Close()
		return ErrStopped
	}
	ch, err := l.el.Enroll(gnet.NewContext(context.Background(), o), conn)
	if err != nil {
		_ = conn.Close()
		return fmt.Errorf("enroll: %w", err)
	}
	// gnet reports a failure (a dup refused at EMFILE, the engine stopping)
	// only on the channel, after it closed conn: without this watcher the
	// Opener would wait for an OnOpen that never comes, and whatever it
	// holds (a descriptor, a stream slot) would leak.
	s.workers.Go(func() { // enrollWatchLoop
		var r gnet.RegisteredResult
		select {
		case r = <-ch:
		case <-s.stopped:
			return // the loops are gone; Stop's caller closes what it owns
		}
		if r.Err == nil {
			return
		}
		if l.Execute(func() { o.EnrollFailed(r.Err) }) != nil {
			o.EnrollFailed(r.Err) // the loops are gone: nothing else touches o
		}
	})
	return nil
}
