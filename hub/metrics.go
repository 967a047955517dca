package hub

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/valyala/bytebufferpool"

	"github.com/nowconnect/nowconnect/codec"
	"github.com/nowconnect/nowconnect/internal/lograte"
)

// Metric names and labels are a public contract (SPEC §6): dashboards and
// alerts depend on them. Handles are created once per connector and cached;
// nothing on the data path looks a metric up.
//
// FIN and RST count tunnel frames: event="sent" is a frame the hub sent to
// the agent (the client half-closed or reset), event="recv" one it received
// from the agent (the target did).

// latencyBuckets suit socket write/drain and connection-level timings.
var latencyBuckets = []float64{
	0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
	0.1, 0.25, 0.5, 1, 2.5, 5, 10,
}

var durationBuckets = []float64{
	0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600,
}

type hubMetrics struct {
	// set at construction
	set               *metrics.Set
	authFailures      *metrics.Counter
	pingRTT           *metrics.PrometheusHistogram
	unknownCID        *metrics.Counter
	parks             *metrics.Counter
	tunnelCreditWaits *metrics.Counter
	windowGrowths     *metrics.Counter
	goAways           *metrics.Counter
	tunnelCloses      [codec.NumReasons + 1]*metrics.Counter // the last counts unknown reasons
	openTimeoutLog    *lograte.Limit
	epochMismatch     *metrics.Counter
	agentConflicts    *metrics.Counter
	haModeVal         atomic.Int32 // Mode, for nowconnect_ha_mode
	ownedAgents       func() int   // set with HA
	meshLinksUp       atomic.Int64
	meshDrops         *metrics.Counter // streams reset because their link refused a frame
	meshAuthFailures  *metrics.Counter

	// queueSize reports the largest per-CID agent→client queue of a
	// connector, in buffers; tunnels the number of tunnels. Both are set by
	// the hub before any scrape.
	queueSize func(connector string) int64
	tunnels   func() int

	mu    sync.Mutex // guards conns
	conns map[string]*connMetrics
}

// connMetrics are the per-connector handles.
type connMetrics struct {
	connections    *metrics.Counter
	active         *metrics.Gauge
	bytesC2A       *metrics.Counter
	bytesA2C       *metrics.Counter
	finSent        *metrics.Counter
	finRecv        *metrics.Counter
	rstSent        *metrics.Counter
	rstRecv        *metrics.Counter
	duration       *metrics.PrometheusHistogram
	writeSec       *metrics.PrometheusHistogram
	drainSec       *metrics.PrometheusHistogram
	agents         *metrics.Gauge
	cidrBlocked    *metrics.Counter
	noAgent        *metrics.Counter
	sessionErr     *metrics.Counter
	writeErr       *metrics.Counter
	dialErrors     *metrics.Counter
	pdpAllow       *metrics.Counter
	pdpDeny        *metrics.Counter
	pdpError       *metrics.Counter
	pdpListenerErr *metrics.Counter // listener_errors_total{type="pdp"}
	pdpCacheHits   *metrics.Counter
	acceptErr      *metrics.Counter // listener_errors_total{type="accept"}
	notOwner       *metrics.Counter // listener_errors_total{type="not_owner"}
	meshDown       *metrics.Counter // listener_errors_total{type="mesh_down"}
	openTimeout    *metrics.Counter // listener_errors_total{type="open_timeout"}

	// resets counts streams that ended without both FINs, by reason;
	// handles are created on first use.
	set    *metrics.Set
	label  string
	resets [codec.NumReasons + 1]atomic.Pointer[metrics.Counter]
}

// reset counts one stream reset for reason r.
func (c *connMetrics) reset(r codec.Reason) {
	i := int(r)
	if !r.Known() {
		i = codec.NumReasons
	}
	m := c.resets[i].Load()
	if m == nil {
		name := "unknown"
		if i < codec.NumReasons {
			name = r.String()
		}
		m = c.set.GetOrCreateCounter(`nowconnect_stream_resets_total{` + c.label + `,reason="` + name + `"}`)
		c.resets[i].Store(m)
	}
	m.Inc()
}

// tunnelClose counts a closed tunnel by reason.
func (m *hubMetrics) tunnelClose(r codec.Reason) {
	if !r.Known() {
		m.tunnelCloses[codec.NumReasons].Inc()
		return
	}
	m.tunnelCloses[r].Inc()
}

