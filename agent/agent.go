// Package agent is the premise side of NowConnect: it dials out to a cloud
// hub over one WebSocket tunnel, announces the connectors it serves, and for
// every stream the hub opens it dials the connector's target and relays the
// bytes both ways under the per-stream credit windows of the tunnel protocol
// (see package codec). It reconnects with capped, jittered exponential
// backoff and rotates through several hub URLs.
//
// Files, one per stage: agent.go (config, Run loop, backoff), session.go
// (tunnel handshake and reader), send.go (the tunnel writer and frame
// buffers), stream.go (per-stream state, target dialing and writing),
// targetread_linux.go (the epoll pollers that read targets),
// targetread_other.go (a reader goroutine per stream elsewhere), metrics.go.
//
// Goroutines. Run's own goroutine reads the tunnel; Run also owns one target
// poller per P (Linux), which reads every stream's target without a
// goroutine per stream. Per tunnel: tunnelWriteLoop (batches frames into one
// writev) and pingLoop (PING, liveness, context cancellation). Per stream:
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
)

// Defaults of Config.
const (
	DefaultDialTimeout      = 5 * time.Second
	DefaultWindow           = 256 << 10
	DefaultReconnectMin     = 500 * time.Millisecond
	DefaultReconnectMax     = 30 * time.Second
	DefaultPingInterval     = 15 * time.Second
	DefaultPingTimeout      = 45 * time.Second
	DefaultHandshakeTimeout = 10 * time.Second
)

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
	// Connectors maps a connector name (1..255 bytes, at most 64) to its
	// target host:port. At least one is required.
	Connectors map[string]string
	// DialTimeout bounds dialing a target. Default 5s.
	DialTimeout time.Duration
	// TLSConfig is used for wss:// URLs (set RootCAs for a private CA, and
	// Certificates for mTLS). nil means the system roots.
	TLSConfig *tls.Config
	// Window is the per-stream credit this agent grants the hub (hub→agent
	// bytes in flight per stream, announced in HELLO). It bounds the memory
	// the agent spends on bytes waiting for a slow target. Default 256 KiB.
	Window int
	// ReconnectMin and ReconnectMax bound the reconnect backoff. Defaults
	// 500ms and 30s.
	ReconnectMin, ReconnectMax time.Duration
	// PingInterval is how often the agent sends PING; PingTimeout closes
	// the tunnel when nothing at all was received for that long. Defaults
	// 15s and 45s.
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
	cfg        Config
	log        *slog.Logger
	urls       []string // as given
	logURLs    []string // with any user info redacted, for logs
	names      []string // sorted connector names, for HELLO
	connectors map[string]*connector
	dialer     net.Dialer
	window     int // cfg.Window
	quarter    int // credit is returned in WINDOW frames of at least this
	qDepth     int // ring.Queue depth per stream
	m          agentMetrics

	// owned by Run (one session at a time)
	rbuf    []byte
	pollers pollers // target readers, started and stopped by Run

	connected atomic.Bool
	connects  atomic.Uint64
	active    atomic.Int64
	draining  atomic.Bool
	idle      chan struct{} // cap 1: a stream ended while draining

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
	if cfg.Window < 1 || cfg.Window > codec.MaxWindow {
		bad("Window: %d out of range 1..%d", cfg.Window, codec.MaxWindow)
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
	if len(cfg.Connectors) == 0 {
		bad("Connectors: at least one connector is required")
	}
	if len(cfg.Connectors) > codec.MaxConnectors {
		bad("Connectors: %d connectors, at most %d", len(cfg.Connectors), codec.MaxConnectors)
	}
	names := make([]string, 0, len(cfg.Connectors))
	for name, addr := range cfg.Connectors {
		names = append(names, name)
		if l := len(name); l == 0 || l > 255 {
			bad("Connectors[%q]: name length %d out of range 1..255", name, l)
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			bad("Connectors[%q]: target %q: %v", name, addr, err)
		}
	}
	slices.Sort(names)
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
		names:      names,
		connectors: make(map[string]*connector, len(names)),
		dialer:     net.Dialer{Timeout: cfg.DialTimeout},
		window:     cfg.Window,
		quarter:    max(1, cfg.Window/4),
		qDepth:     cfg.Window/queueChunk + 3,
		idle:       make(chan struct{}, 1),
	}
	for _, name := range names {
		a.connectors[name] = newConnector(cfg.Metrics, name, cfg.Connectors[name])
	}
	a.m = newAgentMetrics(cfg.Metrics, a)
	return a, nil
}

// Connected reports whether the tunnel is up (HELLO_ACK received). Safe
// from any goroutine.
func (a *Agent) Connected() bool { return a.connected.Load() }

// ActiveStreams returns the number of live streams. Safe from any goroutine.
func (a *Agent) ActiveStreams() int { return int(a.active.Load()) }

// Connects returns how many tunnels were established (HELLO_ACK received)
// so far. Safe from any goroutine.
func (a *Agent) Connects() uint64 { return a.connects.Load() }

// Run connects to the hub, serves streams and reconnects until ctx is done
// or Shutdown stops it. It then closes every stream and the tunnel and
// returns nil once all its goroutines have exited. It returns ErrRunning if
// the agent already runs, and nil at once after Shutdown.
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

	if a.rbuf == nil {
		a.rbuf = make([]byte, readBufLen)
	}
	if err := a.pollers.start(); err != nil {
		return fmt.Errorf("agent: start target pollers: %w", err)
	}
	defer a.pollers.stop() // after every session ended: no stream is left
	attempt := 0
	for i := 0; ; i = (i + 1) % len(a.urls) {
		up := a.runSession(ctx, i)
		if ctx.Err() != nil {
			return nil
		}
		if up >= stableAfter {
			attempt = 0
		}
		d := backoff(attempt, a.cfg.ReconnectMin, a.cfg.ReconnectMax, rand.Int64N)
		attempt++
		a.m.reconnects.inc()
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
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
