package mesh

// # Mesh links
//
// A Manager runs the hub-to-hub links of one hub (seed 002 "Data plane – Mesh WS
// between hubs"; the wire format is codec/mesh.go): it dials every peer (ha.mesh.peers
// and, with a registry, the hubs the registry lists), accepts peers on ha.mesh.listen
// and through the control port's /mesh (AcceptConn), keeps one link per pair of hubs,
// measures RTT, detects dead peers, deduplicates stream frames and bounds what each
// link queues. It does not know streams: every stream frame goes to the Handler (the
// hub), which sends with Link.SendControl and Link.SendData.
//
// Files: manager.go (config, lifecycle, the duplicate rule), manager_dial.go (dial
// targets, redial backoff, discovery), manager_listen.go (the native listener),
// link.go (a link's handshake and reader), link_send.go (its lanes and writer),
// link_dedup.go (per-CID tables), link_buf.go (message buffers), link_metrics.go,
// meshauth.go (mesh tokens).
//
// Goroutines, all owned by the Manager and waited for by Close: meshDiscoveryLoop
// (one, with Discovery), dialLoop (one per dial target), meshListenLoop (with Listen),
// and per link linkReadLoop and linkWriteLoop. The native listener runs on goroutines
// and crypto/tls rather than on the gnet engine because gnet has no TLS
// (ENGINE_NOTES.md); mesh links are few and long-lived, so a goroutine pair each
// costs nothing that matters.
//
// # One link per pair
//
// Both hubs of a pair may dial each other. The accepting hub decides whether an
// inbound link survives before it answers the dialer's M_HELLO (see Link), so a link
// it refuses ("duplicate") is never up at either end, and LinkUp fires for survivors
// only. Its rule, for an inbound link from a peer it already has a link with:
//
//   - the existing link was dialed by this hub: it stays, the inbound one is refused
//     (the dialer learns from the refusal which replica its URL reaches, and stops
//     dialing it while that link is up);
//   - the existing link was dialed by the peer too: the peer dials only while it has
//     no link, so the existing one is stale (the peer restarted unnoticed) and the
//     inbound one replaces it.
//
// Crossing dials (both hubs dial at once): the hub with the lower replica id, which
// would keep its own dial, holds an inbound link while a dial of its own that may
// reach the same peer is in flight (at most HandshakeTimeout/2) and then refuses it
// if that dial came up; the higher hub never holds, so the two never wait for each
// other. If both ends nevertheless accept one link each (a hold timed out), each
// then sees, as the dialer of the other link, two links up: the one dialed by the
// lower replica id survives on both ends, the other is closed with "duplicate".
// A dial target whose peer already has a link up (in either direction) is not
// dialed.
//
// # Security
//
// Peers are authenticated by mTLS on the native listener (ListenTLS requiring client
// certificates), by mesh tokens (Secret, see meshauth.go), or both; with Secret set,
// every inbound link needs a valid token, also on the TLS listener, and its sub must
// be the replica id of the peer's M_HELLO. Without either the mesh is off: nothing
// is dialed or accepted and NewManager logs mesh_off.
//
// Lock order: Manager.mu before sender.mu.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/nowconnect/nowconnect/codec"
	"github.com/nowconnect/nowconnect/internal/auth"
)