// logSuppressed returns the counter of log lines of event dropped by rate
// limiting.
func (m *hubMetrics) logSuppressed(event string) *metrics.Counter {
	return m.set.GetOrCreateCounter(`nowconnect_log_suppressed_total{event="` + event + `"}`)
}

func newHubMetrics(set *metrics.Set) *hubMetrics {
	m := &hubMetrics{
		set:               set,
		authFailures:      set.GetOrCreateCounter(`nowconnect_agent_auth_failures_total`),
		pingRTT:           set.GetOrCreatePrometheusHistogramExt(`nowconnect_tunnel_rtt_seconds`, latencyBuckets),
		unknownCID:        set.GetOrCreateCounter(`nowconnect_tunnel_unknown_cid_total`),
		parks:             set.GetOrCreateCounter(`nowconnect_stream_parks_total`),
		tunnelCreditWaits: set.GetOrCreateCounter(`nowconnect_tunnel_credit_waits_total`),
		windowGrowths:     set.GetOrCreateCounter(`nowconnect_stream_window_growths_total`),
		goAways:           set.GetOrCreateCounter(`nowconnect_tunnel_goaways_total`),
		conns:             make(map[string]*connMetrics),
	}
	for r := range codec.NumReasons {
		m.tunnelCloses[r] = set.GetOrCreateCounter(`nowconnect_tunnel_closes_total{reason="` + codec.Reason(r).String() + `"}`)
	}
	m.tunnelCloses[codec.NumReasons] = set.GetOrCreateCounter(`nowconnect_tunnel_closes_total{reason="unknown"}`)
	set.GetOrCreateGauge(`nowconnect_tunnels_connected`, func() float64 { return float64(m.tunnels()) })
	m.openTimeoutLog = lograte.New(10, time.Second, m.logSuppressed("open_timeout"))
	m.initHA(set)
	m.meshDrops = set.GetOrCreateCounter(`nowconnect_mesh_stream_resets_total`)
	m.meshAuthFailures = set.GetOrCreateCounter(`nowconnect_mesh_auth_failures_total`)
	set.GetOrCreateGauge(`nowconnect_mesh_peers_up`, func() float64 { return float64(m.meshLinksUp.Load()) })
	return m
}

