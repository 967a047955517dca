// Package config loads and validates the configuration of the cloud hub
// (nowconnect cloud) and of the premise agent (nowconnect premise).
//
// TOML is the native format; a .yaml or .yml file with the same keys is
// accepted too, so an existing cloud.yaml runs unchanged. Loading starts from
// the defaults (DefaultHub, DefaultAgent), overlays the file (a key that is
// present replaces the default; a list replaces the whole default list) and
// validates the result. Every problem — unknown key, wrong type, bad value,
// missing referenced file — is reported in the same pass as an Errors value
// whose entries name the file, line and key. Durations are written "5s".
//
// Relative file paths in a config file (secrets, keys, certificates, the
// agent's token: the fields tagged path:"file") are resolved against the
// directory of that file, so a config and its secrets can move together:
// jwt_secret_file = "secret" in /etc/nowconnect/cloud.toml is
// /etc/nowconnect/secret, whatever the working directory. Paths from
// environment variables (NC_TOKEN_FILE, NC_CA_FILE) and flags are relative
// to the working directory, as on any command line.
package config

import "time"

// Hub is the configuration of the cloud hub.
type Hub struct {
	// Listen is the control port (HTTP health/metrics, /tunnel, /mesh) as
	// host:port. Default "0.0.0.0:8765".
	Listen string `toml:"listen"`
	// QueueDepthPerCID bounds the frames queued for one stream. Default 64,
	// range 1..65536.
	QueueDepthPerCID int `toml:"queue_depth_per_cid"`
	// AllowCIDRs is the client allowlist for listeners that set none: CIDRs or
	// bare IPs (a single host). Default empty: allow all.
	AllowCIDRs []string `toml:"allow_cidrs"`
	// Listeners are the TCP listeners that clients connect to. Default none.
	Listeners []Listener `toml:"listeners"`
	// Auth configures how agents' JWTs are verified.
	Auth Auth `toml:"auth"`
	// PDP configures the optional per-connection policy check.
	PDP PDP `toml:"pdp"`
	// Tunnel holds the hub⇄agent protocol windows and liveness timers.
	Tunnel Tunnel `toml:"tunnel"`
	// Timeouts holds stream and process timeouts.
	Timeouts Timeouts `toml:"timeouts"`
	// Log configures logging.
	Log Log `toml:"log"`
	// Engine tunes the network reactor.
	Engine Engine `toml:"engine"`
	// HA configures the multi-hub mesh and ownership registry.
	HA HA `toml:"ha"`
}

// Listener is one TCP listener of the hub; each accepted connection becomes a
// stream to an agent that serves Connector.
type Listener struct {
	// Name identifies the listener in logs and metrics. Required, unique.
	Name string `toml:"name"`
	// Bind is the host:port to listen on. Required. Several binds (listeners,
	// listen, ha.mesh.listen) may share a port on different specific
	// addresses (127.0.0.1:389 and 127.0.0.2:389); a wildcard address
	// (0.0.0.0, [::] or an empty host, which take the port on every address)
	// may not share its port with any other bind.
	Bind string `toml:"bind"`
	// Connector is the connector whose agents serve this listener. Required.
	Connector string `toml:"connector"`
	// AllowCIDRs is the client allowlist (CIDRs or bare IPs). Default unset:
	// inherit Hub.AllowCIDRs; an explicit empty list allows all.
	AllowCIDRs []string `toml:"allow_cidrs"`
	// PDP turns the policy check on or off for this listener. Default unset:
	// checked when pdp.url is set.
	PDP *bool `toml:"pdp"`
}

// Auth configures agent JWT verification. At least one key source
// (JWTSecretFile, PublicKeyFiles, JWKSURL) is needed to accept agents; the
// config does not require one so that a hub may take its key elsewhere.
type Auth struct {
	// JWTSecretFile holds the HS256 shared secret. Default none.
	JWTSecretFile string `toml:"jwt_secret_file" path:"file"`
	// PublicKeyFiles are PEM RSA or ECDSA public keys (RS256/ES256). Default
	// none.
	PublicKeyFiles []string `toml:"public_key_files" path:"file"`
	// JWKSURL is an http(s) URL of a JWKS document. Default none.
	JWKSURL string `toml:"jwks_url"`
	// Audience is the required "aud" claim. Default "nowconnect".
	Audience string `toml:"audience"`
	// Issuer is the required "iss" claim when set. Default none (not checked).
	Issuer string `toml:"issuer"`
	// Leeway is the clock skew allowed on exp/nbf/iat. Default 30s.
	Leeway Duration `toml:"leeway"`
}

