// Package agent is the premise side of NowConnect: it dials out to a cloud
// hub over WebSocket tunnels (Config.Tunnels of them, default 2, so that
// one TCP connection's loss recovery stalls only its share of the streams
// and the hub can spread one agent over several cores), announces the
// connectors it serves, and for every stream the hub opens it dials the
// connector's target and relays the bytes both ways under the credit
// windows of the tunnel protocol (package codec; the rules are
// internal/flow's). Each tunnel reconnects with capped, jittered
// exponential backoff; all of them use the same hub URL and move to the
// next of several together.
//
// Files, one per stage: agent.go (config, Run loop, backoff), session.go
// (tunnel handshake and reader), reload.go (SIGHUP: connectors swapped,
// tunnels rotated make-before-break), send.go (the tunnel writer and frame
// buffers), stream.go (per-stream state, target dialing and writing),
// targetread_linux.go (the epoll pollers that read targets),
// targetread_other.go (a reader goroutine per stream elsewhere), token.go
// (the token: asked before every attempt, its expiry watched), lograte.go
// (rate-limited log lines), metrics.go.
//
// Goroutines. Run owns one tunnelLoop per tunnel, each of which reads its
// tunnel on its own goroutine, one target poller per P (Linux), which
// reads every stream's target without a goroutine per stream,
// tokenWatchLoop (the hourly expiry check) and rotateLoop (reload.go),
// which starts the tunnelLoop of a replacement tunnel while the one it
// replaces drains. Per tunnel:
// tunnelWriteLoop (batches frames into one writev) and pingLoop (PING,
// liveness, context cancellation). Per stream:
// dialLoop while the target is being dialed, plus targetWriteLoop only while
// bytes wait for the target. An idle stream has no goroutine. Each is
// tracked by the session's WaitGroup (the pollers by Run's); Run returns only
// when all have exited.
package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/nowconnect/nowconnect/codec"
	"github.com/nowconnect/nowconnect/internal/flow"
	"github.com/nowconnect/nowconnect/internal/lograte"
)

// Defaults of Config.
const (
	DefaultDialTimeout      = 5 * time.Second
	DefaultWindow           = flow.DefaultStreamWindow
	DefaultMaxWindow        = flow.DefaultMaxStreamWindow
	DefaultTunnelWindow     = flow.DefaultTunnelWindow
	DefaultTunnels          = 2
	MaxTunnels              = 16
	DefaultReconnectMin     = 500 * time.Millisecond
	DefaultReconnectMax     = 30 * time.Second
	DefaultPingInterval     = 2 * time.Second
	DefaultPingTimeout      = 6 * time.Second
	DefaultHandshakeTimeout = 10 * time.Second
)

// ProxyV2 is the value of Config.ProxyProtocol that puts a PROXY protocol
// version 2 header in front of every target connection of a connector.
const ProxyV2 = "v2"

// tokenCheckEvery is how often a connected agent looks at its token's
// expiry (it also does at every connection attempt).
const tokenCheckEvery = time.Hour

// stableAfter is how long a tunnel must stay up for the reconnect backoff to
// start again from ReconnectMin. A hub that accepts the tunnel and drops it
// at once therefore still sees growing delays.
const stableAfter = 10 * time.Second

// Errors.
var (
	// ErrConfig wraps every configuration error reported by New.
	ErrConfig = errors.New("agent: invalid config")
	// ErrRunning is returned by Run when the agent already runs.
	ErrRunning = errors.New("agent: already running")
)