// Errors of the mesh links. A LinkDown error wraps ErrLinkDown and the sentinel of
// its cause.
var (
	// ErrLinkDown: the link is closing or closed; sends fail with it.
	ErrLinkDown = errors.New("mesh: link down")
	// ErrBackpressure: the link's send queue (SendQueueDepth control frames, or
	// LinkWindow bytes of DATA) is full; the frame was not queued.
	ErrBackpressure = errors.New("mesh: link send queue full")
	// ErrBadFrame: SendControl or SendData got a frame it does not send.
	ErrBadFrame = errors.New("mesh: frame refused by the link")
	// ErrMeshAuth: a peer's credentials were refused, or none are configured.
	ErrMeshAuth = errors.New("mesh: peer not authenticated")
	// ErrDuplicateLink: the link lost to another link to the same peer.
	ErrDuplicateLink = errors.New("mesh: duplicate link")
	// ErrSelfLink: the peer is this hub (its replica id is ours).
	ErrSelfLink = errors.New("mesh: link to this hub itself")
	// ErrPingTimeout: nothing arrived from the peer for PingTimeout.
	ErrPingTimeout = errors.New("mesh: peer silent")
	// ErrProtocol: the peer broke the mesh or WebSocket protocol.
	ErrProtocol = errors.New("mesh: protocol violation")
	// ErrHandshake: no valid M_HELLO in time, or no common version.
	ErrHandshake = errors.New("mesh: handshake failed")
	// ErrPeerClosed: the peer closed the link.
	ErrPeerClosed = errors.New("mesh: peer closed the link")
	// ErrLinkIO: a read or write on the link's socket failed.
	ErrLinkIO = errors.New("mesh: link i/o error")
	// ErrShutdown: the manager is closed.
	ErrShutdown = errors.New("mesh: manager closed")
	// ErrBadManagerConfig: a ManagerConfig field is wrong; the message names it.
	ErrBadManagerConfig = errors.New("invalid mesh manager config")
)

// Defaults of the ManagerConfig fields.
const (
	DefaultDiscoveryInterval = 5 * time.Second
	DefaultWindow            = 256 << 10
	DefaultMaxWindow         = 16 << 20
	DefaultLinkWindow        = 8 << 20
	DefaultSendQueueDepth    = 1000
	DefaultBackoffMax        = 30 * time.Second
	DefaultPingInterval      = 2 * time.Second
	DefaultPingTimeout       = 8 * time.Second
	DefaultWriteTimeout      = 10 * time.Second
	DefaultHandshakeTimeout  = 10 * time.Second
	// BackoffMin is where the redial backoff starts.
	BackoffMin = 250 * time.Millisecond
)

