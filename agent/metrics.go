package agent

import (
	"strings"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/nowconnect/nowconnect/codec"
)

// Metrics of the agent (all optional: with a nil Config.Metrics every handle
// is nil and updates are no-ops). Handles are created once in New; nothing
// is looked up per frame.
//
//	nowconnect_agent_tunnel_up                            gauge    1 while a tunnel is up
//	nowconnect_agent_tunnels_up                           gauge    tunnels up (of Config.Tunnels)
//	nowconnect_agent_tunnel_rtt_seconds                   histogram tunnel ping round trip
//	nowconnect_agent_tunnel_closes_total{reason}          counter  tunnels closed, by codec reason name
//	nowconnect_agent_stream_resets_total{connector,reason} counter streams that ended without both FINs
//	nowconnect_agent_stream_window_growths_total          counter  stream receive windows doubled (auto-tuning)
//	nowconnect_agent_reconnects_total                     counter  reconnect attempts after a failure or drop
//	nowconnect_agent_tunnel_rotations_total               counter  tunnels replaced make-before-break (reload: connectors changed)
//	nowconnect_agent_streams_active                       gauge    live streams
//	nowconnect_agent_dial_seconds{connector}              histogram target dial latency (successes)
//	nowconnect_agent_dial_errors_total{connector,reason}  counter  reason dial_failed | dial_timeout
//	nowconnect_agent_bytes_total{direction,connector}     counter  c2a: hub→target, a2c: target→hub
//	nowconnect_agent_token_expiry_timestamp_seconds       gauge    exp of the token in use (unix s), 0: none
//	nowconnect_agent_log_suppressed_total{event}          counter  log lines dropped by rate limiting
type agentMetrics struct {
	set           *metrics.Set // nil without metrics
	reconnects    counter
	rotations     counter
	windowGrowths counter
	rttHist       *metrics.PrometheusHistogram // nil without metrics
	closes        [codec.NumReasons + 1]counter
}

// rttBuckets suit tunnel round trips from a LAN to an intercontinental WAN.
var rttBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}

func (m *agentMetrics) rtt(d time.Duration) {
	if m.rttHist != nil {
		m.rttHist.Update(d.Seconds())
	}
}

func (m *agentMetrics) tunnelClose(r codec.Reason) {
	if !r.Known() {
		r = codec.Reason(codec.NumReasons)
	}
	m.closes[r].inc()
}

// logSuppressed returns the suppressed-lines counter of a log event.
func (m *agentMetrics) logSuppressed(event string) counter {
	if m.set == nil {
		return counter{}
	}
	return counter{m.set.GetOrCreateCounter(`nowconnect_agent_log_suppressed_total{event="` + labelEscape(event) + `"}`)}
}

func newAgentMetrics(set *metrics.Set, a *Agent) agentMetrics {
	if set == nil {
		return agentMetrics{}
	}
	set.GetOrCreateGauge("nowconnect_agent_token_expiry_timestamp_seconds", func() float64 {
		return float64(a.tok.exp.Load())
	})
	set.GetOrCreateGauge("nowconnect_agent_tunnel_up", func() float64 {
		if a.Connected() {
			return 1
		}
		return 0
	})
	set.GetOrCreateGauge("nowconnect_agent_tunnels_up", func() float64 { return float64(a.TunnelsUp()) })
	set.GetOrCreateGauge("nowconnect_agent_streams_active", func() float64 {
		return float64(a.active.Load())
	})
	m := agentMetrics{
		set:           set,
		reconnects:    counter{set.GetOrCreateCounter("nowconnect_agent_reconnects_total")},
		rotations:     counter{set.GetOrCreateCounter("nowconnect_agent_tunnel_rotations_total")},
		windowGrowths: counter{set.GetOrCreateCounter("nowconnect_agent_stream_window_growths_total")},
		rttHist:       set.GetOrCreatePrometheusHistogramExt("nowconnect_agent_tunnel_rtt_seconds", rttBuckets),
	}
	for r := range codec.NumReasons + 1 {
		name := "unknown"
		if r < codec.NumReasons {
			name = codec.Reason(r).String()
		}
		m.closes[r] = counter{set.GetOrCreateCounter(`nowconnect_agent_tunnel_closes_total{reason="` + name + `"}`)}
	}
	return m
}

// connector is one served connector with its cached metric handles.
type connector struct {
	// set at construction
	name  string
	addr  string
	proxy bool // PROXY protocol v2 header in front of every target connection

	dialSeconds *metrics.PrometheusHistogram // nil without metrics
	dialFailed  counter
	dialTimeout counter
	bytesC2A    counter
	bytesA2C    counter

	set    *metrics.Set // nil without metrics
	label  string
	resets [codec.NumReasons + 1]atomic.Pointer[metrics.Counter] // created on first use
}

// reset counts a stream of this connector that ended without both FINs.
// Safe from any goroutine.
func (c *connector) reset(r codec.Reason) {
	if c.set == nil {
		return
	}
	i, name := int(r), r.String()
	if !r.Known() {
		i, name = codec.NumReasons, "unknown"
	}
	m := c.resets[i].Load()
	if m == nil {
		m = c.set.GetOrCreateCounter(`nowconnect_agent_stream_resets_total{` + c.label + `,reason="` + name + `"}`)
		c.resets[i].Store(m)
	}
	m.Inc()
}

func newConnector(set *metrics.Set, name, addr string) *connector {
	c := &connector{name: name, addr: addr}
	if set == nil {
		return c
	}
	l := `connector="` + labelEscape(name) + `"`
	c.set, c.label = set, l
	c.dialSeconds = set.GetOrCreatePrometheusHistogram("nowconnect_agent_dial_seconds{" + l + "}")
	c.dialFailed = counter{set.GetOrCreateCounter("nowconnect_agent_dial_errors_total{" + l +
		`,reason="` + codec.ReasonDialFailed.String() + `"}`)}
	c.dialTimeout = counter{set.GetOrCreateCounter("nowconnect_agent_dial_errors_total{" + l +
		`,reason="` + codec.ReasonDialTimeout.String() + `"}`)}
	c.bytesC2A = counter{set.GetOrCreateCounter(`nowconnect_agent_bytes_total{direction="c2a",` + l + "}")}
	c.bytesA2C = counter{set.GetOrCreateCounter(`nowconnect_agent_bytes_total{direction="a2c",` + l + "}")}
	return c
}

// counter is a nil-safe cached counter handle.
type counter struct{ c *metrics.Counter }

func (c counter) inc() {
	if c.c != nil {
		c.c.Inc()
	}
}

func (c counter) add(n int) {
	if c.c != nil {
		c.c.Add(n)
	}
}

// labelEscape escapes a Prometheus label value.
func labelEscape(s string) string {
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(s)
}
