// Package engine is the gnet reactor glue of the hub: one gnet engine runs
// the event loops that carry every connection (control-port HTTP and
// WebSocket, client streams); per-loop state holds scratch buffers and the
// timers that gnet lacks (write drain polling, periodic ticks); fd-level
// helpers park, unpark and migrate connections, and write to sockets
// directly so that no byte is ever lost in gnet's outbound buffer (see
// ENGINE_NOTES.md).
//
// Accepting happens outside gnet. gnet's acceptor treats any accept error
// but EAGAIN as fatal, EMFILE included, and the whole engine stops: a hub
// out of descriptors would live on, deaf. So every TCP listener (the
// control port and each client listener) is a Go net.Listener with its own
// acceptLoop, which survives descriptor exhaustion (shedding the waiting
// connection with a reserve descriptor, counting and logging it at a
// limited rate, backing off) and hands each accepted connection to the loop
// its owner chooses (Loop.Adopt): a client straight to the loop of the
// tunnel that will carry it, with no migration. gnet itself listens only on
// a private Unix socket that is unlinked once the loops are known, so its
// acceptor can never fail. Should the engine stop anyway, Done is closed
// and the process is expected to exit.
//
// Threading: every callback of a connection runs on that connection's event
// loop. Code outside a loop reaches it only through Loop.Execute.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
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

// Opener is a Handler placed in a connection's context before gnet adopted
// it (Loop.Adopt, Enroll): exactly one of OnOpen (on the loop the
// connection joined) and EnrollFailed (when gnet could not adopt it; on
// that loop, or on a goroutine of the server once the engine is gone) runs.
type Opener interface {
	Handler
	OnOpen(c gnet.Conn) gnet.Action
	EnrollFailed(err error)
}

// Options configure a Server.
type Options struct {
	Control          string        // control-port address (HTTP + WebSocket)
	EventLoops       int           // 0 = GOMAXPROCS at start (baseProcs)
	ReadBufferBytes  int           // gnet read buffer per loop, default 64 KiB
	SocketRecvBuffer int           // 0 = kernel default
	SocketSendBuffer int           // 0 = kernel default
	TickInterval     time.Duration // slow tick (pings, timeouts), default 50ms
	DrainInterval    time.Duration // poll interval for sockets waiting to drain, default 1ms
	RequestTimeout   time.Duration // control-port request head deadline and keep-alive idle, default 10s
	Logger           *slog.Logger
}

// Errors of the server.
var (
	// ErrEngineStopped reports that the gnet engine ended without Stop.
	ErrEngineStopped = errors.New("engine: event loops stopped unexpectedly")
	// ErrStopped is returned for work handed to a stopped server.
	ErrStopped = errors.New("engine: stopped")
)

// Server runs one gnet engine and the listeners that feed it.
type Server struct {
	// set at construction
	opts   Options
	router Router
	log    *slog.Logger

	booted  chan struct{}
	stopped chan struct{} // the gnet engine has returned
	runErr  error         // set before stopped is closed
	done    chan struct{} // closed on a fatal error (see Done)
	doneErr atomic.Pointer[error]
	fatal   sync.Once

	mu      sync.Mutex // guards the fields below
	loops   []*Loop    // every loop, in discovery order
	byEL    map[gnet.EventLoop]*Loop
	eng     gnet.Engine
	sock    string // the private gnet listener, removed once the loops are known
	control *Listener

	next     atomic.Uint32  // round robin over loops for control-port connections
	shedMu   sync.Mutex     // guards reserve
	reserve  *os.File       // spare descriptor given up to shed a connection at EMFILE
	workers  sync.WaitGroup // off-loop work: metrics rendering, decisions, enroll watchers
	closing  atomic.Bool
	probing  atomic.Bool
	probeSig chan struct{} // a probe connection reached a loop
}

// NewServer prepares a server; Start runs it.
func NewServer(opts Options, router Router) (*Server, error) {
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
	if _, _, err := net.SplitHostPort(opts.Control); err != nil {
		return nil, fmt.Errorf("engine: control address %q: %w", opts.Control, err)
	}
	return &Server{
		opts: opts, router: router, log: opts.Logger,
		booted:   make(chan struct{}),
		stopped:  make(chan struct{}),
		done:     make(chan struct{}),
		byEL:     make(map[gnet.EventLoop]*Loop),
		probeSig: make(chan struct{}, 64),
	}, nil
}

// numLoops is how many event loops gnet runs with these options.
func (s *Server) numLoops() int {
	if s.opts.EventLoops > 0 {
		return s.opts.EventLoops
	}
	return baseProcs
}

