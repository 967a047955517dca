package config

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"strconv"
	"strings"

	"github.com/nowconnect/nowconnect/internal/confdoc"
)

// Validate checks every field of a hub configuration (also one built in code)
// and returns all problems as Errors, or nil. Referenced files must exist and
// be readable.
func (h *Hub) Validate() error {
	r := &reporter{}
	validateHub(h, r)
	return r.result()
}

// Validate checks every field of an agent configuration and returns all
// problems as Errors, or nil. When Token is empty it reads TokenFile to
// report why.
func (a *Agent) Validate() error {
	r := &reporter{}
	validateAgent(a, r)
	return r.result()
}

func validateHub(h *Hub, r *reporter) {
	hostPort(r, "listen", h.Listen, true)
	intRange(r, "queue_depth_per_cid", h.QueueDepthPerCID, 1, 65536)
	cidrs(r, "allow_cidrs", h.AllowCIDRs)

	names := map[string]int{}
	var binds []boundAddr // everything the hub binds, for the overlap check
	if h.Listen != "" && checkHostPort(h.Listen, false) == nil {
		binds = append(binds, boundAddr{key: "listen", addr: h.Listen})
	}
	for i, l := range h.Listeners {
		k := confdoc.JoinIndex("listeners", i)
		if l.Name == "" {
			r.add(k+".name", "required")
		} else if j, dup := names[l.Name]; dup {
			r.add(k+".name", "duplicate listener name %q (also listeners[%d])", l.Name, j)
		} else {
			names[l.Name] = i
		}
		if hostPort(r, k+".bind", l.Bind, true) {
			binds = append(binds, boundAddr{key: k + ".bind", addr: l.Bind})
		}
		if l.Connector == "" {
			r.add(k+".connector", "required")
		}
		cidrs(r, k+".allow_cidrs", l.AllowCIDRs)
		if l.PDP != nil && *l.PDP && h.PDP.URL == "" {
			r.add(k+".pdp", "is true but pdp.url is not set")
		}
	}

	file(r, "auth.jwt_secret_file", h.Auth.JWTSecretFile)
	for i, f := range h.Auth.PublicKeyFiles {
		k := confdoc.JoinIndex("auth.public_key_files", i)
		if f == "" {
			r.add(k, "empty file name")
		} else {
			file(r, k, f)
		}
	}
	urlKey(r, "auth.jwks_url", h.Auth.JWKSURL, "http", "https")
	if h.Auth.Audience == "" {
		r.add("auth.audience", "required")
	}
	durMin(r, "auth.leeway", h.Auth.Leeway, false)

	urlKey(r, "pdp.url", h.PDP.URL, "http", "https")
	durMin(r, "pdp.timeout", h.PDP.Timeout, true)
	durMin(r, "pdp.cache_ttl", h.PDP.CacheTTL, false)
	intRange(r, "pdp.cache_size", h.PDP.CacheSize, 0, 10_000_000)

	t := h.Tunnel
	if intRange(r, "tunnel.stream_window", t.StreamWindow, 16384, 67108864) {
		if intRange(r, "tunnel.max_stream_window", t.MaxStreamWindow, 16384, 1<<30) && t.MaxStreamWindow < t.StreamWindow {
			r.add("tunnel.max_stream_window", "%d is smaller than tunnel.stream_window (%d)", t.MaxStreamWindow, t.StreamWindow)
		} else if intRange(r, "tunnel.tunnel_window", t.TunnelWindow, 16384, 1<<30) && t.TunnelWindow < t.MaxStreamWindow {
			r.add("tunnel.tunnel_window", "%d is smaller than tunnel.max_stream_window (%d)", t.TunnelWindow, t.MaxStreamWindow)
		}
	}
	intRange(r, "tunnel.max_frame_payload", t.MaxFramePayload, 1024, 65536)
	pingPair(r, "tunnel.", t.PingInterval, t.PingTimeout)
	durMin(r, "tunnel.handshake_timeout", t.HandshakeTimeout, true)

	durMin(r, "timeouts.open", h.Timeouts.Open, true)
	durMin(r, "timeouts.idle", h.Timeouts.Idle, false)
	durMin(r, "timeouts.shutdown_grace", h.Timeouts.ShutdownGrace, false)
	durMin(r, "timeouts.http_request", h.Timeouts.HTTPRequest, true)

	logLevel(r, "log.level", h.Log.Level)

	intRange(r, "engine.event_loops", h.Engine.EventLoops, 0, 4096)
	intRange(r, "engine.read_buffer_bytes", h.Engine.ReadBufferBytes, 4096, 4194304)
	intRange(r, "engine.socket_recv_buffer", h.Engine.SocketRecvBuffer, 0, 1<<30)
	intRange(r, "engine.socket_send_buffer", h.Engine.SocketSendBuffer, 0, 1<<30)
	intRange(r, "engine.max_connections", h.Engine.MaxConnections, 0, 1<<30)

	validateHA(&h.HA, r)
	if m := h.HA.Mesh.Listen; m != "" && checkHostPort(m, false) == nil {
		binds = append(binds, boundAddr{key: "ha.mesh.listen", addr: m})
	}
	checkOverlaps(r, binds)
}

