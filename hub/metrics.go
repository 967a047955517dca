package hub

import (
	"fmt"
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

// renderBufs recycles exposition buffers between scrapes.
var renderBufs bytebufferpool.Pool

// renderMetrics runs off the event loop.
func (h *Hub) renderMetrics() []byte {
	b := renderBufs.Get()
	defer renderBufs.Put(b)
	h.cfg.Metrics.WritePrometheus(b)
	metrics.WriteProcessMetrics(b)
	return append([]byte(nil), b.B...)
}