// ManagerConfig configures the links of one hub. Durations of 0 take their default.
type ManagerConfig struct {
	// ReplicaID names this hub in M_HELLO (CheckReplicaID). Required.
	ReplicaID string
	// Peers are ha.mesh.peers: ws:// or wss:// URLs of peers' /mesh. Default none.
	Peers []string
	// Discovery, when set, adds the hubs it lists (minus this one) to the peers,
	// re-read every DiscoveryInterval; a failed read keeps the previous list. A hub
	// it no longer lists (and Peers does not name) is no longer dialed; a link to it
	// that is up stays up until it fails on its own (the peer may well be alive with
	// a registry hiccup, and its own dialer may rely on the link).
	Discovery PeerSource
	// DiscoveryInterval is how often Discovery is read. Default 5s.
	DiscoveryInterval time.Duration
	// AdvertiseURL is this hub's /mesh URL, published with Discovery.PublishHub at
	// Start and every HubTTL/3. Default none (needs Discovery).
	AdvertiseURL string
	// HubTTL is the registry's HubTTL (how long a published URL lives). Default 15s.
	HubTTL time.Duration
	// DialTLS is used for wss:// peers: client certificate and RootCAs (ha.mesh.tls).
	// The peer's certificate must verify against RootCAs with a SAN matching the
	// URL's host (Go's verification; ServerName is set per URL when empty). Default
	// nil: system roots, no client certificate.
	DialTLS *tls.Config
	// Secret is the content of ha.mesh.secret_file (at least 32 bytes): mesh tokens
	// are minted for every dial and required on every inbound link. Default nil: no
	// tokens (then only ListenTLS with client certificates admits peers).
	Secret []byte
	// Listen is ha.mesh.listen, a host:port for a /mesh listener of its own. Default
	// "": none, peers come in through the control port (AcceptConn).
	Listen string
	// ListenTLS makes Listen a TLS listener: server certificate, ClientCAs and, with
	// require_mtls, ClientAuth RequireAndVerifyClientCert. Default nil: plain ws://.
	ListenTLS *tls.Config
	// Window and MaxWindow are the per-stream window a stream starts with and may
	// grow to, LinkWindow the link's window (per_link_max_inflight_bytes), all
	// announced in M_HELLO for the DATA this hub receives; LinkWindow also bounds the
	// DATA a link queues for sending. 1 ≤ Window ≤ MaxWindow ≤ LinkWindow ≤ 1 GiB.
	// Defaults 256 KiB, min(16 MiB, LinkWindow), 8 MiB.
	Window, MaxWindow, LinkWindow int
	// Active reports whether the hub is in mode active (M_HELLO's flag), read at each
	// M_HELLO. Default nil: shadow.
	Active func() bool
	// SendQueueDepth is send_queue_depth: the control frames a link queues. Default
	// 1000.
	SendQueueDepth int
	// BackoffMax is connect_backoff_max_sec: redials wait a uniformly random time in
	// [0, min(BackoffMax, 250ms·2^n)] after the n-th failure in a row. Default 30s.
	BackoffMax time.Duration
	// PingInterval is how often a link sends M_PING (RTT and liveness), PingTimeout
	// how long a peer may stay silent before its link is closed. Defaults 2s and 8s,
	// so a dead peer is detected within 8s (sooner on a TCP error); PingTimeout must
	// exceed PingInterval.
	PingInterval, PingTimeout time.Duration
	// WriteTimeout bounds one write on a link, lenient so that a slow moment does not
	// flap the link. Default 10s.
	WriteTimeout time.Duration
	// HandshakeTimeout bounds dialing (TCP, TLS, upgrade) and the M_HELLO exchange.
	// Default 10s.
	HandshakeTimeout time.Duration
	// DedupCIDs is how many CIDs each link's dedup remembers. Default
	// DefaultDedupCIDs.
	DedupCIDs int
	// Handler receives the links and their stream frames. Required.
	Handler Handler
	// Metrics receives the nowconnect_mesh_* series. Default: a private set.
	Metrics *metrics.Set
	// Logger receives mesh_* events. Default: discard.
	Logger *slog.Logger
}

// PeerSource is what the manager needs of the registry (Redis and Memory provide it).
type PeerSource interface {
	// Hubs returns the live hubs and their mesh URLs, this one included.
	Hubs(ctx context.Context) (map[string]string, error)
	// PublishHub records this hub's mesh URL for HubTTL.
	PublishHub(ctx context.Context, meshURL string) error
}

var (
	_ PeerSource = (*Redis)(nil)
	_ PeerSource = (*Memory)(nil)
)

// Handler receives the links and the stream frames of every link; the hub implements
// it. Its methods are called on the link's reader goroutine (linkReadLoop),
// concurrently for different links; for one link in the order LinkUp, Frame…,
// LinkDown. A link that never came up gets neither LinkUp nor LinkDown.
type Handler interface {
	// LinkUp: l is the link to l.Peer() from now on (both M_HELLOs exchanged, the
	// duplicate rule applied; a link it replaced has had its LinkDown). Sends work.
	// The hub resyncs here. Called before any Frame of l; Manager.Link returns l once
	// LinkUp has returned.
	LinkUp(l *Link)
	// Frame is one stream frame (M_OPEN…M_WINDOW, also the link-level M_WINDOW on
	// CID 0), already deduplicated. h and payload are valid only during the call. It
	// must not block.
	Frame(l *Link, h codec.MeshHeader, payload []byte)
	// LinkDown: l is gone (err wraps ErrLinkDown and the cause); after its last
	// Frame; its sends fail from now on.
	LinkDown(l *Link, err error)
}