// Config configures an Agent. Zero durations and sizes take the default
// named in each field's comment.
type Config struct {
	// URLs are the hub tunnel URLs (ws:// or wss://, normally ending in
	// /tunnel). The agent uses them in turn: after a failed attempt or a
	// dropped tunnel it moves to the next one. At least one is required.
	URLs []string
	// AgentID names the agent in HELLO (1..255 bytes). Required.
	AgentID string
	// Token is the JWT sent as "Authorization: Bearer <token>" on the
	// WebSocket upgrade. It is never logged.
	Token string
	// TokenSource, when set, is asked for the token before every
	// connection attempt (a token file that is rotated in place); Token is
	// then only its fallback when it fails.
	TokenSource func() (string, error)
	// Connectors maps a connector name (1..255 bytes, at most 64) to its
	// target host:port. At least one is required. Reload changes them (and
	// ProxyProtocol).
	Connectors map[string]string
	// ProxyProtocol maps a connector name to the PROXY protocol its target
	// expects: ProxyV2 ("v2") writes a version 2 header (the client address
	// of the OPEN frame as source, the target address as dialed as
	// destination; internal/proxyproto) as the first bytes of every target
	// connection, before any client byte; a client address that does not
	// parse gets a LOCAL header instead. Absent or "": none. Another value,
	// or a name not in Connectors, is an error.
	ProxyProtocol map[string]string
	// MaskClientAddr logs client addresses (from OPEN frames) as their /24
	// (IPv4) or /48 (IPv6) prefix, as the hub's log.mask_client_addr does
	// (internal/logmask). Default false. Reload changes it.
	MaskClientAddr bool
	// DialTimeout bounds dialing a target. Default 5s.
	DialTimeout time.Duration
	// TLSConfig is used for wss:// URLs (set RootCAs for a private CA, and
	// Certificates for mTLS). nil means the system roots.
	TLSConfig *tls.Config
	// Window is the per-stream credit this agent grants the hub (hub→agent
	// bytes in flight per stream, announced in HELLO) when a stream starts.
	// It bounds the memory the agent spends on bytes waiting for a slow
	// target. Default 256 KiB.
	Window int
	// MaxWindow is the most a stream's window grows to while its hub side
	// is limited by credit (protocol 2). Default 16 MiB.
	MaxWindow int
	// TunnelWindow bounds the hub→agent bytes in flight over all the
	// streams of one tunnel (protocol 2). Default 64 MiB.
	TunnelWindow int
	// TargetSendBuffer is SO_SNDBUF, in bytes, of every target connection;
	// 0 (default) leaves the kernel's autotuning (up to 4 MiB per socket
	// on Linux). A small value bounds the kernel memory a slow target
	// costs: what it has not read then waits in the agent, within the
	// stream and tunnel windows.
	TargetSendBuffer int
	// Tunnels is how many tunnels the agent keeps to its hub (1..16).
	// Default 2.
	Tunnels int
	// MaxProtocol is the newest tunnel protocol offered: codec.Version
	// (default) or codec.Version1 (fixed windows, as older agents).
	MaxProtocol int
	// ReconnectMin and ReconnectMax bound the reconnect backoff. Defaults
	// 500ms and 30s.
	ReconnectMin, ReconnectMax time.Duration
	// PingInterval is how often the agent sends PING; PingTimeout closes
	// the tunnel when nothing at all was received for that long. Defaults
	// 2s and 6s.
	PingInterval, PingTimeout time.Duration
	// HandshakeTimeout bounds the WebSocket dial plus the wait for
	// HELLO_ACK. Default 10s.
	HandshakeTimeout time.Duration
	// Logger receives the agent's logs (JSON handler in production). nil
	// means slog.Default().
	Logger *slog.Logger
	// Metrics, when set, receives the agent's metrics (see metrics.go). Use
	// one Set per Agent.
	Metrics *metrics.Set
}

