package mesh

import (
	"strings"

	"github.com/VictoriaMetrics/metrics"

	"github.com/nowconnect/nowconnect/codec"
)

// Mesh link metrics (SPEC §6, mesh rows; names and labels are a public contract):
//
//	nowconnect_mesh_links{peer,state}                    gauge      1 for the state the peer is in: up, dialing, down
//	nowconnect_mesh_frames_total{dir,type}               counter    mesh frames sent (dir="out") and received ("in"), type = M_* name
//	nowconnect_mesh_rtt_seconds{peer}                    histogram  M_PING round trips
//	nowconnect_mesh_link_reconnects_total{peer}          counter    a link came up again after an earlier one to the peer went down
//	nowconnect_mesh_link_errors_total{peer}              counter    failed dials (TCP, TLS, upgrade, HELLO) and links ended by an error
//	nowconnect_mesh_send_queue_size{peer}                gauge      frames queued for the link's socket
//	nowconnect_mesh_inflight_bytes{peer}                 gauge      bytes of M_DATA queued for the link's socket
//	nowconnect_mesh_backpressure_drops_total{peer,reason} counter   sends refused: queue_full (SendQueueDepth), inflight (LinkWindow)
//	nowconnect_cid_dedup_dropped_total                   counter    duplicate stream frames dropped (seq not above the last)
//	nowconnect_mesh_accept_errors_total{reason}          counter    inbound /mesh connections refused before a link: tls, auth, upgrade, handshake, overload
//
// peer is the peer's replica id; for a configured peer URL whose hub has not answered
// yet, it is the URL's host[:port] until the first M_HELLO names the replica.
// nowconnect_mesh_links has a series for every peer this hub dials (Peers and
// discovered hubs) and for every peer with a link up; a peer that is no longer dialed
// loses its series once it has no link. Handles are created once per link or peer,
// never per frame.

// MetricFamilies returns the type and help text of every metric family the Manager
// exports, for the # HELP / # TYPE lines of an exposition (the hub's /metrics).
func MetricFamilies() map[string][2]string {
	return map[string][2]string{
		"nowconnect_mesh_links":                    {"gauge", "1 for the state of the mesh link to each peer: up, dialing, down."},
		"nowconnect_mesh_frames_total":             {"counter", "Mesh frames sent (dir=out) and received (dir=in), by type."},
		"nowconnect_mesh_rtt_seconds":              {"histogram", "Round trip of mesh M_PING/M_PONG, per peer."},
		"nowconnect_mesh_link_reconnects_total":    {"counter", "Mesh links to the peer that came up again after an earlier one went down."},
		"nowconnect_mesh_link_errors_total":        {"counter", "Failed mesh dials (TCP, TLS, upgrade, handshake) and mesh links ended by an error, per peer."},
		"nowconnect_mesh_send_queue_size":          {"gauge", "Frames queued for the mesh link's socket."},
		"nowconnect_mesh_inflight_bytes":           {"gauge", "Bytes of M_DATA queued for the mesh link's socket."},
		"nowconnect_mesh_backpressure_drops_total": {"counter", "Mesh frames refused because the link's queue was full: queue_full (send_queue_depth), inflight (per_link_max_inflight_bytes)."},
		"nowconnect_cid_dedup_dropped_total":       {"counter", "Duplicate mesh stream frames dropped (seq not above the last of their CID)."},
		"nowconnect_mesh_accept_errors_total":      {"counter", "Inbound /mesh connections refused before a link, by reason: tls, auth, upgrade, handshake, overload."},
	}
}

// rttBuckets cover a loopback round trip (0.1 ms) to a congested WAN (2 s); 0.02 is
// the seed's p95 objective.
var rttBuckets = []float64{
	0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2,
}

// Peer states of nowconnect_mesh_links.
const (
	peerUp      = "up"
	peerDialing = "dialing"
	peerDown    = "down"
)

var peerStates = [...]string{peerUp, peerDialing, peerDown}

// Reasons of nowconnect_mesh_backpressure_drops_total.
const (
	dropQueueFull = "queue_full"
	dropInflight  = "inflight"
)

// Reasons of nowconnect_mesh_accept_errors_total.
const (
	acceptTLS       = "tls"
	acceptAuth      = "auth"
	acceptUpgrade   = "upgrade"
	acceptHandshake = "handshake"
	acceptOverload  = "overload"
)