// PDP configures the AuthZEN policy decision point asked per connection.
type PDP struct {
	// URL is the http(s) AuthZEN evaluation endpoint. Default empty: no PDP.
	URL string `toml:"url"`
	// Timeout bounds one PDP request. Default 2s.
	Timeout Duration `toml:"timeout"`
	// CacheTTL is how long a decision is cached. Default 60s; 0s disables
	// caching.
	CacheTTL Duration `toml:"cache_ttl"`
	// CacheSize bounds the number of cached decisions. Default 10000; 0
	// disables caching.
	CacheSize int `toml:"cache_size"`
	// FailOpen allows connections when the PDP cannot be reached. Default
	// false (fail closed).
	FailOpen bool `toml:"fail_open"`
}

// Tunnel holds the tunnel protocol settings of the hub.
type Tunnel struct {
	// StreamWindow is the credit window every stream starts with, in bytes,
	// granted to agents (agent→hub; the agent grants its own). Default
	// 262144, range 16384..67108864.
	StreamWindow int `toml:"stream_window"`
	// MaxStreamWindow is the most a stream's window grows to while its
	// sender is limited by credit (protocol 2: auto-tuned windows fill a
	// WAN; a stalled or idle stream never grows). Default 16777216, range
	// StreamWindow..1073741824; equal to StreamWindow: fixed windows.
	MaxStreamWindow int `toml:"max_stream_window"`
	// TunnelWindow bounds the agent→hub bytes in flight over all the streams
	// of one tunnel (protocol 2), so a tunnel's memory is bounded whatever
	// its number of streams. Default 67108864, range
	// MaxStreamWindow..1073741824.
	TunnelWindow int `toml:"tunnel_window"`
	// MaxFramePayload is the largest DATA payload the hub sends, in bytes:
	// smaller frames let streams interleave more finely. Default 65536,
	// range 1024..65536.
	MaxFramePayload int `toml:"max_frame_payload"`
	// PingInterval is how often a tunnel is pinged. Default 2s.
	PingInterval Duration `toml:"ping_interval"`
	// PingTimeout closes a tunnel silent for this long: a frozen agent is
	// detected within about this. Default 6s, must be greater than
	// PingInterval.
	PingTimeout Duration `toml:"ping_timeout"`
	// HandshakeTimeout bounds the HELLO/HELLO_ACK exchange. Default 10s.
	HandshakeTimeout Duration `toml:"handshake_timeout"`
}

// Timeouts holds stream and process timeouts of the hub.
type Timeouts struct {
	// Open closes a client whose stream got neither OPEN_ACK nor OPEN_ERR
	// from its agent in this long (counted as
	// listener_errors_total{type="open_timeout"}). Default 5s.
	Open Duration `toml:"open"`
	// Idle closes a stream with no traffic either way for this long (checked
	// once a second; the client is reset and the agent gets RST(idle)).
	// Default 0s: never.
	Idle Duration `toml:"idle"`
	// ShutdownGrace is how long a stopping hub lets streams drain. Default 30s.
	ShutdownGrace Duration `toml:"shutdown_grace"`
	// HTTPRequest bounds reading one HTTP request on the control port (slow or
	// idle half requests are closed). Default 10s.
	HTTPRequest Duration `toml:"http_request"`
}

// Log configures logging.
type Log struct {
	// Level is debug, info, warn or error. Default "info".
	Level string `toml:"level"`
	// MaskClientAddr hides client addresses in logs. Default false.
	MaskClientAddr bool `toml:"mask_client_addr"`
}

// Engine tunes the gnet reactor.
type Engine struct {
	// EventLoops is the number of event loops. Default 0: one per CPU
	// available (GOMAXPROCS at start, which follows a container's CPU limit).
	EventLoops int `toml:"event_loops"`
	// ReadBufferBytes is the per-read buffer size. Default 65536, range
	// 4096..4194304.
	ReadBufferBytes int `toml:"read_buffer_bytes"`
	// SocketRecvBuffer is SO_RCVBUF in bytes. Default 0: kernel default.
	SocketRecvBuffer int `toml:"socket_recv_buffer"`
	// SocketSendBuffer is SO_SNDBUF in bytes. Default 0: kernel default.
	SocketSendBuffer int `toml:"socket_send_buffer"`
	// MaxConnections caps the client connections held at once; beyond it a
	// client is reset at accept and counted. Default 0: RLIMIT_NOFILE minus
	// a reserve of a quarter of it (64..1024) for the control port, agents
	// and the moments a stream needs a second descriptor, so running out of
	// descriptors never leaves the hub deaf.
	MaxConnections int `toml:"max_connections"`
}

// HA configures high availability across hubs.
type HA struct {
	// Enabled turns on the registry and the mesh. Default false.
	Enabled bool `toml:"enabled"`
	// Mode is off, shadow or active. Default "off".
	Mode string `toml:"mode"`
	// ReplicaID names this hub in the registry and mesh. Default none;
	// required when Enabled.
	ReplicaID string `toml:"replica_id"`
	// RedisURL is the registry (redis://, rediss:// or unix://). Default
	// empty: in-memory registry.
	RedisURL string `toml:"redis_url"`
	// HeartbeatInterval is how often ownership is renewed. Default 5s.
	HeartbeatInterval Duration `toml:"heartbeat_interval"`
	// OwnerTTL is how long ownership outlives the last heartbeat. Default 15s,
	// must be greater than HeartbeatInterval.
	OwnerTTL Duration `toml:"owner_ttl"`
	// Mesh configures hub-to-hub links.
	Mesh Mesh `toml:"mesh"`
}

