package engine

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"
)

// Drainer is a socket waiting for its kernel buffer to take queued bytes.
// Drain runs on the loop every DrainInterval until it returns true.
type Drainer interface {
	Drain(now time.Time) (done bool)
}

// Ticker runs on the loop every TickInterval until it returns false.
type Ticker interface {
	Tick(now time.Time) (keep bool)
}

// maxIov bounds the slices of one writev (the kernel allows 1024).
const maxIov = 64

// Loop is the per-event-loop state. Fields marked "owned by the loop" are
// touched only from callbacks running on el.
type Loop struct {
	// set at construction
	srv *Server
	el  gnet.EventLoop

	// owned by the loop
	Scratch  [256]byte // small frames and headers; reusable per call
	Iov      [][]byte  // scratch iov for gnet Writev; reset before use
	ReadBuf  []byte    // scratch for reads the loop does itself (ReadFD)
	iovecs   [maxIov]unix.Iovec
	drainers []Drainer
	tickers  []Ticker
	lastTick time.Time
	spare    []Drainer // swapped with drainers while draining

	// shared with the ticker goroutine
	urgent    atomic.Bool // drainers is non-empty
	scheduled atomic.Bool // a run is queued on el
	slowDue   atomic.Int64
}

func newLoop(s *Server, el gnet.EventLoop) *Loop {
	return &Loop{srv: s, el: el, Iov: make([][]byte, 0, maxIov), ReadBuf: make([]byte, s.opts.ReadBufferBytes)}
}

// EventLoop returns the gnet loop.
func (l *Loop) EventLoop() gnet.EventLoop { return l.el }

// Server returns the server that owns the loop.
func (l *Loop) Server() *Server { return l.srv }

// WaitDrain registers d to be polled until it has drained. The caller keeps
// a flag so that it registers once. Call on the loop.
func (l *Loop) WaitDrain(d Drainer) {
	l.drainers = append(l.drainers, d)
	l.urgent.Store(true)
}

// AddTicker registers t. Call on the loop.
func (l *Loop) AddTicker(t Ticker) { l.tickers = append(l.tickers, t) }

// Execute runs fn on the loop. Safe from any goroutine.
func (l *Loop) Execute(fn func()) error {
	return l.el.Execute(context.Background(), gnet.RunnableFunc(func(context.Context) error {
		fn()
		return nil
	}))
}

// schedule runs on the ticker goroutine: it queues a run on the loop when
// drainers wait or the slow tick is due. It reports whether drainers wait.
func (l *Loop) schedule(now time.Time) bool {
	urgent := l.urgent.Load()
	slow := now.UnixNano() >= l.slowDue.Load()
	if (urgent || slow) && !l.scheduled.Swap(true) {
		if err := l.el.Execute(context.Background(), l); err != nil {
			l.scheduled.Store(false)
		}
	}
	return urgent
}

// Run is the loop-side tick; it implements gnet.Runnable.
func (l *Loop) Run(context.Context) error {
	l.scheduled.Store(false)
	now := time.Now()
	if len(l.drainers) > 0 {
		ds := l.drainers
		l.drainers = l.spare[:0]
		for i, d := range ds {
			if !d.Drain(now) {
				l.drainers = append(l.drainers, d)
			}
			ds[i] = nil
		}
		l.spare = ds[:0]
	}
	l.urgent.Store(len(l.drainers) > 0)
	if now.Sub(l.lastTick) >= l.srv.opts.TickInterval {
		l.lastTick = now
		l.slowDue.Store(now.Add(l.srv.opts.TickInterval).UnixNano())
		kept := l.tickers[:0]
		for _, t := range l.tickers {
			if t.Tick(now) {
				kept = append(kept, t)
			}
		}
		for i := len(kept); i < len(l.tickers); i++ {
			l.tickers[i] = nil
		}
		l.tickers = kept
	}
	return nil
}