// connector returns the cached handles of a connector, creating them once.
func (m *hubMetrics) connector(name string) *connMetrics {
	m.mu.Lock()
	defer m.mu.Unlock()
	if c := m.conns[name]; c != nil {
		return c
	}
	s := m.set
	l := fmt.Sprintf(`connector=%q`, name)
	c := &connMetrics{
		connections:    s.GetOrCreateCounter(`nowconnect_tcp_connections_total{` + l + `}`),
		active:         s.GetOrCreateGauge(`nowconnect_tcp_active_connections{`+l+`}`, nil),
		bytesC2A:       s.GetOrCreateCounter(`nowconnect_tcp_bytes_total{direction="c2a",` + l + `}`),
		bytesA2C:       s.GetOrCreateCounter(`nowconnect_tcp_bytes_total{direction="a2c",` + l + `}`),
		finSent:        s.GetOrCreateCounter(`nowconnect_tcp_fin_total{` + l + `,event="sent"}`),
		finRecv:        s.GetOrCreateCounter(`nowconnect_tcp_fin_total{` + l + `,event="recv"}`),
		rstSent:        s.GetOrCreateCounter(`nowconnect_tcp_rst_total{` + l + `,event="sent"}`),
		rstRecv:        s.GetOrCreateCounter(`nowconnect_tcp_rst_total{` + l + `,event="recv"}`),
		duration:       s.GetOrCreatePrometheusHistogramExt(`nowconnect_connection_duration_seconds{`+l+`}`, durationBuckets),
		writeSec:       s.GetOrCreatePrometheusHistogramExt(`nowconnect_write_drain_seconds{`+l+`,phase="write"}`, latencyBuckets),
		drainSec:       s.GetOrCreatePrometheusHistogramExt(`nowconnect_write_drain_seconds{`+l+`,phase="drain"}`, latencyBuckets),
		agents:         s.GetOrCreateGauge(`nowconnect_agents_connected{`+l+`}`, nil),
		cidrBlocked:    s.GetOrCreateCounter(`nowconnect_listener_errors_total{` + l + `,type="cidr"}`),
		noAgent:        s.GetOrCreateCounter(`nowconnect_listener_errors_total{` + l + `,type="no_agent"}`),
		sessionErr:     s.GetOrCreateCounter(`nowconnect_listener_errors_total{` + l + `,type="session"}`),
		writeErr:       s.GetOrCreateCounter(`nowconnect_listener_errors_total{` + l + `,type="write"}`),
		dialErrors:     s.GetOrCreateCounter(`nowconnect_listener_errors_total{` + l + `,type="dial"}`),
		pdpAllow:       s.GetOrCreateCounter(`nowconnect_pdp_decisions_total{` + l + `,result="allow"}`),
		pdpDeny:        s.GetOrCreateCounter(`nowconnect_pdp_decisions_total{` + l + `,result="deny"}`),
		pdpError:       s.GetOrCreateCounter(`nowconnect_pdp_decisions_total{` + l + `,result="error"}`),
		pdpListenerErr: s.GetOrCreateCounter(`nowconnect_listener_errors_total{` + l + `,type="pdp"}`),
		pdpCacheHits:   s.GetOrCreateCounter(`nowconnect_pdp_cache_hits_total{` + l + `}`),
		acceptErr:      s.GetOrCreateCounter(`nowconnect_listener_errors_total{` + l + `,type="accept"}`),
		notOwner:       s.GetOrCreateCounter(`nowconnect_listener_errors_total{` + l + `,type="not_owner"}`),
		meshDown:       s.GetOrCreateCounter(`nowconnect_listener_errors_total{` + l + `,type="mesh_down"}`),
		openTimeout:    s.GetOrCreateCounter(`nowconnect_listener_errors_total{` + l + `,type="open_timeout"}`),
		set:            s,
		label:          l,
	}
	s.GetOrCreateGauge(`nowconnect_inbound_queue_size{`+l+`}`, func() float64 {
		return float64(m.queueSize(name))
	})
	m.conns[name] = c
	return c
}

// catalog gives every family the hub exports its type and help text, for
// the # HELP / # TYPE lines of the exposition.
var catalog = map[string][2]string{
	"nowconnect_tcp_connections_total":       {"counter", "Client connections accepted and carried as streams."},
	"nowconnect_tcp_active_connections":      {"gauge", "Streams open now."},
	"nowconnect_tcp_bytes_total":             {"counter", "Bytes carried: c2a client to agent, a2c agent to client."},
	"nowconnect_tcp_fin_total":               {"counter", "FIN frames on the tunnel: sent to the agent (client half-closed) or received from it."},
	"nowconnect_tcp_rst_total":               {"counter", "RST frames on the tunnel: sent to the agent or received from it."},
	"nowconnect_connection_duration_seconds": {"histogram", "Lifetime of streams."},
	"nowconnect_write_drain_seconds":         {"histogram", "Socket write time (write) and time until a queued response drained into the client's socket (drain)."},
	"nowconnect_inbound_queue_size":          {"gauge", "Largest per-stream agent-to-client queue, in buffers (bounded by queue_depth_per_cid)."},
	"nowconnect_listener_errors_total":       {"counter", "Listener and session errors by type (cidr, no_agent, session, write, dial, pdp, accept, open_timeout)."},
	"nowconnect_pdp_decisions_total":         {"counter", "Policy decisions by result (allow, deny, error)."},
	"nowconnect_pdp_cache_hits_total":        {"counter", "Policy decisions answered from the cache."},
	"nowconnect_agents_connected":            {"gauge", "Agent tunnels serving the connector."},
	"nowconnect_agent_auth_failures_total":   {"counter", "Tunnel upgrades refused for a missing or bad token."},
	"nowconnect_tunnel_rtt_seconds":          {"histogram", "Round-trip time of tunnel pings."},
	"nowconnect_tunnel_unknown_cid_total":    {"counter", "Frames from agents for streams that do not exist (answered with RST)."},
	"nowconnect_stream_parks_total":          {"counter", "Times a client was parked (not read) because its stream ran out of credit."},
	"nowconnect_stream_resets_total":         {"counter", "Streams that ended without both FINs, by reason (codec reason names)."},
	"nowconnect_tunnel_closes_total":         {"counter", "Agent tunnels closed, by reason (codec reason names)."},
	"nowconnect_tunnels_connected":           {"gauge", "Agent tunnels up (an agent may hold several)."},
	"nowconnect_tunnel_goaways_total":        {"counter", "GOAWAY frames received: an agent retired a tunnel (it reloaded its connectors and opened a replacement)."},
	"nowconnect_tunnel_credit_waits_total":   {"counter", "Times a stream waited for tunnel-level credit (the tunnel window was full)."},
	"nowconnect_stream_window_growths_total": {"counter", "Times a stream's receive window doubled (auto-tuning)."},
	"nowconnect_log_suppressed_total":        {"counter", "Log lines dropped by rate limiting, by event."},
	"nowconnect_ha_mode":                     {"gauge", "1 for the HA mode the hub runs in (off, shadow, active)."},
	"nowconnect_owner_epoch_mismatch_total":  {"counter", "Ownership epochs found stale: a heartbeat fenced out, or a mesh frame with an old epoch."},
	"nowconnect_owned_agents":                {"gauge", "Agents this hub owns in the registry."},
	"nowconnect_agent_id_conflicts_total":    {"counter", "Times an agent id kept changing hands (clones on two premises) and was paused."},
	"nowconnect_registry_up":                 {"gauge", "1 while the ownership registry answers."},
	"nowconnect_mesh_stream_resets_total":    {"counter", "Mesh streams reset because their link could not take a frame (backpressure)."},
	"nowconnect_mesh_auth_failures_total":    {"counter", "/mesh upgrades refused for a missing or bad mesh token."},
	"nowconnect_mesh_peers_up":               {"gauge", "Peer hubs with a mesh link up."},
	"nowconnect_registry_op_seconds":         {"histogram", "Latency of registry operations, by op."},
	"nowconnect_registry_errors_total":       {"counter", "Failed registry operations, by op."},
	// counted by cmd's SIGHUP handling, on the hub's set
	"nowconnect_config_reloads_total":                         {"counter", "Configuration reloads (SIGHUP), by result (success, failure)."},
	"nowconnect_config_last_reload_success_timestamp_seconds": {"gauge", "Unix time of the last successful reload (0: none yet)."},
}

