// Package hub is the cloud side of NowConnect: it accepts agents on the
// control port's /tunnel WebSocket, accepts clients on TCP listeners, and
// carries every client connection as a stream over an agent's tunnel.
//
// Every stream lives on the event loop of the tunnel that carries it: a
// client accepted on another loop is migrated there before its first byte
// is read, so a stream's state, its client socket and its tunnel are only
// ever touched from one goroutine and bytes move between them without locks
// or extra copies. The routing table (connector → tunnels) is the only state
// shared between loops.
package hub

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/panjf2000/gnet/v2"

	"github.com/nowconnect/nowconnect/codec"
	"github.com/nowconnect/nowconnect/engine"
)

// Claims is what a verified agent token grants.
type Claims struct {
	AgentID    string
	Connectors []string // nil = any
}

// TokenVerifier checks the Authorization header of a tunnel upgrade and
// returns the agent id and the connectors it may serve (nil = any). It runs
// off the event loop (it may fetch keys); errors must not contain the
// token.
type TokenVerifier interface {
	VerifyBearer(authorization []byte) (agentID string, connectors []string, err error)
}

// Listener is one TCP listener and the connector it serves.
type Listener struct {
	Name      string
	Bind      string
	Connector string
	Allow     []netip.Prefix // empty = every client
	PDP       bool           // ask Config.PDP for every connection
}

// Config configures a Hub. Zero fields take the documented defaults.
type Config struct {
	Control          string        // control port, default "0.0.0.0:8765"
	Listeners        []Listener    // at least one
	Window           int           // per-stream credit granted to agents, default 256 KiB
	QueueDepth       int           // buffers per stream queue (queue_depth_per_cid), default 64
	PingInterval     time.Duration // default 15s
	PingTimeout      time.Duration // default 45s
	HandshakeTimeout time.Duration // default 10s
	EventLoops       int           // default one per CPU
	ReadBufferBytes  int           // default 64 KiB
	SocketRecvBuffer int
	SocketSendBuffer int
	Verifier         TokenVerifier // required
	Logger           *slog.Logger  // default slog.Default()
	MaskClientAddr   bool          // log client addresses as x.x.x.0/24
	Metrics          *metrics.Set  // default: a new set
	Ready            func() bool   // extra readiness condition (HA); nil = always ready
	IdleTimeout      time.Duration // close streams idle this long; 0 = never
	PDP              *PDPConfig    // policy decision point for listeners with PDP set; nil = none
	RequestTimeout   time.Duration // control-port request head deadline, default 10s
}

// Errors returned by New and Start.
var (
	ErrNoListeners = errors.New("hub: no listeners configured")
	ErrNoVerifier  = errors.New("hub: no token verifier configured")
)

// Hub is a running cloud hub.
type Hub struct {
	// set at construction
	cfg      Config
	log      *slog.Logger
	srv      *engine.Server
	lis      []*listener
	router   router
	met      *hubMetrics
	pdp      *pdp // nil without a PDP
	shutdown atomic.Bool
	stopped  atomic.Bool // Stop ran
	debug    bool        // per-connection debug lines enabled
}

type listener struct {
	Listener
	met *connMetrics
}

// New validates cfg and prepares a hub.
func New(cfg Config) (*Hub, error) {
	if cfg.Control == "" {
		cfg.Control = "0.0.0.0:8765"
	}
	if len(cfg.Listeners) == 0 {
		return nil, ErrNoListeners
	}
	if cfg.Verifier == nil {
		return nil, ErrNoVerifier
	}
	if cfg.Window <= 0 {
		cfg.Window = 256 << 10
	}
	if cfg.Window < 4096 || cfg.Window > codec.MaxWindow {
		return nil, fmt.Errorf("hub: window %d out of range", cfg.Window)
	}
	if cfg.QueueDepth <= 0 {
		cfg.QueueDepth = 64
	}
	if cfg.PingInterval <= 0 {
		cfg.PingInterval = 15 * time.Second
	}
	if cfg.PingTimeout <= 0 {
		cfg.PingTimeout = 45 * time.Second
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 10 * time.Second
	}
	if cfg.ReadBufferBytes <= 0 {
		cfg.ReadBufferBytes = 64 << 10
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.NewSet()
	}
	h := &Hub{cfg: cfg, log: cfg.Logger, met: newHubMetrics(cfg.Metrics)}
	h.met.queueSize = h.queueSize
	h.debug = cfg.Logger.Enabled(context.Background(), slog.LevelDebug)
	h.router.init()
	if cfg.PDP != nil && cfg.PDP.URL != "" {
		h.pdp = newPDP(h, *cfg.PDP)
	}
	binds := make([]string, 0, len(cfg.Listeners))
	for _, l := range cfg.Listeners {
		h.lis = append(h.lis, &listener{Listener: l, met: h.met.connector(l.Connector)})
		binds = append(binds, l.Bind)
	}
	srv, err := engine.NewServer(engine.Options{
		Control:          cfg.Control,
		Listeners:        binds,
		EventLoops:       cfg.EventLoops,
		ReadBufferBytes:  cfg.ReadBufferBytes,
		SocketRecvBuffer: cfg.SocketRecvBuffer,
		SocketSendBuffer: cfg.SocketSendBuffer,
		RequestTimeout:   cfg.RequestTimeout,
		TickInterval:     tickFor(cfg),
		Logger:           cfg.Logger,
	}, h, h)
	if err != nil {
		return nil, err
	}
	h.srv = srv
	return h, nil
}