// Manager runs the mesh links of one hub.
type Manager struct {
	// set at construction
	cfg      ManagerConfig
	log      *slog.Logger
	met      *meshMetrics
	verifier *meshVerifier // nil without Secret
	accepts  bool          // AcceptsPeers
	base     time.Time     // monotonic origin of M_PING's opaque
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup

	// pendingAccepts counts inbound connections in TLS or upgrade (native listener).
	pendingAccepts boundedCounter

	mu sync.Mutex
	// guarded by mu
	started, closed bool
	listener        net.Listener
	links           map[string]*Link       // the registered or up link per peer replica
	latest          map[string]*Link       // the last link registered per peer, until it is done
	all             map[*Link]struct{}     // every link not yet done
	raw             map[net.Conn]struct{}  // inbound connections before they are links
	targets         map[string]*dialTarget // by URL
	seen            map[string]bool        // peers that had a link up (reconnect counting)
	gauged          map[string]bool        // peers with nowconnect_mesh_links series
	changed         chan struct{}          // closed and replaced on every change of links or targets
}

// NewManager checks cfg and builds a Manager. It does not connect; Start does.
func NewManager(cfg ManagerConfig) (*Manager, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	m := &Manager{
		cfg:     cfg,
		log:     cfg.Logger,
		met:     newMeshMetrics(cfg.Metrics),
		base:    time.Now(),
		links:   map[string]*Link{},
		latest:  map[string]*Link{},
		all:     map[*Link]struct{}{},
		raw:     map[net.Conn]struct{}{},
		targets: map[string]*dialTarget{},
		seen:    map[string]bool{},
		gauged:  map[string]bool{},
		changed: make(chan struct{}),
	}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	if cfg.Secret != nil {
		if m.verifier, err = newMeshVerifier(cfg.Secret, nil); err != nil {
			return nil, fmt.Errorf("%w: ManagerConfig.Secret: %v", ErrBadManagerConfig, err)
		}
	}
	m.accepts = cfg.Secret != nil || (cfg.ListenTLS != nil && cfg.ListenTLS.ClientAuth == tls.RequireAndVerifyClientCert)
	if !m.accepts {
		m.log.Warn("mesh_off", "replica_id", cfg.ReplicaID,
			"why", "neither a mesh secret (ha.mesh.secret_file) nor a TLS listener requiring client certificates (ha.mesh.listen with require_mtls): there is never an unauthenticated /mesh, so no peer is dialed or accepted")
	}
	for _, u := range cfg.Peers {
		if _, err := m.addTargetLocked(u, "", true); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// withDefaults validates c and fills in the defaults.
func (c ManagerConfig) withDefaults() (ManagerConfig, error) {
	bad := func(field, format string, args ...any) (ManagerConfig, error) {
		return c, fmt.Errorf("%w: ManagerConfig.%s: %s", ErrBadManagerConfig, field, fmt.Sprintf(format, args...))
	}
	if err := CheckReplicaID(c.ReplicaID); err != nil {
		return bad("ReplicaID", "%q: %v", c.ReplicaID, err)
	}
	if c.Handler == nil {
		return bad("Handler", "required")
	}
	seen := map[string]bool{}
	for i, p := range c.Peers {
		if _, _, err := parseMeshURL(p); err != nil {
			return bad(fmt.Sprintf("Peers[%d]", i), "%v", err)
		}
		if seen[p] {
			return bad(fmt.Sprintf("Peers[%d]", i), "%s is listed twice", redactURL(p))
		}
		seen[p] = true
	}
	if c.AdvertiseURL != "" {
		if c.Discovery == nil {
			return bad("AdvertiseURL", "needs Discovery (it is published there)")
		}
		if _, _, err := parseMeshURL(c.AdvertiseURL); err != nil {
			return bad("AdvertiseURL", "%v", err)
		}
	}
	if c.Discovery == nil && c.DiscoveryInterval != 0 {
		return bad("DiscoveryInterval", "set without Discovery")
	}
	if c.Secret != nil && len(c.Secret) < auth.MinSecretLen {
		return bad("Secret", "%d bytes, need at least %d", len(c.Secret), auth.MinSecretLen)
	}
	if c.ListenTLS != nil {
		if c.Listen == "" {
			return bad("ListenTLS", "set without Listen")
		}
		if len(c.ListenTLS.Certificates) == 0 && c.ListenTLS.GetCertificate == nil && c.ListenTLS.GetConfigForClient == nil {
			return bad("ListenTLS", "no server certificate")
		}
	}
	if c.Listen != "" {
		if _, _, err := net.SplitHostPort(c.Listen); err != nil {
			return bad("Listen", "%q: %v", c.Listen, err)
		}
		if c.Secret == nil && (c.ListenTLS == nil || c.ListenTLS.ClientAuth != tls.RequireAndVerifyClientCert) {
			return bad("Listen", "%s would refuse every peer: set Secret, or ListenTLS with ClientAuth RequireAndVerifyClientCert", c.Listen)
		}
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
		min  time.Duration
	}{
		{"DiscoveryInterval", &c.DiscoveryInterval, DefaultDiscoveryInterval, 10 * time.Millisecond},
		{"HubTTL", &c.HubTTL, DefaultHubTTL, 30 * time.Millisecond},
		{"BackoffMax", &c.BackoffMax, DefaultBackoffMax, BackoffMin},
		{"PingInterval", &c.PingInterval, DefaultPingInterval, 10 * time.Millisecond},
		{"PingTimeout", &c.PingTimeout, DefaultPingTimeout, 20 * time.Millisecond},
		{"WriteTimeout", &c.WriteTimeout, DefaultWriteTimeout, 10 * time.Millisecond},
		{"HandshakeTimeout", &c.HandshakeTimeout, DefaultHandshakeTimeout, 10 * time.Millisecond},
	} {
		switch {
		case *d.v == 0:
			*d.v = d.def
		case *d.v < d.min:
			return bad(d.name, "%v, at least %v (0 for the default %v)", *d.v, d.min, d.def)
		}
	}
	if c.PingTimeout <= c.PingInterval {
		return bad("PingTimeout", "%v must exceed PingInterval (%v)", c.PingTimeout, c.PingInterval)
	}
	if c.LinkWindow == 0 {
		c.LinkWindow = DefaultLinkWindow
	}
	if c.Window == 0 {
		c.Window = DefaultWindow
	}
	if c.MaxWindow == 0 {
		c.MaxWindow = min(DefaultMaxWindow, c.LinkWindow)
	}
	switch {
	case c.LinkWindow < 1 || c.LinkWindow > codec.MaxWindow:
		return bad("LinkWindow", "%d, must be 1..%d", c.LinkWindow, codec.MaxWindow)
	case c.Window < 1 || c.Window > c.MaxWindow:
		return bad("Window", "%d, must be 1..MaxWindow (%d)", c.Window, c.MaxWindow)
	case c.MaxWindow > c.LinkWindow:
		return bad("MaxWindow", "%d, must be at most LinkWindow (%d)", c.MaxWindow, c.LinkWindow)
	}
	if c.SendQueueDepth == 0 {
		c.SendQueueDepth = DefaultSendQueueDepth
	}
	if c.SendQueueDepth < 1 {
		return bad("SendQueueDepth", "%d, must be positive", c.SendQueueDepth)
	}
	if c.DedupCIDs == 0 {
		c.DedupCIDs = DefaultDedupCIDs
	}
	if c.DedupCIDs < 1 || c.DedupCIDs > 1<<24 {
		return bad("DedupCIDs", "%d, must be 1..%d", c.DedupCIDs, 1<<24)
	}
	if c.Metrics == nil {
		c.Metrics = metrics.NewSet()
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

// AcceptsPeers reports whether the mesh is on: peers can authenticate (Secret, or a
// TLS listener requiring client certificates). When false, Start dials nothing,
// VerifyToken and AcceptConn refuse everything, and the hub answers /mesh with 404.
func (m *Manager) AcceptsPeers() bool { return m.accepts }

// Start binds Listen and starts dialing and discovery. With the mesh off it does
// nothing. Call it once.
func (m *Manager) Start() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case m.closed:
		return ErrShutdown
	case m.started:
		return errors.New("mesh: Start called twice")
	}
	m.started = true
	if !m.accepts {
		return nil
	}
	if m.cfg.Listen != "" {
		ln, err := net.Listen("tcp", m.cfg.Listen)
		if err != nil {
			return fmt.Errorf("mesh: listen on %s (ha.mesh.listen): %w", m.cfg.Listen, err)
		}
		m.listener = ln
		m.wg.Go(func() { m.meshListenLoop(ln) })
		scheme := "ws"
		if m.cfg.ListenTLS != nil {
			scheme = "wss"
		}
		m.log.Info("mesh_listen_started", "addr", ln.Addr().String(), "scheme", scheme,
			"client_certs", m.cfg.ListenTLS != nil && m.cfg.ListenTLS.ClientAuth == tls.RequireAndVerifyClientCert,
			"tokens", m.verifier != nil)
	}
	for _, t := range m.targets {
		m.startTargetLocked(t)
	}
	if m.cfg.Discovery != nil {
		m.wg.Go(m.meshDiscoveryLoop)
	}
	m.updateGaugesLocked()
	return nil
}

// ListenAddr returns the address the native listener is bound to (nil before Start
// or without Listen).
func (m *Manager) ListenAddr() net.Addr {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.listener == nil {
		return nil
	}
	return m.listener.Addr()
}

// Close closes every link (close frame "shutdown", LinkDown for those up) and the
// listener, stops dialing, and waits for every goroutine of the manager.
func (m *Manager) Close() {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		m.wg.Wait()
		return
	}
	m.closed = true
	links := make([]*Link, 0, len(m.all))
	for l := range m.all {
		links = append(links, l)
	}
	for c := range m.raw {
		_ = c.Close()
	}
	if m.listener != nil {
		_ = m.listener.Close()
	}
	m.broadcastLocked()
	m.mu.Unlock()
	m.cancel()
	for _, l := range links {
		l.close(&linkError{reason: reasonShutdown, code: 1001, err: ErrShutdown, detail: "this hub is shutting down"})
	}
	m.wg.Wait()
}

// VerifyToken checks the Authorization header value of a /mesh upgrade ("Bearer
// <mesh token>") and returns the replica id the token names. It fails (wrapping
// ErrMeshAuth) when no Secret is configured. The hub calls it before it answers the
// upgrade of the control port's /mesh; errors never contain the token. Safe from any
// goroutine.
func (m *Manager) VerifyToken(authorization []byte) (peer string, err error) {
	if m.verifier == nil {
		return "", fmt.Errorf("%w: no mesh secret configured: /mesh on the control port is off", ErrMeshAuth)
	}
	return m.verifier.verify(authorization)
}

// AcceptConn runs a link on c, a /mesh WebSocket the hub's control port has already
// upgraded (the engine wrote the 101; c's next byte is the peer's first frame).
// authorization is the upgrade's Authorization header value, which the hub verified
// with VerifyToken; it is checked again here and its replica must match the peer's
// M_HELLO. AcceptConn returns at once; the manager owns c from now on and closes it
// when the mesh is off, the token is refused or the manager is closed. Safe from any
// goroutine.
func (m *Manager) AcceptConn(c net.Conn, authorization []byte) {
	peer, err := m.VerifyToken(authorization)
	if err != nil || !m.accepts {
		m.met.acceptError(acceptAuth)
		m.log.Warn("mesh_peer_refused", "remote", c.RemoteAddr().String(), "via", "control_port", "error", errText(err))
		_ = c.Close()
		return
	}
	l := newLink(m, c, false, nil)
	l.authPeer = peer
	if !m.spawnLink(l) {
		_ = c.Close()
	}
}

func errText(err error) string {
	if err == nil {
		return "mesh off"
	}
	return err.Error()
}

// spawnLink tracks l and starts its linkReadLoop, unless the manager is closed.
func (m *Manager) spawnLink(l *Link) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return false
	}
	m.all[l] = struct{}{}
	m.wg.Go(l.linkReadLoop)
	return true
}

