package agent

import (
	"strings"

	"github.com/VictoriaMetrics/metrics"

	"github.com/nowconnect/nowconnect/codec"
)

// Metrics of the agent (all optional: with a nil Config.Metrics every handle
// is nil and updates are no-ops). Handles are created once in New; nothing
// is looked up per frame.
//
//	nowconnect_agent_tunnel_up                            gauge    1 while the tunnel is up
//	nowconnect_agent_reconnects_total                     counter  reconnect attempts after a failure or drop
//	nowconnect_agent_streams_active                       gauge    live streams
//	nowconnect_agent_dial_seconds{connector}              histogram target dial latency (successes)
//	nowconnect_agent_dial_errors_total{connector,reason}  counter  reason dial_failed | dial_timeout
//	nowconnect_agent_bytes_total{direction,connector}     counter  c2a: hub→target, a2c: target→hub
type agentMetrics struct {
	reconnects counter
}

func newAgentMetrics(set *metrics.Set, a *Agent) agentMetrics {
	if set == nil {
		return agentMetrics{}
	}
	set.GetOrCreateGauge("nowconnect_agent_tunnel_up", func() float64 {
		if a.connected.Load() {
			return 1
		}
		return 0
	})
	set.GetOrCreateGauge("nowconnect_agent_streams_active", func() float64 {
		return float64(a.active.Load())
	})
	return agentMetrics{
		reconnects: counter{set.GetOrCreateCounter("nowconnect_agent_reconnects_total")},
	}
}

// connector is one served connector with its cached metric handles.
type connector struct {
	// set at construction
	name string
	addr string

	dialSeconds *metrics.PrometheusHistogram // nil without metrics
	dialFailed  counter
	dialTimeout counter
	bytesC2A    counter
	bytesA2C    counter
}

func newConnector(set *metrics.Set, name, addr string) *connector {
	c := &connector{name: name, addr: addr}
	if set == nil {
		return c
	}
	l := `connector="` + labelEscape(name) + `"`
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