// Agent is a premise agent. Create it with New and start it with Run.
type Agent struct {
	// set at construction, read-only after
	cfg      Config
	log      *slog.Logger
	urls     []string // as given
	logURLs  []string // with any user info redacted, for logs
	dialer   net.Dialer
	limits   flow.Limits // what the agent grants the hub with protocol 2
	qDepth   int         // ring.Queue depth per stream
	instance uint64      // random id of this process, in HELLO
	m        agentMetrics

	// owned by Run
	pollers pollers // target readers, started and stopped by Run

	tok        tokenState     // the token of the latest attempt and its expiry
	tokenEvery time.Duration  // tokenWatchLoop's period (tokenCheckEvery; tests shorten it)
	dialLog    *lograte.Limit // target_dial_failed lines

	conns      atomic.Pointer[connSet] // the connectors new streams and HELLOs use (Reload swaps)
	mask       atomic.Bool             // MaskClientAddr, as last reloaded
	rotateKick chan struct{}           // cap 1: rotateLoop has tunnels to rotate
	reloadMu   sync.Mutex              // serialises Reload

	slotMu sync.Mutex
	// guarded by slotMu
	slots []*session // per tunnel index, its session that is up; nil while it reconnects

	up       atomic.Int32 // tunnels up (HELLO_ACK received)
	urlIdx   atomic.Int32 // the hub URL every tunnel uses (see tunnelLoop)
	connects atomic.Uint64
	active   atomic.Int64
	draining atomic.Bool
	idle     chan struct{} // cap 1: a stream ended while draining

	mu sync.Mutex
	// guarded by mu
	running   bool
	stopped   bool
	cancelRun context.CancelFunc
	runDone   chan struct{}
}

// New validates cfg, applies its defaults and returns an Agent. Every
// problem is reported, joined, each wrapping ErrConfig.
func New(cfg Config) (*Agent, error) {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrConfig}, args...)...))
	}
	setDur := func(d *time.Duration, def time.Duration, key string) {
		switch {
		case *d == 0:
			*d = def
		case *d < 0:
			bad("%s: negative duration %s", key, *d)
		}
	}
	setDur(&cfg.DialTimeout, DefaultDialTimeout, "DialTimeout")
	setDur(&cfg.ReconnectMin, DefaultReconnectMin, "ReconnectMin")
	setDur(&cfg.ReconnectMax, DefaultReconnectMax, "ReconnectMax")
	setDur(&cfg.PingInterval, DefaultPingInterval, "PingInterval")
	setDur(&cfg.PingTimeout, DefaultPingTimeout, "PingTimeout")
	setDur(&cfg.HandshakeTimeout, DefaultHandshakeTimeout, "HandshakeTimeout")
	if cfg.ReconnectMax < cfg.ReconnectMin {
		bad("ReconnectMax %s is below ReconnectMin %s", cfg.ReconnectMax, cfg.ReconnectMin)
	}
	if cfg.Window == 0 {
		cfg.Window = DefaultWindow
	}
	if cfg.MaxWindow == 0 {
		cfg.MaxWindow = max(cfg.Window, DefaultMaxWindow)
	}
	if cfg.TunnelWindow == 0 {
		cfg.TunnelWindow = max(cfg.MaxWindow, DefaultTunnelWindow)
	}
	limits := flow.Limits{Stream: cfg.Window, MaxStream: cfg.MaxWindow, Tunnel: cfg.TunnelWindow}
	if err := limits.Validate(); err != nil {
		bad("Window, MaxWindow, TunnelWindow: %v", err)
	}
	if cfg.TargetSendBuffer < 0 {
		bad("TargetSendBuffer: negative size %d", cfg.TargetSendBuffer)
	}
	if cfg.Tunnels == 0 {
		cfg.Tunnels = DefaultTunnels
	}
	if cfg.Tunnels < 1 || cfg.Tunnels > MaxTunnels {
		bad("Tunnels: %d out of range 1..%d", cfg.Tunnels, MaxTunnels)
	}
	if cfg.MaxProtocol == 0 {
		cfg.MaxProtocol = codec.Version
	}
	if cfg.MaxProtocol != codec.Version && cfg.MaxProtocol != codec.Version1 {
		bad("MaxProtocol: %d is not %d or %d", cfg.MaxProtocol, codec.Version1, codec.Version)
	}
	if l := len(cfg.AgentID); l == 0 || l > 255 {
		bad("AgentID: length %d out of range 1..255", l)
	}
	if len(cfg.URLs) == 0 {
		bad("URLs: at least one hub URL is required")
	}
	logURLs := make([]string, len(cfg.URLs))
	for i, s := range cfg.URLs {
		u, err := url.Parse(s)
		if err != nil {
			bad("URLs[%d]: %v", i, err)
			continue
		}
		logURLs[i] = u.Redacted()
		if u.Scheme != "ws" && u.Scheme != "wss" {
			bad("URLs[%d]: scheme %q is not ws or wss", i, u.Scheme)
		}
		if u.Host == "" {
			bad("URLs[%d]: no host", i)
		}
	}
	errs = append(errs, checkConnectors(cfg)...)
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	a := &Agent{
		cfg:        cfg,
		log:        cfg.Logger,
		urls:       slices.Clone(cfg.URLs),
		logURLs:    logURLs,
		dialer:     net.Dialer{Timeout: cfg.DialTimeout},
		limits:     limits,
		qDepth:     cfg.Window/queueChunk + 3,
		instance:   rand.Uint64(),
		idle:       make(chan struct{}, 1),
		tokenEvery: tokenCheckEvery,
		rotateKick: make(chan struct{}, 1),
		slots:      make([]*session, cfg.Tunnels),
	}
	a.tok.last = cfg.Token
	a.conns.Store(newConnSet(cfg, nil))
	a.mask.Store(cfg.MaskClientAddr)
	a.m = newAgentMetrics(cfg.Metrics, a)
	a.dialLog = lograte.New(dialLogPerSecond, time.Second, a.m.logSuppressed("target_dial_failed").c)
	return a, nil
}