// Links returns the links that are up. Safe from any goroutine.
func (m *Manager) Links() []*Link {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]*Link, 0, len(m.links))
	for _, l := range m.links {
		if linkState(l.state.Load()) == linkUp {
			out = append(out, l)
		}
	}
	return out
}

// Link returns the link to peer, nil if none is up. Safe from any goroutine.
func (m *Manager) Link(peer string) *Link {
	m.mu.Lock()
	defer m.mu.Unlock()
	if l := m.links[peer]; l != nil && linkState(l.state.Load()) == linkUp {
		return l
	}
	return nil
}

// monoNow is the time since the manager's start in ns (M_PING's opaque).
func (m *Manager) monoNow() int64 { return int64(time.Since(m.base)) }

// broadcastLocked wakes everybody waiting on m.changed.
func (m *Manager) broadcastLocked() {
	close(m.changed)
	m.changed = make(chan struct{})
}

// preferred reports whether l is the link the duplicate rule keeps against a link in
// the other direction: the one dialed by the lower replica id.
func (m *Manager) preferred(l *Link) bool {
	if l.dialed {
		return m.cfg.ReplicaID < l.peer
	}
	return l.peer < m.cfg.ReplicaID
}

// holdMax bounds how long an inbound link that would lose to a dial in flight waits
// for that dial's outcome (see the package comment).
func (m *Manager) holdMax() time.Duration { return m.cfg.HandshakeTimeout / 2 }

