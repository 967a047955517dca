package engine

import (
	"context"
	"math"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"
)

// Drainer is a socket waiting for its kernel buffer to take queued bytes.
// Drain runs on the loop until it reports done; progressed says whether
// the socket took anything. A drainer that makes progress is polled every
// DrainInterval; one that does not (a stalled client) is polled ever less
// often, up to MaxDrainInterval, so stalled sockets cost next to nothing.
type Drainer interface {
	Drain(now time.Time) (done, progressed bool)
}

// MaxDrainInterval bounds the poll interval of a stalled socket.
const MaxDrainInterval = 64 * time.Millisecond

type drainEntry struct {
	d     Drainer
	due   time.Time
	every time.Duration
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
	drainers []drainEntry
	tickers  []Ticker
	lastTick time.Time
	spare    []drainEntry // swapped with drainers while draining

	// shared with the ticker goroutine
	drainDue  atomic.Int64 // unix ns of the earliest drainer poll; 0 = none
	scheduled atomic.Bool  // a run is queued on el
	ticking   atomic.Bool  // tickers is not empty: the slow tick is due every TickInterval
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
	now := time.Now()
	every := l.srv.opts.DrainInterval
	l.drainers = append(l.drainers, drainEntry{d: d, due: now.Add(every), every: every})
	if due := l.drainDue.Load(); due == 0 || now.Add(every).UnixNano() < due {
		l.drainDue.Store(now.Add(every).UnixNano())
	}
}

// AddTicker registers t. Call on the loop.
func (l *Loop) AddTicker(t Ticker) {
	l.tickers = append(l.tickers, t)
	l.ticking.Store(true)
}

// Execute runs fn on the loop. Safe from any goroutine.
func (l *Loop) Execute(fn func()) error {
	return l.el.Execute(context.Background(), gnet.RunnableFunc(func(context.Context) error {
		fn()
		return nil
	}))
}

// schedule runs on the ticker goroutine: it queues a run on the loop when
// a drainer or the slow tick is due, and returns when the loop next needs
// a run (unix ns).
func (l *Loop) schedule(now time.Time) int64 {
	drain := l.drainDue.Load()
	slow := l.slowDue.Load()
	if !l.ticking.Load() {
		slow = math.MaxInt64 // a loop without tickers is not woken for the slow tick
	}
	t := now.UnixNano()
	if ((drain != 0 && t >= drain) || t >= slow) && !l.scheduled.Swap(true) {
		if err := l.el.Execute(context.Background(), l); err != nil {
			l.scheduled.Store(false)
		}
	}
	if drain != 0 && drain < slow {
		return drain
	}
	return slow
}

// Run is the loop-side tick; it implements gnet.Runnable.
func (l *Loop) Run(context.Context) error {
	l.scheduled.Store(false)
	now := time.Now()
	if len(l.drainers) > 0 {
		ds := l.drainers
		l.drainers = l.spare[:0]
		var next int64
		for i, e := range ds {
			if now.Before(e.due) {
				l.drainers = append(l.drainers, e)
			} else if done, progressed := e.d.Drain(now); !done {
				if progressed {
					e.every = l.srv.opts.DrainInterval
				} else {
					e.every = min(2*e.every, MaxDrainInterval)
				}
				e.due = now.Add(e.every)
				l.drainers = append(l.drainers, e)
			}
			ds[i] = drainEntry{}
		}
		for _, e := range l.drainers {
			if d := e.due.UnixNano(); next == 0 || d < next {
				next = d
			}
		}
		l.spare = ds[:0]
		l.drainDue.Store(next)
	}
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
		l.ticking.Store(len(kept) > 0)
	}
	return nil
}