// baseProcs is GOMAXPROCS as the process started, before any engine raised it
// (reserveProcs): the CPUs the runtime found available, which follows a
// container's CPU limit since Go 1.25, or what the GOMAXPROCS variable set.
// Event loops default to it rather than to runtime.NumCPU, which counts every
// CPU of the host.
var baseProcs = runtime.GOMAXPROCS(0)

// reserveProcs keeps one P more than the event loops: GOMAXPROCS becomes at
// least loops + 1.
//
// A gnet loop waits for events in epoll_wait, a system call, and keeps its P
// while it waits; the runtime hands that P to another goroutine only when
// sysmon retakes it, and in a quiet process sysmon sleeps up to 10 ms between
// looks (and retakes on the look after). With one P per CPU and one loop per
// CPU, idle loops held every P, and each goroutine the netpoller woke (the
// agent's half of `up`, mesh links, accepts, the Redis client) waited up to
// 20 ms for one: an LDAP search through `up` at 200 req/s took p95 16–28 ms,
// and 1–3 ms with a P to spare (bench/analysis.md); a cross-hub request at
// 200 req/s p99 8.3–9.3 ms, and 2.3–3.8 ms. One spare P is enough for the netpoller, and it keeps the extra
// parallelism small: a P per loop more (GOMAXPROCS 4 on 2 cores) measured no
// better and cost one-stream throughput. Setting GOMAXPROCS stops the runtime
// from following later changes of a container's CPU limit.
func reserveProcs(loops int) {
	if want := loops + 1; runtime.GOMAXPROCS(0) < want {
		runtime.GOMAXPROCS(want)
	}
}

// Procs is GOMAXPROCS, the Ps the engine's loops and every other goroutine
// share (reserveProcs), for the start-up log.
func Procs() int { return runtime.GOMAXPROCS(0) }

// Start binds the control port, starts the event loops and learns them. It
// returns once the control port accepts, or the first error. Client
// listeners are added with Listen afterwards.
func (s *Server) Start() error {
	ctl, err := s.bind(s.opts.Control)
	if err != nil {
		return fmt.Errorf("control port: %w", err)
	}
	dir, err := os.MkdirTemp("", "nowconnect-engine-")
	if err != nil {
		_ = ctl.Close()
		return fmt.Errorf("engine: %w", err)
	}
	s.sock = filepath.Join(dir, "loops.sock")
	if s.reserve, err = os.Open(os.DevNull); err != nil {
		_ = ctl.Close()
		_ = os.RemoveAll(dir)
		return fmt.Errorf("engine: reserve descriptor: %w", err)
	}
	reserveProcs(s.numLoops())
	gopts := []gnet.Option{
		gnet.WithMulticore(s.numLoops() != 1),
		gnet.WithNumEventLoop(s.numLoops()),
		gnet.WithReadBufferCap(s.opts.ReadBufferBytes),
		gnet.WithTicker(true),
		gnet.WithTCPNoDelay(gnet.TCPNoDelay),
		gnet.WithLogger(gnetLogger{s.log}),
	}
	go s.runLoop([]string{"unix://" + s.sock}, gopts) // engineRunLoop: its end closes s.stopped
	select {
	case <-s.booted:
	case <-s.stopped:
		_ = ctl.Close()
		_ = os.RemoveAll(dir)
		return s.runErr
	}
	err = s.discoverLoops()
	_ = os.RemoveAll(dir) // nobody can reach gnet's own listener any more
	if err != nil {
		_ = ctl.Close()
		_ = s.Stop(context.Background())
		return err
	}
	cl := s.serve(ctl, "control", controlAcceptor{s})
	s.mu.Lock()
	s.control = cl
	s.mu.Unlock()
	return nil
}

// discoverLoops connects to gnet's private listener until every event loop
// got a probe connection: gnet hands accepted connections to its loops in
// turn, and OnOpen records each loop it sees.
func (s *Server) discoverLoops() error {
	want := s.numLoops()
	s.probing.Store(true)
	defer s.probing.Store(false)
	deadline := time.Now().Add(5 * time.Second)
	for attempt := 0; s.loopCount() < want; attempt++ {
		if attempt >= 8*want || time.Now().After(deadline) {
			return fmt.Errorf("engine: found %d of %d event loops", s.loopCount(), want)
		}
		c, err := net.Dial("unix", s.sock)
		if err != nil {
			return fmt.Errorf("engine: probe the event loops: %w", err)
		}
		select {
		case <-s.probeSig:
		case <-time.After(time.Until(deadline)):
		}
		_ = c.Close()
	}
	return nil
}