// meshMetrics holds the manager-wide handles.
type meshMetrics struct {
	// set at construction
	set          *metrics.Set
	frames       [2][16]*metrics.Counter // [dirIn/dirOut][type & 0x0f]
	dedupDropped *metrics.Counter
}

const (
	dirIn  = 0
	dirOut = 1
)

func newMeshMetrics(set *metrics.Set) *meshMetrics {
	mm := &meshMetrics{set: set, dedupDropped: set.GetOrCreateCounter(`nowconnect_cid_dedup_dropped_total`)}
	for t := codec.MeshFrameHello; t <= codec.MeshFramePong; t++ {
		if !t.Valid() {
			continue
		}
		mm.frames[dirIn][t&0x0f] = set.GetOrCreateCounter(`nowconnect_mesh_frames_total{dir="in",type="` + t.String() + `"}`)
		mm.frames[dirOut][t&0x0f] = set.GetOrCreateCounter(`nowconnect_mesh_frames_total{dir="out",type="` + t.String() + `"}`)
	}
	return mm
}

// frame counts one frame of type t (a valid mesh type) in direction dir.
func (mm *meshMetrics) frame(dir int, t codec.MeshFrameType) {
	if c := mm.frames[dir][t&0x0f]; c != nil {
		c.Inc()
	}
}

func (mm *meshMetrics) acceptError(reason string) {
	mm.set.GetOrCreateCounter(`nowconnect_mesh_accept_errors_total{reason="` + reason + `"}`).Inc()
}

// linkErrors returns the error counter of peer (dial failures happen before a link
// has handles of its own).
func (mm *meshMetrics) linkErrors(peer string) *metrics.Counter {
	return mm.set.GetOrCreateCounter(`nowconnect_mesh_link_errors_total{peer="` + labelValue(peer) + `"}`)
}

func (mm *meshMetrics) reconnects(peer string) *metrics.Counter {
	return mm.set.GetOrCreateCounter(`nowconnect_mesh_link_reconnects_total{peer="` + labelValue(peer) + `"}`)
}

// stateName is the series of nowconnect_mesh_links for peer and state.
func stateName(peer, state string) string {
	return `nowconnect_mesh_links{peer="` + labelValue(peer) + `",state="` + state + `"}`
}

// setPeerState sets the three state series of peer (1 for state, 0 for the others).
func (mm *meshMetrics) setPeerState(peer, state string) {
	for _, s := range peerStates {
		v := 0.0
		if s == state {
			v = 1
		}
		mm.set.GetOrCreateGauge(stateName(peer, s), nil).Set(v)
	}
}

// dropPeerState removes the state series of peer.
func (mm *meshMetrics) dropPeerState(peer string) {
	for _, s := range peerStates {
		mm.set.UnregisterMetric(stateName(peer, s))
	}
}

// linkMetrics are the per-link handles, created when the link's peer is known.
type linkMetrics struct {
	rtt           *metrics.PrometheusHistogram
	errors        *metrics.Counter
	queueSize     *metrics.Gauge
	inflight      *metrics.Gauge
	dropQueueFull *metrics.Counter
	dropInflight  *metrics.Counter
}

func (mm *meshMetrics) forLink(peer string) *linkMetrics {
	p := `{peer="` + labelValue(peer) + `"}`
	drop := `nowconnect_mesh_backpressure_drops_total{peer="` + labelValue(peer) + `",reason="`
	return &linkMetrics{
		rtt:           mm.set.GetOrCreatePrometheusHistogramExt(`nowconnect_mesh_rtt_seconds`+p, rttBuckets),
		errors:        mm.linkErrors(peer),
		queueSize:     mm.set.GetOrCreateGauge(`nowconnect_mesh_send_queue_size`+p, nil),
		inflight:      mm.set.GetOrCreateGauge(`nowconnect_mesh_inflight_bytes`+p, nil),
		dropQueueFull: mm.set.GetOrCreateCounter(drop + dropQueueFull + `"}`),
		dropInflight:  mm.set.GetOrCreateCounter(drop + dropInflight + `"}`),
	}
}

// labelValue escapes a label value for the exposition format. Replica ids are
// printable ASCII (CheckReplicaID) and URL hosts have no quotes, so this only guards.
func labelValue(s string) string {
	if !strings.ContainsAny(s, "\"\\\n") {
		return s
	}
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
	return r.Replace(s)
}
