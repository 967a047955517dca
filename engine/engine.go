// Package engine is the gnet reactor glue of the hub: one gnet engine serves
// the control port (HTTP and WebSocket) and every TCP listener; per-loop
// state holds scratch buffers and the timers that gnet lacks (write drain
// polling, periodic ticks); fd-level helpers park, unpark and migrate
// connections, and write to sockets directly so that no byte is ever lost in
// gnet's outbound buffer (see ENGINE_NOTES.md).
//
// Threading: every callback of a connection runs on that connection's event
// loop. Code outside a loop reaches it only through Loop.Execute.
package engine

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"
)

// Handler receives the events of one connection. It is stored in the
// connection's context; every method runs on the connection's loop.
type Handler interface {
	OnTraffic(c gnet.Conn) gnet.Action
	OnClose(c gnet.Conn, err error)
}

// Opener is a Handler placed in a connection's context before it was
// enrolled (a migrated or unparked connection): OnOpen runs on the loop the
// connection was enrolled on.
type Opener interface {
	Handler
	OnOpen(c gnet.Conn) gnet.Action
}

// Acceptor decides what to do with a connection accepted on a TCP listener.
// It runs on the accepting loop and must set a Handler as the context or
// return gnet.Close.
type Acceptor interface {
	Accept(c gnet.Conn, listener int) gnet.Action
}

// Options configure a Server.
type Options struct {
	Control          string        // control-port address (HTTP + WebSocket)
	Listeners        []string      // TCP listener addresses, in the order Acceptor sees them
	EventLoops       int           // 0 = one per CPU
	ReadBufferBytes  int           // gnet read buffer per loop, default 64 KiB
	SocketRecvBuffer int           // 0 = kernel default
	SocketSendBuffer int           // 0 = kernel default
	TickInterval     time.Duration // slow tick (pings, timeouts), default 50ms
	DrainInterval    time.Duration // poll interval for sockets waiting to drain, default 1ms
	RequestTimeout   time.Duration // control-port request head deadline and keep-alive idle, default 10s
	Logger           *slog.Logger
}

// Server runs one gnet engine over the control port and the listeners.
type Server struct {
	// set at construction
	opts     Options
	router   Router
	acceptor Acceptor
	log      *slog.Logger
	ports    map[int]int // local port -> listener index, -1 for control

	booted  chan struct{}
	stopped chan struct{}
	runErr  error

	mu    sync.Mutex // guards loops and eng
	loops map[gnet.EventLoop]*Loop
	eng   gnet.Engine

	workers sync.WaitGroup // off-loop work (metrics rendering)
	closing atomic.Bool
}

// NewServer prepares a server; Start runs it.
func NewServer(opts Options, router Router, acceptor Acceptor) (*Server, error) {
	if opts.ReadBufferBytes <= 0 {
		opts.ReadBufferBytes = 64 << 10
	}
	if opts.TickInterval <= 0 {
		opts.TickInterval = 50 * time.Millisecond
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = 10 * time.Second
	}
	if opts.DrainInterval <= 0 {
		opts.DrainInterval = time.Millisecond
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	s := &Server{
		opts: opts, router: router, acceptor: acceptor, log: opts.Logger,
		ports:   make(map[int]int),
		booted:  make(chan struct{}),
		stopped: make(chan struct{}),
		loops:   make(map[gnet.EventLoop]*Loop),
	}
	addrs := append([]string{opts.Control}, opts.Listeners...)
	for i, a := range addrs {
		_, p, err := net.SplitHostPort(a)
		if err != nil {
			return nil, fmt.Errorf("engine: address %q: %w", a, err)
		}
		port, err := strconv.Atoi(p)
		if err != nil || port <= 0 {
			return nil, fmt.Errorf("engine: address %q: port must be a number > 0", a)
		}
		if _, dup := s.ports[port]; dup {
			return nil, fmt.Errorf("engine: port %d used twice", port)
		}
		s.ports[port] = i - 1
	}
	return s, nil
}

// Start binds every address and serves until Stop. It returns once the
// engine has booted or failed to.
func (s *Server) Start() error {
	addrs := make([]string, 0, 1+len(s.opts.Listeners))
	for _, a := range append([]string{s.opts.Control}, s.opts.Listeners...) {
		addrs = append(addrs, "tcp://"+a)
	}
	gopts := []gnet.Option{
		gnet.WithMulticore(s.opts.EventLoops != 1),
		gnet.WithReadBufferCap(s.opts.ReadBufferBytes),
		gnet.WithTicker(true),
		gnet.WithTCPNoDelay(gnet.TCPNoDelay),
		gnet.WithLogger(gnetLogger{s.log}),
		gnet.WithReusePort(false),
		// As net.Listen does: a restarted hub binds at once even while
		// connections of the previous process linger in TIME_WAIT.
		gnet.WithReuseAddr(true),
	}
	if s.opts.EventLoops > 0 {
		gopts = append(gopts, gnet.WithNumEventLoop(s.opts.EventLoops))
	}
	if s.opts.SocketRecvBuffer > 0 {
		gopts = append(gopts, gnet.WithSocketRecvBuffer(s.opts.SocketRecvBuffer))
	}
	if s.opts.SocketSendBuffer > 0 {
		gopts = append(gopts, gnet.WithSocketSendBuffer(s.opts.SocketSendBuffer))
	}
	go s.runLoop(addrs, gopts)
	select {
	case <-s.booted:
		return nil
	case <-s.stopped:
		return s.runErr
	}
}

// runLoop owns the gnet engine; it ends when the engine stops.
func (s *Server) runLoop(addrs []string, gopts []gnet.Option) {
	defer close(s.stopped)
	if err := gnet.Rotate(&handler{s}, addrs, gopts...); err != nil {
		s.runErr = fmt.Errorf("engine: %w", err)
	}
}

// Stop closes the listeners and every connection gnet owns, then waits for
// the engine and its off-loop workers. Connections the caller parked or
// handed over are the caller's to close.
func (s *Server) Stop(ctx context.Context) error {
	s.closing.Store(true)
	s.mu.Lock()
	eng := s.eng
	s.mu.Unlock()
	var err error
	select {
	case <-s.booted:
		err = eng.Stop(ctx)
	default:
	}
	select {
	case <-s.stopped:
	case <-ctx.Done():
		return ctx.Err()
	}
	s.workers.Wait()
	return err
}

// Loops returns the loops seen so far.
func (s *Server) Loops() []*Loop {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*Loop, 0, len(s.loops))
	for _, l := range s.loops {
		out = append(out, l)
	}
	return out
}

