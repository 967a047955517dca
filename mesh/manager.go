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
// Files: manager.go (lifecycle, API), manager_config.go (ManagerConfig),
// manager_links.go (the duplicate rule, links up and down), manager_dial.go (dial
// targets, redial backoff, discovery), manager_listen.go (the native listener),
// link.go (a link's handshake and reader), link_send.go (its lanes and writer),
// link_dedup.go (per-CID tables), link_buf.go (message buffers), link_metrics.go,
// meshauth.go (mesh tokens).
//
// Goroutines, all owned by the Manager and waited for by Close: meshDiscoveryLoop
// (one, with Discovery), dialLoop (one per dial target), meshListenLoop (with Listen),
// and per link linkReadLoop and linkWriteLoop (a plain TCP link may be read on the
// hub's event loop instead: link_readon.go). The native listener runs on goroutines
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

	"github.com/nowconnect/nowconnect/codec"
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
// it. Its methods are called on the link's reader goroutine (linkReadLoop), or, for
// Frame once Link.ReadOn moved the reading, on whatever reads the link now;
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
	unchecked       map[string]bool        // replicas admitted on a certificate no URL ties them to (logged once)
	changed         chan struct{}          // closed and replaced on every change of links or targets
}

// NewManager checks cfg and builds a Manager. It does not connect; Start does.
func NewManager(cfg ManagerConfig) (*Manager, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	m := &Manager{
		cfg:       cfg,
		log:       cfg.Logger,
		met:       newMeshMetrics(cfg.Metrics),
		base:      time.Now(),
		links:     map[string]*Link{},
		latest:    map[string]*Link{},
		all:       map[*Link]struct{}{},
		raw:       map[net.Conn]struct{}{},
		targets:   map[string]*dialTarget{},
		seen:      map[string]bool{},
		gauged:    map[string]bool{},
		unchecked: map[string]bool{},
		changed:   make(chan struct{}),
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