func validateHA(ha *HA, r *reporter) {
	switch ha.Mode {
	case "off", "shadow", "active":
	default:
		r.add("ha.mode", "%q is not one of off, shadow, active", ha.Mode)
	}
	if !ha.Enabled && ha.Mode != "off" && ha.Mode != "" {
		r.add("ha.mode", "%q needs ha.enabled = true (it does nothing otherwise)", ha.Mode)
	}
	if ha.Enabled && ha.ReplicaID == "" {
		r.add("ha.replica_id", "required when ha.enabled is true")
	}
	urlKey(r, "ha.redis_url", ha.RedisURL, "redis", "rediss", "unix")
	durMin(r, "ha.heartbeat_interval", ha.HeartbeatInterval, true)
	if durMin(r, "ha.owner_ttl", ha.OwnerTTL, true) && ha.HeartbeatInterval > 0 && ha.OwnerTTL <= ha.HeartbeatInterval {
		r.add("ha.owner_ttl", "%v must be greater than ha.heartbeat_interval (%v)", ha.OwnerTTL, ha.HeartbeatInterval)
	}

	m := &ha.Mesh
	if m.Listen != "" {
		hostPort(r, "ha.mesh.listen", m.Listen, true)
	}
	for i, p := range m.Peers {
		urlKey(r, confdoc.JoinIndex("ha.mesh.peers", i), p, "ws", "wss")
		if p == "" {
			r.add(confdoc.JoinIndex("ha.mesh.peers", i), "empty URL")
		}
	}
	if m.SecretFile != "" {
		file(r, "ha.mesh.secret_file", m.SecretFile)
	}
	if m.AdvertiseURL != "" {
		urlKey(r, "ha.mesh.advertise_url", m.AdvertiseURL, "ws", "wss")
	}
	intRange(r, "ha.mesh.send_queue_depth", m.SendQueueDepth, 1, 1_000_000)
	intRange(r, "ha.mesh.per_link_max_inflight_bytes", m.PerLinkMaxInflightBytes, 65536, 1<<30)
	intRange(r, "ha.mesh.connect_backoff_max_sec", m.ConnectBackoffMaxSec, 1, 3600)
	tlsFiles := []struct{ key, path string }{
		{"ha.mesh.tls.ca_bundle", m.TLS.CABundle},
		{"ha.mesh.tls.cert_file", m.TLS.CertFile},
		{"ha.mesh.tls.key_file", m.TLS.KeyFile},
	}
	for _, f := range tlsFiles {
		switch {
		case f.path != "":
			file(r, f.key, f.path)
		case m.RequireMTLS && len(m.Peers) > 0:
			r.add(f.key, "required when ha.mesh.require_mtls is true and peers are set")
		}
	}
	if (m.TLS.CertFile == "") != (m.TLS.KeyFile == "") && !(m.RequireMTLS && len(m.Peers) > 0) {
		r.add("ha.mesh.tls", "cert_file and key_file go together")
	}
}