func (s *Server) loopCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.loops)
}

// runLoop owns the gnet engine; it ends when the engine stops. An end that
// Stop did not ask for is fatal.
func (s *Server) runLoop(addrs []string, gopts []gnet.Option) {
	defer close(s.stopped)
	err := gnet.Rotate(&handler{s}, addrs, gopts...)
	if err != nil {
		s.runErr = fmt.Errorf("engine: %w", err)
	}
	if !s.closing.Load() {
		if err == nil {
			s.fail(ErrEngineStopped)
		} else {
			s.fail(fmt.Errorf("%w: %v", ErrEngineStopped, err))
		}
	}
}

// fail records a fatal error and closes Done, once.
func (s *Server) fail(err error) {
	s.fatal.Do(func() {
		s.doneErr.Store(&err)
		s.log.Error("engine_failed", "err", err.Error())
		close(s.done)
	})
}

// Done is closed when the server can no longer serve (its event loops
// stopped, or a listener died) without Stop being called: the process
// should exit non-zero so that its supervisor restarts it. Err says why.
func (s *Server) Done() <-chan struct{} { return s.done }

// Err returns the fatal error once Done is closed, else nil.
func (s *Server) Err() error {
	if p := s.doneErr.Load(); p != nil {
		return *p
	}
	return nil
}

// Stop closes the listeners and every connection gnet owns, then waits for
// the engine and its off-loop workers. Connections the caller parked or
// handed over are the caller's to close. Calling it again is a no-op.
func (s *Server) Stop(ctx context.Context) error {
	if s.closing.Swap(true) {
		return nil
	}
	s.mu.Lock()
	eng, ctl := s.eng, s.control
	s.mu.Unlock()
	if ctl != nil {
		ctl.Close()
	}
	var err error
	select {
	case <-s.booted:
		err = s.askStop(eng)
	default:
	}
	select {
	case <-s.stopped:
	case <-ctx.Done():
		return ctx.Err()
	}
	s.workers.Wait()
	s.shedMu.Lock()
	if s.reserve != nil {
		_ = s.reserve.Close()
		s.reserve = nil
	}
	s.shedMu.Unlock()
	return err
}

// askStop asks the booted gnet engine to shut down and returns at once;
// its end is s.stopped. gnet's own Stop would poll for the end every
// 500 ms, so it gets a context that has ended already: it only asks. An
// engine that ended already (it failed) is not asked again.
func (s *Server) askStop(eng gnet.Engine) error {
	select {
	case <-s.stopped:
		return nil
	default:
	}
	asked, cancel := context.WithCancel(context.Background())
	cancel()
	if err := eng.Stop(asked); err != nil && !errors.Is(err, context.Canceled) {
		select {
		case <-s.stopped: // it ended meanwhile
			return nil
		default:
		}
		return fmt.Errorf("engine: stop the event loops: %w", err)
	}
	return nil
}

// stopEngine stops the gnet engine behind the server's back, as a failure
// of gnet would: Stop is not called, so runLoop must fail the server (Done
// closes). It waits for the engine to boot, and returns once the engine has
// returned, ErrStopped if it had already, or ctx's error when ctx ends. It
// is the one fault that tests inject (engine_test.go; fault.go exports it
// to test builds of the binary). Safe from any goroutine.
func (s *Server) stopEngine(ctx context.Context) error {
	select {
	case <-s.stopped:
		return ErrStopped
	default:
	}
	select {
	case <-s.booted:
	case <-s.stopped:
		return ErrStopped
	case <-ctx.Done():
		return ctx.Err()
	}
	s.mu.Lock()
	eng := s.eng
	s.mu.Unlock()
	if err := s.askStop(eng); err != nil {
		return err
	}
	select {
	case <-s.stopped:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Loops returns every event loop.
func (s *Server) Loops() []*Loop {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*Loop(nil), s.loops...)
}

// NextLoop returns a loop, round robin.
func (s *Server) NextLoop() *Loop {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.loops[int(s.next.Add(1))%len(s.loops)]
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
	// Anything else came through gnet's private listener: a probe.
	s := h.s
	if s.probing.Load() {
		s.mu.Lock()
		el := c.EventLoop()
		if s.byEL[el] == nil {
			l := newLoop(s, el)
			s.byEL[el] = l
			s.loops = append(s.loops, l)
		}
		s.mu.Unlock()
		select {
		case s.probeSig <- struct{}{}:
		default:
		}
	}
	return nil, gnet.Close
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
