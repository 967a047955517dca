// Package hub is the cloud side of NowConnect: it accepts agents on the
// control port's /tunnel WebSocket, accepts clients on TCP listeners, and
// carries every client connection as a stream over an agent's tunnel.
//
// Every stream lives on the event loop of the tunnel that carries it: a
// client is handed straight from its listener's accept goroutine to that
// loop, so a stream's state, its client socket and its tunnel are only ever
// touched from one goroutine and bytes move between them without locks or
// extra copies. The routing table (connector → agents → tunnels) is the
// only state shared between loops. An agent may hold several tunnels; the
// hub places them on different loops, so one agent's traffic uses several
// cores, and routes by agent first (fewest streams), then by tunnel.
//
// Files: hub.go (config, start, stop, accept), reload.go (SIGHUP: what
// changes live), router.go (routing),
// tunnel.go (an agent's tunnel: handshake, frames, liveness), stream.go (a
// client stream), pdp.go (policy checks), metrics.go, limits.go
// (descriptor budget and rate-limited logs).
package hub

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/nowconnect/nowconnect/codec"
	"github.com/nowconnect/nowconnect/engine"
	"github.com/nowconnect/nowconnect/internal/flow"
	"github.com/nowconnect/nowconnect/internal/lograte"
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
	Window           int           // initial per-stream window granted to agents (stream_window), default 256 KiB
	MaxWindow        int           // most a stream's window grows to (max_stream_window), default 16 MiB
	TunnelWindow     int           // tunnel-level window granted to agents (tunnel_window), default 64 MiB
	MaxFramePayload  int           // largest DATA payload the hub sends, default and at most codec.MaxPayload
	MaxProtocol      int           // newest tunnel protocol spoken, default codec.Version (1: fixed windows)
	QueueDepth       int           // buffers per stream queue (queue_depth_per_cid), default 64
	PingInterval     time.Duration // default 2s
	PingTimeout      time.Duration // default 6s: a frozen agent is closed within about that
	HandshakeTimeout time.Duration // default 10s
	OpenTimeout      time.Duration // an OPEN without OPEN_ACK/OPEN_ERR closes its client, default 5s
	EventLoops       int           // default one per CPU available (GOMAXPROCS at start)
	ReadBufferBytes  int           // default 64 KiB
	SocketRecvBuffer int
	SocketSendBuffer int
	MaxConnections   int                  // client connections held at once; default from RLIMIT_NOFILE (see limits.go)
	Verifier         TokenVerifier        // required; the initial one (Reload replaces it)
	Logger           *slog.Logger         // default slog.Default()
	MaskClientAddr   bool                 // log client addresses as x.x.x.0/24
	ConnLogRate      int                  // "connection open"/"connection closed" lines per second at info, default 100; -1: debug only
	Metrics          *metrics.Set         // default: a new set
	Ready            func() bool          // extra readiness condition (HA); nil = always ready
	IdleTimeout      time.Duration        // close streams idle this long; 0 = never
	PDP              *PDPConfig           // policy decision point for listeners with PDP set; nil = none
	RequestTimeout   time.Duration        // control-port request head deadline, default 10s
	HA               *HAConfig            // ownership registry and modes; nil = mode off
	Mesh             Mesh                 // hub-to-hub links (HA part 2); nil = no /mesh
	MeshLimits       flow.Limits          // what this hub grants peers on a link (the values its M_HELLO announces)
	MetricFamilies   map[string][2]string // # HELP/# TYPE of series others register on Metrics (family → type, help)
}

// Defaults of Config.
const (
	DefaultPingInterval = 2 * time.Second
	DefaultPingTimeout  = 6 * time.Second
	DefaultOpenTimeout  = 5 * time.Second
)

// Errors returned by New and Start.
var (
	ErrNoListeners = errors.New("hub: no listeners configured")
	ErrNoVerifier  = errors.New("hub: no token verifier configured")
	ErrConfig      = errors.New("hub: invalid config")
)

