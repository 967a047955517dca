package mesh

import (
	"context"
	"errors"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// Registry metrics (SPEC §6 style, names are a public contract):
//
//	nowconnect_registry_up                 gauge      1 while healthy, else 0
//	nowconnect_registry_op_seconds{op}     histogram  duration of each operation, failed ones included
//	nowconnect_registry_errors_total{op}   counter    failed operations (ErrNotOwner and ErrOwnerGone are answers, not failures)
//	nowconnect_registry_notifications_total counter   ownership changes Watch delivered
//
// op is one of the names in opNames; "ping" is the Redis health check, "publish" the
// notification AddConnectors sends (Redis), "watch" a subscription that ended in a
// failure; those two have no duration histogram (a failed publish fails nothing, a
// subscription lasts). Handles are created once at construction.

// op indexes the per-operation metric handles.
type op int

const (
	opClaim op = iota
	opHeartbeat
	opRelease
	opOwner
	opAddConnectors
	opAgents
	opPublishHub
	opHubs
	opClearOwn
	opSweep
	opPing
	numTimedOps // the ops below have errors only
	opPublish   = numTimedOps
	opWatch     = numTimedOps + 1
	numOps      = numTimedOps + 2
)

var opNames = [numOps]string{
	opClaim:         "claim",
	opHeartbeat:     "heartbeat",
	opRelease:       "release",
	opOwner:         "owner",
	opAddConnectors: "add_connectors",
	opAgents:        "agents",
	opPublishHub:    "publish_hub",
	opHubs:          "hubs",
	opClearOwn:      "clear_own",
	opSweep:         "sweep",
	opPing:          "ping",
	opPublish:       "publish",
	opWatch:         "watch",
}

func (o op) String() string { return opNames[o] }

// opBuckets cover a local Redis (tens of µs) up to OpTimeout and beyond.
var opBuckets = []float64{
	0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
}

type registryMetrics struct {
	// set at construction
	up            *metrics.Gauge
	seconds       [numTimedOps]*metrics.PrometheusHistogram
	errors        [numOps]*metrics.Counter
	notifications *metrics.Counter
}

func newRegistryMetrics(set *metrics.Set) *registryMetrics {
	m := &registryMetrics{up: set.GetOrCreateGauge(`nowconnect_registry_up`, nil),
		notifications: set.GetOrCreateCounter(`nowconnect_registry_notifications_total`)}
	for o := range numOps {
		l := `{op="` + opNames[o] + `"}`
		if o < numTimedOps {
			m.seconds[o] = set.GetOrCreatePrometheusHistogramExt(`nowconnect_registry_op_seconds`+l, opBuckets)
		}
		m.errors[o] = set.GetOrCreateCounter(`nowconnect_registry_errors_total` + l)
	}
	return m
}

// failed counts a failure of an op without a duration (publish, watch).
func (m *registryMetrics) failed(o op) { m.errors[o].Inc() }

// watchEnded counts a subscription that ended otherwise than by its context
// or Close; it is deferred with the address of Watch's named error.
func (m *registryMetrics) watchEnded(ctx context.Context, errp *error) {
	if err := *errp; ctx.Err() == nil && !errors.Is(err, ErrClosed) {
		m.failed(opWatch)
	}
}

// notified wraps a Watch callback so that every delivery is counted.
func (m *registryMetrics) notified(fn func(string)) func(string) {
	return func(agentID string) {
		m.notifications.Inc()
		fn(agentID)
	}
}

// done records one operation that started at start and ended with *errp; it is
// deferred with the address of the named error result.
func (m *registryMetrics) done(o op, start time.Time, errp *error) {
	m.seconds[o].UpdateDuration(start)
	if err := *errp; err != nil && !errors.Is(err, ErrNotOwner) && !errors.Is(err, ErrOwnerGone) {
		m.errors[o].Inc()
	}
}

func (m *registryMetrics) setUp(up bool) {
	if up {
		m.up.Set(1)
	} else {
		m.up.Set(0)
	}
}