// holdLocked reports whether an inbound link from peer must wait: a dial of ours is in
// flight that may reach peer (its replica is peer or not known yet).
func (m *Manager) holdLocked(peer string) bool {
	for _, t := range m.targets {
		if t.attempting && !t.self && (t.replica == peer || t.replica == "") {
			return true
		}
	}
	return false
}

// register applies the duplicate rule to l, whose M_HELLO has arrived: it makes l the
// link to its peer and returns the link it replaces (to be closed) and the peer's
// previous link if that is not done yet (LinkUp of l waits for its LinkDown), or
// refuses l with ErrDuplicateLink. Called on l's linkReadLoop.
func (m *Manager) register(l *Link) (old, prev *Link, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if t := l.target; t != nil {
		t.attempting = false
		m.learnReplicaLocked(t, l.peer)
		m.broadcastLocked()
	}
	if !l.dialed && !m.preferred(l) && m.holdLocked(l.peer) {
		timer := time.NewTimer(m.holdMax())
		defer timer.Stop()
		for m.holdLocked(l.peer) && !m.closed {
			ch := m.changed
			m.mu.Unlock()
			expired := false
			select {
			case <-ch:
			case <-timer.C:
				expired = true
			}
			m.mu.Lock()
			if expired {
				break
			}
		}
	}
	if m.closed {
		return nil, nil, &linkError{reason: reasonShutdown, code: 1001, err: ErrShutdown, detail: "this hub is shutting down"}
	}
	if e := m.links[l.peer]; e != nil {
		switch {
		case e.dialed == l.dialed:
			// The same direction: the peer (or this hub) dials only while it has no
			// link, so the older one is stale (the peer restarted unnoticed).
			old = e
		case !l.dialed || m.preferred(e):
			// Inbound, l is not up at its dialer yet: the link that is stays. Dialed,
			// the peer accepted l while this hub accepted e: the link dialed by the
			// lower replica id wins, on both ends.
			return nil, nil, &linkError{reason: reasonDuplicate, code: 1000, err: ErrDuplicateLink,
				detail: "a link dialed by " + e.dialerID() + " is up", text: reasonDuplicate + " " + m.cfg.ReplicaID}
		default:
			old = e
		}
	}
	if !l.state.CompareAndSwap(int32(linkHandshake), int32(linkRegistered)) {
		return nil, nil, l.cause()
	}
	prev = m.latest[l.peer]
	m.links[l.peer] = l
	m.latest[l.peer] = l
	l.registered = true
	if t := l.target; t != nil {
		t.link = l
	}
	m.broadcastLocked()
	return old, prev, nil
}