func validateAgent(a *Agent, r *reporter) {
	if len(a.CloudURLs) == 0 {
		r.add("cloud_urls", "required: at least one ws:// or wss:// URL (or NC_CLOUD_URL)")
	}
	for i, u := range a.CloudURLs {
		k := confdoc.JoinIndex("cloud_urls", i)
		if u == "" {
			r.add(k, "empty URL")
		}
		urlKey(r, k, u, "ws", "wss")
	}
	if a.AgentID == "" {
		r.add("agent_id", "required (or NC_AGENT_ID)")
	} else if strings.ContainsFunc(a.AgentID, func(c rune) bool { return c <= ' ' || c == 0x7f }) {
		r.add("agent_id", "%q contains spaces or control characters", a.AgentID)
	}
	if a.Token == "" {
		if a.TokenFile == "" {
			r.add("token_file", "required: the agent needs a token (token_file, NC_TOKEN or NC_TOKEN_FILE)")
		} else if _, err := readToken(a.TokenFile); err != nil {
			r.add("token_file", "%v", err)
		} else {
			r.add("token_file", "not read: load the config with LoadAgent or ApplyEnv")
		}
	}
	if len(a.Connectors) == 0 {
		r.add("connectors", "required: at least one connector (or NC_CONNECTORS)")
	}
	names := map[string]int{}
	for i, c := range a.Connectors {
		k := confdoc.JoinIndex("connectors", i)
		if c.Name == "" {
			r.add(k+".name", "required")
		} else if j, dup := names[c.Name]; dup {
			r.add(k+".name", "duplicate connector name %q (also connectors[%d])", c.Name, j)
		} else {
			names[c.Name] = i
		}
		if c.Target == "" {
			r.add(k+".target", "required")
		} else if err := checkHostPort(c.Target, true); err != nil {
			r.add(k+".target", "%v", err)
		}
		if c.ProxyProtocol != "" && c.ProxyProtocol != "v2" {
			r.add(k+".proxy_protocol", "unknown value %q (want \"v2\", or none)", c.ProxyProtocol)
		}
	}
	durMin(r, "dial_timeout", a.DialTimeout, true)
	file(r, "ca_file", a.CAFile)
	if durMin(r, "reconnect_min", a.ReconnectMin, true) && durMin(r, "reconnect_max", a.ReconnectMax, true) &&
		a.ReconnectMax < a.ReconnectMin {
		r.add("reconnect_max", "%v is less than reconnect_min (%v)", a.ReconnectMax, a.ReconnectMin)
	}
	if intRange(r, "stream_window", a.StreamWindow, 16384, 67108864) {
		if intRange(r, "max_stream_window", a.MaxStreamWindow, 16384, 1<<30) && a.MaxStreamWindow < a.StreamWindow {
			r.add("max_stream_window", "%d is smaller than stream_window (%d)", a.MaxStreamWindow, a.StreamWindow)
		} else if intRange(r, "tunnel_window", a.TunnelWindow, 16384, 1<<30) && a.TunnelWindow < a.MaxStreamWindow {
			r.add("tunnel_window", "%d is smaller than max_stream_window (%d)", a.TunnelWindow, a.MaxStreamWindow)
		}
	}
	if a.TargetSendBuffer != 0 {
		intRange(r, "target_send_buffer", a.TargetSendBuffer, 4096, 1<<30)
	}
	intRange(r, "tunnels", a.Tunnels, 1, 16)
	pingPair(r, "", a.PingInterval, a.PingTimeout)
	if a.MetricsListen != "" {
		hostPort(r, "metrics_listen", a.MetricsListen, true)
	}
	durMin(r, "shutdown_grace", a.ShutdownGrace, false)
	logLevel(r, "log.level", a.Log.Level)
}

