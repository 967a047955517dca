package mesh

import (
	"errors"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// Registry metrics (SPEC §6 style, names are a public contract):
//
//	nowconnect_registry_up                 gauge      1 while healthy, else 0
//	nowconnect_registry_op_seconds{op}     histogram  duration of each operation, failed ones included
//	nowconnect_registry_errors_total{op}   counter    failed operations (ErrNotOwner is an answer, not a failure)
//
// op is one of the names in opNames; "ping" is the Redis health check. Handles are
// created once at construction.

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
	numOps
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
}

func (o op) String() string { return opNames[o] }

// opBuckets cover a local Redis (tens of µs) up to OpTimeout and beyond.
var opBuckets = []float64{
	0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
}

type registryMetrics struct {
	// set at construction
	up      *metrics.Gauge
	seconds [numOps]*metrics.PrometheusHistogram
	errors  [numOps]*metrics.Counter
}

func newRegistryMetrics(set *metrics.Set) *registryMetrics {
	m := &registryMetrics{up: set.GetOrCreateGauge(`nowconnect_registry_up`, nil)}
	for o := range numOps {
		l := `{op="` + opNames[o] + `"}`
		m.seconds[o] = set.GetOrCreatePrometheusHistogramExt(`nowconnect_registry_op_seconds`+l, opBuckets)
		m.errors[o] = set.GetOrCreateCounter(`nowconnect_registry_errors_total` + l)
	}
	return m
}

// done records one operation that started at start and ended with *errp; it is
// deferred with the address of the named error result.
func (m *registryMetrics) done(o op, start time.Time, errp *error) {
	m.seconds[o].UpdateDuration(start)
	if err := *errp; err != nil && !errors.Is(err, ErrNotOwner) {
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