// unregister removes l from the links (it is closing). Safe from any goroutine,
// also while l's reader is still in the handshake (it reads l.peer only once l was
// registered, under m.mu).
func (m *Manager) unregister(l *Link) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !l.registered {
		return
	}
	if m.links[l.peer] == l {
		delete(m.links, l.peer)
	}
	if t := l.target; t != nil && t.link == l {
		t.link = nil
	}
	m.broadcastLocked()
	m.updateGaugesLocked()
}

// linkUp records that l came up, calls LinkUp and then makes l visible (state up).
func (m *Manager) linkUp(l *Link) {
	m.mu.Lock()
	if m.seen[l.peer] {
		m.met.reconnects(l.peer).Inc()
	}
	m.seen[l.peer] = true
	if l.target != nil {
		m.dialSucceededLocked(l.target)
	}
	m.mu.Unlock()
	via := l.remote
	if l.target != nil {
		via = l.target.logURL
	}
	l.log.Info("mesh_link_up", "via", via, "peer_active", l.hello.Active, "peer_link_window", l.hello.LinkWindow)
	m.cfg.Handler.LinkUp(l)
	// Visible to Link and Links once the hub has handled LinkUp (unless it closed
	// meanwhile: then LinkDown follows).
	l.state.CompareAndSwap(int32(linkRegistered), int32(linkUp))
	m.mu.Lock()
	m.updateGaugesLocked()
	m.mu.Unlock()
}