// Hub is a running cloud hub.
type Hub struct {
	// set at construction
	cfg        Config
	log        *slog.Logger
	srv        *engine.Server
	lis        []*listener
	router     router
	met        *hubMetrics
	owners     *owners // nil in HA mode off
	mesh       Mesh    // nil without a mesh
	peers      peers   // links up
	meshLimits flow.Limits
	meshLis    sync.Map    // connector → *listener of relayed streams (metrics)
	limits     flow.Limits // what the hub grants agents (protocol 2)
	maxConns   int64
	connLog    *lograte.Limit // connection open/closed lines; nil: debug only
	shutdown   atomic.Bool
	stopped    atomic.Bool // Stop ran

	conns atomic.Int64 // client connections held (accepted, not yet closed)

	// swapped by Reload (reload.go), read from any goroutine
	pdp      atomic.Pointer[pdp]         // the policy client for new connections; nil without a PDP
	verifier atomic.Pointer[verifierRef] // checks tunnel upgrades
	mask     atomic.Bool                 // log client addresses masked (log.mask_client_addr)
	rl       reloadState                 // bound listeners, retiring PDP clients
}

// listener is a listener's settings as its accept goroutine reads them:
// immutable once published (Reload publishes a new one, see binding), so
// a stream keeps the listener, connector and metrics it was accepted under.
type listener struct {
	Listener
	h       *Hub
	met     *connMetrics
	refused *lograte.Limit // connection_refused lines
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
		cfg.Window = flow.DefaultStreamWindow
	}
	if cfg.MaxWindow <= 0 {
		cfg.MaxWindow = max(cfg.Window, flow.DefaultMaxStreamWindow)
	}
	if cfg.TunnelWindow <= 0 {
		cfg.TunnelWindow = max(cfg.MaxWindow, flow.DefaultTunnelWindow)
	}
	if cfg.MaxProtocol == 0 {
		cfg.MaxProtocol = codec.Version
	}
	if cfg.MaxProtocol != codec.Version1 && cfg.MaxProtocol != codec.Version {
		return nil, fmt.Errorf("%w: protocol version %d (have %d, %d)", ErrConfig, cfg.MaxProtocol, codec.Version1, codec.Version)
	}
	limits := flow.Limits{Stream: cfg.Window, MaxStream: cfg.MaxWindow, Tunnel: cfg.TunnelWindow}
	if err := limits.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if cfg.MaxFramePayload <= 0 || cfg.MaxFramePayload > codec.MaxPayload {
		cfg.MaxFramePayload = codec.MaxPayload
	}
	if cfg.QueueDepth <= 0 {
		cfg.QueueDepth = 64
	}
	if cfg.PingInterval <= 0 {
		cfg.PingInterval = DefaultPingInterval
	}
	if cfg.PingTimeout <= 0 {
		cfg.PingTimeout = DefaultPingTimeout
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	if cfg.OpenTimeout <= 0 {
		cfg.OpenTimeout = DefaultOpenTimeout
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
	if cfg.ConnLogRate == 0 {
		cfg.ConnLogRate = 100
	}
	h := &Hub{cfg: cfg, log: cfg.Logger, met: newHubMetrics(cfg.Metrics), limits: limits}
	h.maxConns = int64(cfg.MaxConnections)
	if h.maxConns <= 0 {
		h.maxConns = defaultMaxConnections()
	}
	h.met.queueSize = h.queueSize
	h.met.tunnels = h.router.tunnelCount
	h.verifier.Store(&verifierRef{cfg.Verifier})
	h.mask.Store(cfg.MaskClientAddr)
	if cfg.ConnLogRate > 0 {
		h.connLog = lograte.New(cfg.ConnLogRate, time.Second, h.met.logSuppressed("connection"))
	}
	h.router.init()
	if pc := normPDP(cfg.PDP); pc != nil {
		h.pdp.Store(newPDP(h, *pc))
		h.rl.pdpCfg = pc
	}
	h.mesh = cfg.Mesh
	h.peers.links, h.peers.by = make(map[string]*peerLink), make(map[MeshLink]*peerLink)
	h.meshLimits = cfg.MeshLimits
	if h.mesh != nil {
		if err := h.meshLimits.Validate(); err != nil || h.meshLimits.Tunnel == 0 {
			return nil, fmt.Errorf("%w: mesh windows: %v", ErrConfig, err)
		}
	}
	if ha := cfg.HA; ha != nil && ha.Mode != ModeOff {
		if ha.Registry == nil || ha.ReplicaID == "" {
			return nil, fmt.Errorf("%w: HA mode %s needs a registry and a replica id", ErrConfig, ha.Mode)
		}
		h.owners = newOwners(h, *ha)
	}
	for _, l := range cfg.Listeners {
		h.lis = append(h.lis, h.newListener(l, nil))
	}
	srv, err := engine.NewServer(engine.Options{
		Control:          cfg.Control,
		EventLoops:       cfg.EventLoops,
		ReadBufferBytes:  cfg.ReadBufferBytes,
		SocketRecvBuffer: cfg.SocketRecvBuffer,
		SocketSendBuffer: cfg.SocketSendBuffer,
		RequestTimeout:   cfg.RequestTimeout,
		TickInterval:     tickFor(cfg),
		Logger:           cfg.Logger,
	}, h)
	if err != nil {
		return nil, err
	}
	h.srv = srv
	return h, nil
}

// Bounds of the engine's slow tick (pings, handshake, open, ping and
// request timeouts, the stream walk).
const (
	minTick = 10 * time.Millisecond
	maxTick = 250 * time.Millisecond
)

// tickFor returns the engine's slow tick: a quarter of the shortest timer
// the tick enforces, within [minTick, maxTick]. The defaults give maxTick:
// 4 wake-ups a second per loop, which keeps an idle hub near 0.4% of a core
// (it was ~2% at a fixed 50ms). Short timers, as in tests, get a finer
// tick. The idle timeout is not among them: the streams are walked once a
// second (streamScan) whatever the tick.
func tickFor(cfg Config) time.Duration {
	d := min(cfg.PingInterval, cfg.PingTimeout, cfg.HandshakeTimeout, cfg.RequestTimeout)
	if cfg.OpenTimeout > 0 {
		d = min(d, cfg.OpenTimeout)
	}
	return max(minTick, min(maxTick, d/4))
}

// refuseUpgrade answers what every WebSocket route refuses before it looks
// at credentials: a request that is no upgrade (426), or any while the hub
// drains (503).
func (h *Hub) refuseUpgrade(req *engine.Request) (engine.Response, bool) {
	switch {
	case !req.Upgrade:
		return engine.Response{Status: 426, Body: []byte("websocket upgrade required\n")}, true
	case h.shutdown.Load():
		return engine.Response{Status: 503, Body: []byte("shutting down\n")}, true
	}
	return engine.Response{}, false
}

// BindError is an address the hub could not bind: a listener's, or the
// control port's (Listener "").
type BindError struct {
	Listener string
	Bind     string
	Err      error
}

func (e *BindError) Error() string {
	if e.Listener == "" {
		return fmt.Sprintf("control port (listen %s): %v", e.Bind, e.Err)
	}
	return fmt.Sprintf("listener %s (bind %s): %v", e.Listener, e.Bind, e.Err)
}

func (e *BindError) Unwrap() error { return e.Err }

// Start binds the control port and the listeners. A bind error is a
// *BindError.
func (h *Hub) Start() error {
	if err := h.srv.Start(); err != nil {
		if oe := (*net.OpError)(nil); errors.As(err, &oe) && oe.Op == "listen" {
			return &BindError{Bind: h.cfg.Control, Err: oe}
		}
		return err
	}
	if h.owners != nil {
		h.owners.start()
	}
	h.log.Info("control_started", "listen", h.cfg.Control, "max_connections", h.maxConns,
		"protocol", h.cfg.MaxProtocol, "stream_window", h.cfg.Window, "max_stream_window", h.cfg.MaxWindow,
		"tunnel_window", h.cfg.TunnelWindow, "gomaxprocs", engine.Procs())
	if err := h.bindAll(); err != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = h.Stop(sctx)
		return err
	}
	return nil
}