// Connected reports whether a tunnel is up (HELLO_ACK received). Safe
// from any goroutine.
func (a *Agent) Connected() bool { return a.up.Load() > 0 }

// TunnelsUp returns how many tunnels are up. Safe from any goroutine.
func (a *Agent) TunnelsUp() int { return int(a.up.Load()) }

// ActiveStreams returns the number of live streams. Safe from any goroutine.
func (a *Agent) ActiveStreams() int { return int(a.active.Load()) }

// Connects returns how many tunnels were established (HELLO_ACK received)
// so far. Safe from any goroutine.
func (a *Agent) Connects() uint64 { return a.connects.Load() }

// Run connects the tunnels to the hub, serves streams and reconnects until
// ctx is done or Shutdown stops it. It then closes every stream and tunnel
// and returns nil once all its goroutines have exited. It returns
// ErrRunning if the agent already runs, and nil at once after Shutdown.
func (a *Agent) Run(ctx context.Context) error {
	a.mu.Lock()
	if a.running {
		a.mu.Unlock()
		return ErrRunning
	}
	if a.stopped {
		a.mu.Unlock()
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	a.running, a.cancelRun, a.runDone = true, cancel, done
	a.mu.Unlock()
	defer func() {
		cancel()
		a.mu.Lock()
		a.running, a.cancelRun, a.runDone = false, nil, nil
		a.mu.Unlock()
		close(done)
	}()

	if err := a.pollers.start(); err != nil {
		return fmt.Errorf("agent: start target pollers: %w", err)
	}
	defer a.pollers.stop() // after every session ended: no stream is left
	var wg sync.WaitGroup
	for i := range a.cfg.Tunnels {
		wg.Go(func() { a.tunnelLoop(ctx, i, nil) })
	}
	wg.Go(func() { a.tokenWatchLoop(ctx) })
	wg.Go(func() { a.rotateLoop(ctx, &wg) })
	wg.Wait()
	return nil
}

// tunnelLoop keeps tunnel number idx up until ctx ends. Every tunnel uses
// the hub URL a.urlIdx names; a tunnel whose attempt failed, or whose
// tunnel dropped, moves that index on (once: the others follow), so the
// tunnels of one agent stay on one hub.
//
// A refused attempt (401, 403: a bad or expired token) backs off like any
// other failure; with a TokenSource the wait ends early once the source
// gives a token other than the refused one (a rotated token file is used
// within about a second).
//
// first, when set, is a replacement tunnel rotateLoop dialed (reload.go):
// the loop serves it first, and ends with it if it never took over its
// slot. A loop whose session was retired (GOAWAY sent: its replacement
// serves the slot now) ends once the hub closed it.
func (a *Agent) tunnelLoop(ctx context.Context, idx int, first *session) {
	var rbuf []byte
	if first != nil {
		rbuf = first.rbuf
	} else {
		rbuf = make([]byte, readBufLen)
	}
	r := retry{lo: a.cfg.ReconnectMin, hi: a.cfg.ReconnectMax, rnd: rand.Int64N}
	for {
		i := int(a.urlIdx.Load())
		s, refused := first, ""
		first = nil
		if s == nil {
			s, refused = a.dialSession(ctx, i, idx, rbuf, nil)
		} else {
			i = s.urlIdx
		}
		var up time.Duration
		if s != nil {
			up = s.serve()
			if a.leaveSlot(s) {
				return
			}
		}
		if ctx.Err() != nil {
			return
		}
		a.urlIdx.CompareAndSwap(int32(i), int32((i+1)%len(a.urls)))
		a.m.reconnects.inc()
		if !a.waitRetry(ctx, r.next(up), refused) {
			return
		}
	}
}

// retry is a tunnel's reconnect backoff: each attempt waits longer (capped,
// jittered, see backoff), and a tunnel that stayed up for stableAfter
// starts again from lo. Owned by one tunnelLoop.
type retry struct {
	lo, hi  time.Duration
	rnd     func(int64) int64
	attempt int
}

// next returns the wait after a session that was up for up (0: the
// attempt failed or was refused).
func (r *retry) next(up time.Duration) time.Duration {
	if up >= stableAfter {
		r.attempt = 0
	}
	d := backoff(r.attempt, r.lo, r.hi, r.rnd)
	r.attempt++
	return d
}

// tokenPoll is how often a tunnel refused by the hub asks the TokenSource
// whether the token changed while it waits to retry.
const tokenPoll = time.Second

// waitRetry waits d before the next attempt and reports false if ctx ended
// first. refused is the token the hub just refused ("" if it did not): with
// a TokenSource, the wait ends as soon as the source gives another token.
func (a *Agent) waitRetry(ctx context.Context, d time.Duration, refused string) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	var poll <-chan time.Time
	if refused != "" && a.cfg.TokenSource != nil && d > tokenPoll {
		tk := time.NewTicker(tokenPoll)
		defer tk.Stop()
		poll = tk.C
	}
	for {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		case <-poll:
			if tok, err := a.cfg.TokenSource(); err == nil && tok != "" && tok != refused {
				return true
			}
		}
	}
}