// ParseCIDRs parses an allowlist: CIDRs ("10.0.0.0/8", "fd00::/8") or bare
// IPs ("10.1.2.3", "::1"), which become single-host prefixes (/32, /128).
// Prefixes are masked ("10.1.2.3/8" is 10.0.0.0/8). Compare client addresses
// after netip.Addr.Unmap. An empty list gives nil (allow all).
func ParseCIDRs(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for i, s := range list {
		p, err := parseCIDR(s)
		if err != nil {
			return nil, fmt.Errorf("entry %d: %w", i, err)
		}
		out = append(out, p)
	}
	return out, nil
}

func parseCIDR(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if strings.Contains(s, "%") {
		return netip.Prefix{}, fmt.Errorf("%q: zoned addresses are not allowed", s)
	}
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not a CIDR or IP address", s)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR or IP address", s)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// cidrs reports every entry of an allowlist that does not parse.
func cidrs(r *reporter, key string, list []string) {
	for i, s := range list {
		if _, err := parseCIDR(s); err != nil {
			r.add(confdoc.JoinIndex(key, i), "%v", err)
		}
	}
}

// hostPort reports a missing or malformed host:port; it returns true when the
// value is fine.
func hostPort(r *reporter, key, v string, required bool) bool {
	if v == "" {
		if required {
			r.add(key, "required: host:port")
		}
		return false
	}
	if err := checkHostPort(v, false); err != nil {
		r.add(key, "%v", err)
		return false
	}
	return true
}

func parsePort(s string) (int, error) {
	p, err := strconv.Atoi(s)
	if err != nil || p < 0 || p > 65535 {
		return 0, errors.New("bad port")
	}
	return p, nil
}

// intRange reports v outside lo..hi; it returns true when v is in range.
func intRange(r *reporter, key string, v, lo, hi int) bool {
	if v < lo || v > hi {
		r.add(key, "%d is out of range %d..%d", v, lo, hi)
		return false
	}
	return true
}

// durMin reports a negative duration, or a zero one when positive is set; it
// returns true when d is fine.
func durMin(r *reporter, key string, d Duration, positive bool) bool {
	switch {
	case d < 0:
		r.add(key, "%v is negative", d)
		return false
	case positive && d == 0:
		r.add(key, "must be greater than 0s")
		return false
	}
	return true
}

// pingPair checks ping_interval > 0 and ping_timeout > ping_interval.
func pingPair(r *reporter, prefix string, interval, timeout Duration) {
	if durMin(r, prefix+"ping_interval", interval, true) && durMin(r, prefix+"ping_timeout", timeout, true) &&
		timeout <= interval {
		r.add(prefix+"ping_timeout", "%v must be greater than %sping_interval (%v)", timeout, prefix, interval)
	}
}

func logLevel(r *reporter, key, v string) {
	switch v {
	case "debug", "info", "warn", "error":
	default:
		r.add(key, "%q is not one of debug, info, warn, error", v)
	}
}

// file reports a set path that is not a readable file.
func file(r *reporter, key, path string) {
	if path == "" {
		return
	}
	if err := checkFile(path); err != nil {
		r.add(key, "%v", err)
	}
}

// urlKey reports a set URL that does not parse or has another scheme.
func urlKey(r *reporter, key, v string, schemes ...string) {
	if v == "" {
		return
	}
	if err := checkURL(v, schemes...); err != nil {
		r.add(key, "%v", err)
	}
}

// checkURL checks that v is an absolute URL with one of the schemes and, but
// for unix://, a host.
func checkURL(v string, schemes ...string) error {
	u, err := url.Parse(v)
	if err != nil {
		return fmt.Errorf("%q is not a URL", v)
	}
	ok := false
	for _, s := range schemes {
		ok = ok || u.Scheme == s
	}
	if !ok {
		return fmt.Errorf("%q: scheme must be %s://", v, strings.Join(schemes, ":// or "))
	}
	if u.Host == "" && u.Scheme != "unix" {
		return fmt.Errorf("%q has no host", v)
	}
	return nil
}
