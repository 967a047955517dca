package hub

import (
	"bytes"
	"fmt"
	"strings"
	"sync"

	"github.com/VictoriaMetrics/metrics"
	"github.com/valyala/bytebufferpool"
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
	set          *metrics.Set
	authFailures *metrics.Counter
	pingRTT      *metrics.PrometheusHistogram
	unknownCID   *metrics.Counter
	parks        *metrics.Counter

	// queueSize reports the largest per-CID agent→client queue of a
	// connector, in buffers; set by the hub before any connector exists.
	queueSize func(connector string) int64

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
}

func newHubMetrics(set *metrics.Set) *hubMetrics {
	return &hubMetrics{
		set:          set,
		authFailures: set.GetOrCreateCounter(`nowconnect_agent_auth_failures_total`),
		pingRTT:      set.GetOrCreatePrometheusHistogramExt(`nowconnect_tunnel_rtt_seconds`, latencyBuckets),
		unknownCID:   set.GetOrCreateCounter(`nowconnect_tunnel_unknown_cid_total`),
		parks:        set.GetOrCreateCounter(`nowconnect_stream_parks_total`),
		conns:        make(map[string]*connMetrics),
	}
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
	"nowconnect_listener_errors_total":       {"counter", "Listener and session errors by type (cidr, no_agent, session, write, dial, pdp)."},
	"nowconnect_pdp_decisions_total":         {"counter", "Policy decisions by result (allow, deny, error)."},
	"nowconnect_pdp_cache_hits_total":        {"counter", "Policy decisions answered from the cache."},
	"nowconnect_agents_connected":            {"gauge", "Agent tunnels serving the connector."},
	"nowconnect_agent_auth_failures_total":   {"counter", "Tunnel upgrades refused for a missing or bad token."},
	"nowconnect_tunnel_rtt_seconds":          {"histogram", "Round-trip time of tunnel pings."},
	"nowconnect_tunnel_unknown_cid_total":    {"counter", "Frames from agents for streams that do not exist (answered with RST)."},
	"nowconnect_stream_parks_total":          {"counter", "Times a client was parked (not read) because its stream ran out of credit."},
}

// renderBufs recycles exposition buffers between scrapes.
var renderBufs bytebufferpool.Pool

// renderMetrics runs off the event loop.
func (h *Hub) renderMetrics() []byte {
	b := renderBufs.Get()
	defer renderBufs.Put(b)
	h.cfg.Metrics.WritePrometheus(b)
	metrics.WriteProcessMetrics(b)
	return withMetadata(b.B)
}

// withMetadata adds # HELP and # TYPE before the first sample of each
// family. Families from the catalog get their type and text; Go runtime
// and process families get a generic help line.
func withMetadata(exp []byte) []byte {
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
		meta, ok := catalog[fam]
		if !ok {
			for _, suf := range []string{"_bucket", "_sum", "_count"} {
				if base, cut := strings.CutSuffix(fam, suf); cut {
					if m, isHist := catalog[base]; isHist && m[0] == "histogram" {
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