// Shutdown stops the agent gracefully: new OPENs are refused with
// OPEN_ERR(shutdown), live streams may finish until ctx is done, then Run is
// stopped and Shutdown waits for it to return. It returns ctx.Err() when
// streams were still live at the deadline (they are then closed), else nil.
// Safe from any goroutine; Run called afterwards returns at once.
func (a *Agent) Shutdown(ctx context.Context) error {
	a.draining.Store(true)
	var err error
wait:
	for a.active.Load() > 0 {
		select {
		case <-a.idle:
		case <-ctx.Done():
			err = ctx.Err()
			break wait
		}
	}
	a.mu.Lock()
	a.stopped = true
	cancel, done := a.cancelRun, a.runDone
	a.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
	return err
}

// streamGone is called once per stream when it ends.
func (a *Agent) streamGone() {
	if a.active.Add(-1) == 0 && a.draining.Load() {
		select {
		case a.idle <- struct{}{}:
		default:
		}
	}
}

// backoff returns the wait before reconnect attempt n (0-based): uniformly
// drawn ("full jitter") from [lo, min(hi, lo·2^(n+1))]. rnd(k) returns a
// number in [0, k).
func backoff(n int, lo, hi time.Duration, rnd func(int64) int64) time.Duration {
	if lo <= 0 {
		lo = 1
	}
	if hi < lo {
		hi = lo
	}
	ceil := lo
	for i := 0; i <= n && ceil < hi; i++ {
		if ceil > hi/2 {
			ceil = hi
			break
		}
		ceil *= 2
	}
	ceil = min(ceil, hi)
	return lo + time.Duration(rnd(int64(ceil-lo)+1))
}