// linkFinished records that l is done (LinkDown follows if it was up).
func (m *Manager) linkFinished(l *Link, wasUp bool, cause *linkError) {
	m.mu.Lock()
	delete(m.all, l)
	if l.registered && m.latest[l.peer] == l {
		delete(m.latest, l.peer)
	}
	if t := l.target; t != nil && t.attempting && t.pending == l {
		t.attempting = false
	}
	if t := l.target; t != nil && t.pending == l {
		t.pending = nil
	}
	peer := l.peer
	if peer == "" && l.target != nil {
		peer = l.target.peerLabel()
	}
	m.broadcastLocked()
	m.updateGaugesLocked()
	m.mu.Unlock()
	if cause.counts() {
		if peer != "" {
			m.met.linkErrors(peer).Inc()
		} else {
			m.met.acceptError(acceptHandshake)
		}
	}
	switch {
	case wasUp:
		level := slog.LevelWarn
		if !cause.counts() {
			level = slog.LevelInfo
		}
		l.log.Log(context.Background(), level, "mesh_link_down", "reason", cause.reason, "error", cause.detail,
			"up", time.Since(l.upAt).Round(time.Millisecond).String())
	case l.target == nil && cause.reason != reasonDuplicate:
		// An inbound link refused or failed before it was up; dial failures are
		// logged by their dialLoop.
		l.log.Warn("mesh_peer_refused", "remote", l.remote, "peer", l.peer, "reason", cause.reason, "error", cause.detail)
	}
}

// boundedCounter counts admissions up to a limit.
type boundedCounter struct {
	mu sync.Mutex
	n  int
}

func (c *boundedCounter) inc(limit int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n >= limit {
		return false
	}
	c.n++
	return true
}

func (c *boundedCounter) dec() {
	c.mu.Lock()
	c.n--
	c.mu.Unlock()
}