// LoopOf returns the per-loop state of c's event loop. Call it on that loop.
func (s *Server) LoopOf(c gnet.Conn) *Loop {
	el := c.EventLoop()
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.loops[el]
	if l == nil {
		l = newLoop(s, el)
		s.loops[el] = l
	}
	return l
}

// handler adapts gnet's callbacks; it dispatches on the context.
type handler struct{ s *Server }

func (h *handler) OnBoot(eng gnet.Engine) gnet.Action {
	h.s.mu.Lock()
	h.s.eng = eng
	h.s.mu.Unlock()
	close(h.s.booted)
	return gnet.None
}

func (h *handler) OnShutdown(gnet.Engine) {}

func (h *handler) OnOpen(c gnet.Conn) ([]byte, gnet.Action) {
	if o, ok := c.Context().(Opener); ok {
		return nil, o.OnOpen(c)
	}
	if h.s.closing.Load() {
		return nil, gnet.Close
	}
	la, ok := c.LocalAddr().(*net.TCPAddr)
	if !ok {
		return nil, gnet.Close
	}
	idx, ok := h.s.ports[la.Port]
	if !ok {
		return nil, gnet.Close
	}
	if idx < 0 {
		hc := newHTTPConn(h.s, c)
		c.SetContext(hc)
		return nil, gnet.None
	}
	return nil, h.s.acceptor.Accept(c, idx)
}

func (h *handler) OnClose(c gnet.Conn, err error) gnet.Action {
	if hd, ok := c.Context().(Handler); ok {
		hd.OnClose(c, err)
	}
	return gnet.None
}

func (h *handler) OnTraffic(c gnet.Conn) gnet.Action {
	if hd, ok := c.Context().(Handler); ok {
		return hd.OnTraffic(c)
	}
	return gnet.Close
}

// OnTick runs on gnet's ticker goroutine: it asks each loop that has timed
// work to run it on the loop, and chooses the next delay.
func (h *handler) OnTick() (time.Duration, gnet.Action) {
	now := time.Now()
	next := now.Add(h.s.opts.TickInterval).UnixNano()
	for _, l := range h.s.Loops() {
		next = min(next, l.schedule(now))
	}
	d := time.Duration(next - now.UnixNano())
	return max(d, h.s.opts.DrainInterval), gnet.None
}

// gnetLogger sends gnet's own logs to slog, at debug level for chatter.
type gnetLogger struct{ l *slog.Logger }

func (g gnetLogger) Debugf(f string, a ...any) { g.l.Debug(fmt.Sprintf(f, a...), "component", "gnet") }
func (g gnetLogger) Infof(f string, a ...any)  { g.l.Debug(fmt.Sprintf(f, a...), "component", "gnet") }
func (g gnetLogger) Warnf(f string, a ...any)  { g.l.Warn(fmt.Sprintf(f, a...), "component", "gnet") }
func (g gnetLogger) Errorf(f string, a ...any) { g.l.Error(fmt.Sprintf(f, a...), "component", "gnet") }
func (g gnetLogger) Fatalf(f string, a ...any) { g.l.Error(fmt.Sprintf(f, a...), "component", "gnet") }