// Bounds of the engine's slow tick (pings, handshake, ping and request
// timeouts, the stream walk).
const (
	minTick = 10 * time.Millisecond
	maxTick = 250 * time.Millisecond
)

// tickFor returns the engine's slow tick: a quarter of the shortest timer
// the tick enforces, within [minTick, maxTick]. The defaults (15s pings, 10s
// timeouts) give maxTick: 4 wake-ups a second per loop, which keeps an idle
// hub near 0.4% of a core (it was ~2% at a fixed 50ms). Short timers, as in
// tests, get a finer tick. The idle timeout is not among them: the streams
// are walked once a second (streamScan) whatever the tick.
func tickFor(cfg Config) time.Duration {
	d := min(cfg.PingInterval, cfg.PingTimeout, cfg.HandshakeTimeout, cfg.RequestTimeout)
	return max(minTick, min(maxTick, d/4))
}

// Start binds the control port and the listeners.
func (h *Hub) Start() error {
	if err := h.srv.Start(); err != nil {
		return err
	}
	h.log.Info("control_started", "listen", h.cfg.Control)
	for _, l := range h.lis {
		h.log.Info("listener_started", "name", l.Name, "bind", l.Bind, "connector", l.Connector)
	}
	return nil
}

// Shutdown stops taking new clients and agents (readiness turns 503, new
// clients are refused), lets the streams in flight finish until ctx ends,
// then closes everything.
func (h *Hub) Shutdown(ctx context.Context) error {
	if !h.shutdown.Swap(true) {
		h.log.Info("draining", "streams", h.ActiveStreams())
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for h.ActiveStreams() > 0 {
		select {
		case <-ctx.Done():
			h.log.Warn("grace period over", "streams", h.ActiveStreams())
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			return h.Stop(sctx)
		case <-tick.C:
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return h.Stop(sctx)
}

// queueSize is the largest agent→client queue of any stream of connector,
// in buffers, as of the tunnels' last tick.
func (h *Hub) queueSize(connector string) int64 {
	var m int64
	for _, t := range h.router.all() {
		if q := t.qmax[connector]; q != nil {
			m = max(m, q.Load())
		}
	}
	return m
}

// Stop refuses new connections and closes everything at once. Calling it
// again is a no-op.
func (h *Hub) Stop(ctx context.Context) error {
	h.shutdown.Store(true)
	if h.stopped.Swap(true) {
		return nil
	}
	if h.pdp != nil {
		h.pdp.stop()
	}
	// Tunnels close on their loops, which closes every stream, including
	// the parked and half-closed sockets gnet does not know about.
	var done []<-chan struct{}
	for _, t := range h.router.all() {
		done = append(done, t.closeAsync(errShutdown))
	}
	for _, d := range done {
		select {
		case <-d:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return h.srv.Stop(ctx)
}

// Metrics returns the hub's metric set.
func (h *Hub) Metrics() *metrics.Set { return h.cfg.Metrics }

// Agents returns the number of connected agents.
func (h *Hub) Agents() int { return len(h.router.all()) }

// ActiveStreams returns the number of live streams across agents.
func (h *Hub) ActiveStreams() int {
	n := 0
	for _, t := range h.router.all() {
		n += int(t.active.Load())
	}
	return n
}

var errShutdown = errors.New("hub shutting down")

// Accept runs on the accepting loop for every client connection.
func (h *Hub) Accept(c gnet.Conn, idx int) gnet.Action {
	l := h.lis[idx]
	if h.shutdown.Load() {
		_ = c.SetLinger(0) // refused: the client sees a reset, not a stream
		return gnet.Close
	}
	addr := c.RemoteAddr()
	ap := addrPort(addr)
	if len(l.Allow) > 0 && !allowed(l.Allow, ap.Addr()) {
		l.met.cidrBlocked.Inc()
		h.log.Warn("cidr_blocked", "listener", l.Name, "connector", l.Connector, "client", h.maskAddr(ap))
		return gnet.Close
	}
	if l.PDP && h.pdp != nil {
		return h.pdp.check(c, l, ap)
	}
	return h.route(c, l, ap)
}

// route picks the tunnel for a new client and moves the client to the
// tunnel's loop (or opens the stream at once when it is already there).
// It runs on the accepting loop.
func (h *Hub) route(c gnet.Conn, l *listener, ap netip.AddrPort) gnet.Action {
	t := h.pick(l, ap)
	if t == nil {
		return gnet.Close
	}
	s := newStream(h, l, t, ap)
	if c.EventLoop() == t.loop.EventLoop() {
		return s.OnOpen(c)
	}
	fd, err := engine.Park(c)
	if err != nil {
		t.active.Add(-1)
		l.met.sessionErr.Inc()
		return gnet.Close
	}
	c.SetContext(migrated{})
	h.enroll(s, t, fd)
	return gnet.Close
}

// routeFD is route for a socket already detached from gnet (after a PDP
// decision); fd is ours. Safe from any goroutine.
func (h *Hub) routeFD(fd int, l *listener, ap netip.AddrPort) {
	if h.shutdown.Load() {
		engine.CloseFD(fd, true)
		return
	}
	t := h.pick(l, ap)
	if t == nil {
		engine.CloseFD(fd, false)
		return
	}
	h.enroll(newStream(h, l, t, ap), t, fd)
}

// enroll hands fd to t's loop, where s.OnOpen takes over (and closes fd).
func (h *Hub) enroll(s *stream, t *tunnel, fd int) {
	s.dup = fd
	if _, err := engine.Enroll(t.loop.EventLoop(), fd, s); err != nil {
		engine.CloseFD(fd, true)
		t.active.Add(-1)
		if !errors.Is(err, engine.ErrNotConnected) {
			s.lis.met.sessionErr.Inc()
			h.log.Warn("migrate failed", "connector", s.lis.Connector, "err", err)
		}
	}
}

// pick chooses the agent for a new stream, logging when there is none.
func (h *Hub) pick(l *listener, ap netip.AddrPort) *tunnel {
	t := h.router.pick(l.Connector)
	if t == nil {
		l.met.noAgent.Inc()
		h.log.Warn("no_agent_for_connector", "listener", l.Name, "connector", l.Connector, "client", h.maskAddr(ap))
	}
	return t
}

// migrated is the context of a client connection that moved to another
// loop; gnet's close of the original descriptor is expected and ignored.
type migrated struct{}

func (migrated) OnTraffic(gnet.Conn) gnet.Action { return gnet.Close }
func (migrated) OnClose(gnet.Conn, error)        {}

// Route answers the control port.
func (h *Hub) Route(req *engine.Request) engine.Response {
	switch req.Path {
	case "/healthz":
		return engine.Response{Status: 200, ContentType: "application/json", Body: []byte(`{"status":"ok"}`)}
	case "/readyz":
		if h.shutdown.Load() {
			return engine.Response{Status: 503, ContentType: "application/json", Body: []byte(`{"status":"shutting_down"}`)}
		}
		if h.cfg.Ready != nil && !h.cfg.Ready() {
			return engine.Response{Status: 503, ContentType: "application/json", Body: []byte(`{"status":"degraded"}`)}
		}
		return engine.Response{Status: 200, ContentType: "application/json", Body: []byte(`{"status":"ready"}`)}
	case "/metrics":
		return engine.Response{Status: 200, ContentType: "text/plain; version=0.0.4; charset=utf-8", Render: h.renderMetrics}
	case "/tunnel":
		if !req.Upgrade {
			return engine.Response{Status: 426, Body: []byte("websocket upgrade required\n")}
		}
		if h.shutdown.Load() {
			return engine.Response{Status: 503, Body: []byte("shutting down\n")}
		}
		// Verification may fetch keys (JWKS): decide off the event loop.
		authz := bytes.Clone(req.Authorization)
		remote := req.RemoteAddr.String()
		return engine.Response{Decide: func() engine.Response {
			id, conns, err := h.cfg.Verifier.VerifyBearer(authz)
			if err != nil {
				h.met.authFailures.Inc()
				h.log.Warn("agent_auth_failed", "remote", remote, "err", err.Error())
				return engine.Response{Status: 401, Body: []byte("unauthorized\n")}
			}
			return engine.Response{Upgrade: newTunnel(h, Claims{AgentID: id, Connectors: conns})}
		}}
	}
	return engine.Response{Status: 404, Body: []byte("not found\n")}
}
