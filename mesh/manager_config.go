package mesh

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/nowconnect/nowconnect/codec"
	"github.com/nowconnect/nowconnect/internal/auth"
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