// renderBufs recycles exposition buffers between scrapes.
var renderBufs bytebufferpool.Pool

// renderMetrics runs off the event loop.
func (h *Hub) renderMetrics() []byte {
	b := renderBufs.Get()
	defer renderBufs.Put(b)
	h.cfg.Metrics.WritePrometheus(b)
	metrics.WriteProcessMetrics(b)
	return withMetadata(b.B, h.cfg.MetricFamilies)
}

// withMetadata adds # HELP and # TYPE before the first sample of each
// family. Families from the catalog get their type and text; Go runtime
// and process families get a generic help line.
func withMetadata(exp []byte, extra map[string][2]string) []byte {
	lookup := func(fam string) ([2]string, bool) {
		if m, ok := catalog[fam]; ok {
			return m, true
		}
		m, ok := extra[fam]
		return m, ok
	}
	out := make([]byte, 0, len(exp)+len(exp)/4)
	seen := make(map[string]bool, 64)
	for len(exp) > 0 {
		line := exp
		if i := bytes.IndexByte(exp, '\n'); i >= 0 {
			line, exp = exp[:i+1], exp[i+1:]
		} else {
			exp = nil
		}
		name := line
		if i := bytes.IndexAny(line, "{ "); i >= 0 {
			name = line[:i]
		}
		fam := string(name)
		meta, ok := lookup(fam)
		if !ok {
			for _, suf := range []string{"_bucket", "_sum", "_count"} {
				if base, cut := strings.CutSuffix(fam, suf); cut {
					if m, isHist := lookup(base); isHist && m[0] == "histogram" {
						fam, meta, ok = base, m, true
					}
				}
			}
		}
		if len(name) > 0 && name[0] != '#' && !seen[fam] {
			seen[fam] = true
			if ok {
				out = append(out, "# HELP "+fam+" "+meta[1]+"\n# TYPE "+fam+" "+meta[0]+"\n"...)
			} else {
				out = append(out, "# HELP "+fam+" Go runtime or process metric.\n"...)
			}
		}
		out = append(out, line...)
	}
	return out
}