// Mesh configures the hub-to-hub links.
type Mesh struct {
	// Listen is an extra host:port for /mesh. Default empty: the control
	// port serves /mesh.
	Listen string `toml:"listen"`
	// Peers are ws:// or wss:// URLs of peer hubs' /mesh. Default none.
	Peers []string `toml:"peers"`
	// RequireMTLS requires mutual TLS on mesh links; with peers, the TLS
	// files are then required. A peer's client certificate must then be
	// valid for the host of the URL this hub knows its replica by (a peers
	// URL, or its advertise_url in the registry). Default false.
	RequireMTLS bool `toml:"require_mtls"`
	// SendQueueDepth bounds the frames queued per link. Default 1000.
	SendQueueDepth int `toml:"send_queue_depth"`
	// PerLinkMaxInflightBytes bounds the bytes in flight per link. Default
	// 8388608.
	PerLinkMaxInflightBytes int `toml:"per_link_max_inflight_bytes"`
	// ConnectBackoffMaxSec caps the reconnect backoff in seconds. Default 30.
	ConnectBackoffMaxSec int `toml:"connect_backoff_max_sec"`
	// SecretFile holds a shared secret (at least 32 bytes) from which hubs
	// mint and verify short-lived mesh tokens: how peers prove they are
	// hubs behind an ingress that terminates mTLS, and what /mesh on the
	// control port requires. Default none. Without it and without mTLS
	// (require_mtls with the tls files), the mesh is off: /mesh answers
	// 404 and no peer is dialed.
	SecretFile string `toml:"secret_file" path:"file"`
	// AdvertiseURL is this hub's /mesh URL as peers reach it, published in
	// the registry for discovery (peers = ha.mesh.peers ∪ the registry's
	// hubs). Default none: not published.
	AdvertiseURL string `toml:"advertise_url"`
	// TLS holds the mesh certificates.
	TLS TLS `toml:"tls"`
}

// TLS names PEM files for mutual TLS.
type TLS struct {
	// CABundle verifies peers. Default none.
	CABundle string `toml:"ca_bundle" path:"file"`
	// CertFile is this hub's certificate. Default none.
	CertFile string `toml:"cert_file" path:"file"`
	// KeyFile is this hub's private key. Default none.
	KeyFile string `toml:"key_file" path:"file"`
}

// DefaultHub returns a hub configuration with every default filled in.
func DefaultHub() *Hub {
	return &Hub{
		Listen:           "0.0.0.0:8765",
		QueueDepthPerCID: 64,
		Auth: Auth{
			Audience: "nowconnect",
			Leeway:   Duration(30 * time.Second),
		},
		PDP: PDP{
			Timeout:   Duration(2 * time.Second),
			CacheTTL:  Duration(60 * time.Second),
			CacheSize: 10000,
		},
		Tunnel: Tunnel{
			StreamWindow:     262144,
			MaxStreamWindow:  16 << 20,
			TunnelWindow:     64 << 20,
			MaxFramePayload:  65536,
			PingInterval:     Duration(2 * time.Second),
			PingTimeout:      Duration(6 * time.Second),
			HandshakeTimeout: Duration(10 * time.Second),
		},
		Timeouts: Timeouts{
			Open:          Duration(5 * time.Second),
			ShutdownGrace: Duration(30 * time.Second),
			HTTPRequest:   Duration(10 * time.Second),
		},
		Log:    Log{Level: "info"},
		Engine: Engine{ReadBufferBytes: 65536},
		HA: HA{
			Mode:              "off",
			HeartbeatInterval: Duration(5 * time.Second),
			OwnerTTL:          Duration(15 * time.Second),
			Mesh: Mesh{
				SendQueueDepth:          1000,
				PerLinkMaxInflightBytes: 8388608,
				ConnectBackoffMaxSec:    30,
			},
		},
	}
}

// EffectiveAllowCIDRs returns the allowlist that applies to the listener: its
// own when set (even empty), else the hub's. Empty means allow all.
func (l Listener) EffectiveAllowCIDRs(h *Hub) []string {
	if l.AllowCIDRs != nil {
		return l.AllowCIDRs
	}
	return h.AllowCIDRs
}

// UsePDP reports whether connections on the listener are checked by the PDP.
func (l Listener) UsePDP(h *Hub) bool {
	if h.PDP.URL == "" {
		return false
	}
	return l.PDP == nil || *l.PDP
}

// HasKeySource reports whether any agent token verification key is configured.
func (a Auth) HasKeySource() bool {
	return a.JWTSecretFile != "" || len(a.PublicKeyFiles) > 0 || a.JWKSURL != ""
}