// Done is closed when the hub can no longer serve without Stop having been
// called (its event loops stopped, or a listener died): the process should
// exit non-zero at once, so that a supervisor restarts it. Err says why.
func (h *Hub) Done() <-chan struct{} { return h.srv.Done() }

// Err returns why Done was closed, else nil.
func (h *Hub) Err() error { return h.srv.Err() }

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
	h.stopListeners()
	h.stopPDPs()
	if h.owners != nil {
		h.owners.close()
	}
	// Tunnels close on their loops, which closes every stream, including
	// the parked and half-closed sockets gnet does not know about.
	var done []<-chan struct{}
	for _, t := range h.router.everyTunnel() {
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

// Agents returns the number of connected agents (an agent with several
// tunnels counts once).
func (h *Hub) Agents() int { return h.router.agentCount() }

// Tunnels returns the number of agent tunnels.
func (h *Hub) Tunnels() int { return h.router.tunnelCount() }

// ActiveStreams returns the number of live streams across agents: on
// local tunnels (relays of other hubs' clients included) and forwarded over
// the mesh.
func (h *Hub) ActiveStreams() int {
	n := 0
	for _, t := range h.router.all() {
		n += int(t.active.Load())
	}
	h.peers.mu.Lock()
	for _, pl := range h.peers.links {
		n += int(pl.origin.active.Load())
	}
	h.peers.mu.Unlock()
	return n
}

// Connections returns the client connections the hub holds a descriptor
// for (streams, and clients waiting for a PDP decision).
func (h *Hub) Connections() int { return int(h.conns.Load()) }

var errShutdown = errors.New("hub shutting down")

// Accept runs on the listener's accept goroutine for every client
// connection: refuse, check, then hand it to the loop of the tunnel that
// carries it.
func (l *listener) Accept(conn *net.TCPConn) {
	h := l.h
	if h.shutdown.Load() {
		_ = conn.SetLinger(0) // refused: the client sees a reset, not a stream
		_ = conn.Close()
		return
	}
	ap := addrPort(conn.RemoteAddr())
	if h.conns.Add(1) > h.maxConns {
		h.conns.Add(-1)
		l.met.acceptErr.Inc()
		if n, ok := l.refused.Allow(time.Now()); ok {
			h.log.Warn("connection_refused", "listener", l.Name, "connector", l.Connector,
				"client", h.maskAddr(ap), "reason", "max_connections", "max_connections", h.maxConns, "suppressed", n)
		}
		_ = conn.SetLinger(0)
		_ = conn.Close()
		return
	}
	if len(l.Allow) > 0 && !allowed(l.Allow, ap.Addr()) {
		h.conns.Add(-1)
		l.met.cidrBlocked.Inc()
		h.log.Warn("cidr_blocked", "listener", l.Name, "connector", l.Connector, "client", h.maskAddr(ap))
		_ = conn.Close()
		return
	}
	if l.PDP && h.checkPDP(conn, l, ap) {
		return
	}
	h.route(conn, l, ap)
}

// AcceptFailed counts accept errors (descriptors exhausted); the engine
// logs them at a limited rate.
func (l *listener) AcceptFailed(error) { l.met.acceptErr.Inc() }

// route picks the tunnel for a new client and hands the client to the
// tunnel's loop, where the stream opens. It owns conn and one count of
// h.conns. Safe from any goroutine.
func (h *Hub) route(conn *net.TCPConn, l *listener, ap netip.AddrPort) {
	if h.shutdown.Load() {
		h.conns.Add(-1)
		_ = conn.SetLinger(0)
		_ = conn.Close()
		return
	}
	t, via := h.pick(l, ap)
	if t == nil {
		h.conns.Add(-1)
		_ = conn.Close()
		return
	}
	s := newStream(h, l, t, ap)
	s.via = via
	if err := t.loop.Adopt(conn, s); err != nil {
		s.release()
		l.met.sessionErr.Inc()
		h.log.Warn("enroll_failed", "connector", l.Connector, "err", err.Error())
	}
}

// pick chooses the lane for a new stream: a local agent's tunnel first;
// else, in active mode, the mesh link to the hub that owns an agent of the
// connector (with what the stream reaches). It logs when there is none: no
// agent at all, agents only on hubs without a link up (mesh_down), or
// without a mesh (not_owner).
func (h *Hub) pick(l *listener, ap netip.AddrPort) (*lane, *remote) {
	if t := h.router.pick(l.Connector); t != nil {
		return t, nil
	}
	if o := h.owners; o != nil && o.Mode() == ModeActive && o.ownedElsewhere(l.Connector) {
		reason := codec.ReasonNotOwner
		if h.mesh != nil {
			ln, via, _ := h.pickRemote(l.Connector)
			if ln != nil {
				return ln, via
			}
			reason = codec.ReasonMeshDown
			l.met.meshDown.Inc()
		} else {
			l.met.notOwner.Inc()
		}
		if n, ok := l.refused.Allow(time.Now()); ok {
			h.log.Warn("connection_refused", "listener", l.Name, "connector", l.Connector,
				"client", h.maskAddr(ap), "reason", reason.String(), "suppressed", n)
		}
		return nil, nil
	}
	l.met.noAgent.Inc()
	if o := h.owners; o != nil && o.Mode() == ModeActive {
		o.missedAgent()
	}
	h.log.Warn("no_agent_for_connector", "listener", l.Name, "connector", l.Connector, "client", h.maskAddr(ap))
	return nil, nil
}

// meshListener returns the listener that relayed streams of connector are
// counted under (their clients are on other hubs).
func (h *Hub) meshListener(connector string) *listener {
	if l, ok := h.meshLis.Load(connector); ok {
		return l.(*listener)
	}
	l := h.newListener(Listener{Name: "mesh", Connector: connector}, nil)
	v, _ := h.meshLis.LoadOrStore(connector, l)
	return v.(*listener)
}

// Mode returns the HA mode.
func (h *Hub) Mode() Mode {
	if h.owners == nil {
		return ModeOff
	}
	return h.owners.Mode()
}

// SetMode switches the HA mode (SIGHUP): new decisions follow it, streams
// in flight are untouched. Switching to or from off needs a restart (the
// registry is set up at start), and is refused.
func (h *Hub) SetMode(m Mode) error {
	if h.owners == nil || m == ModeOff {
		if m == h.Mode() {
			return nil
		}
		return fmt.Errorf("%w: HA mode %s → %s needs a restart", ErrConfig, h.Mode(), m)
	}
	h.owners.setMode(m)
	return nil
}

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
		if h.owners != nil {
			ok, body := h.owners.ready()
			if ok {
				if meshOK, why := h.meshReady(); !meshOK {
					ok, body = false, `{"status":"degraded","reason":"`+why+`","ha_mode":"active","registry":"up"}`
				}
			}
			status := 200
			if !ok {
				status = 503
			}
			return engine.Response{Status: status, ContentType: "application/json", Body: []byte(body)}
		}
		return engine.Response{Status: 200, ContentType: "application/json", Body: []byte(`{"status":"ready"}`)}
	case "/metrics":
		return engine.Response{Status: 200, ContentType: "text/plain; version=0.0.4; charset=utf-8", Render: h.renderMetrics}
	case "/mesh":
		return h.meshRoute(req)
	case "/tunnel":
		if r, refused := h.refuseUpgrade(req); refused {
			return r
		}
		// Verification may fetch keys (JWKS): decide off the event loop.
		authz := bytes.Clone(req.Authorization)
		remote := req.RemoteAddr.String()
		version := codec.Version1
		if h.cfg.MaxProtocol >= codec.Version && req.OffersProtocol(codec.Subprotocol) {
			version = codec.Version
		}
		index, _ := strconv.Atoi(string(req.Tunnel))
		return engine.Response{Decide: func() engine.Response {
			id, conns, err := h.verifier.Load().v.VerifyBearer(authz)
			if err != nil {
				h.met.authFailures.Inc()
				h.log.Warn("agent_auth_failed", "remote", remote, "err", err.Error())
				return engine.Response{Status: 401, ContentType: "text/plain; charset=utf-8", Body: unauthorizedBody(err)}
			}
			resp := engine.Response{
				Upgrade: newTunnel(h, Claims{AgentID: id, Connectors: conns}, version),
				Loop:    h.tunnelLoop(id, index),
			}
			if version == codec.Version {
				resp.Subprotocol = codec.Subprotocol
			}
			return resp
		}}
	}
	return engine.Response{Status: 404, Body: []byte("not found\n")}
}

// tunnelLoop places tunnel index of an agent: the agent's tunnels go to
// consecutive loops from a start that depends on its id, so one agent's
// tunnels use different cores and different agents spread over them.
func (h *Hub) tunnelLoop(agentID string, index int) *engine.Loop {
	loops := h.srv.Loops()
	if len(loops) == 0 {
		return nil
	}
	f := fnv.New32a()
	_, _ = f.Write([]byte(agentID))
	return loops[(int(f.Sum32()%uint32(len(loops)))+max(index, 0))%len(loops)]
}
