package hub

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nowconnect/nowconnect/codec"
	"github.com/nowconnect/nowconnect/engine"
	"github.com/nowconnect/nowconnect/internal/flow"
)

// The mesh (HA part 2): a client that lands on this hub (the origin, "B")
// while the agent's tunnel ends on another hub (the owner, "A") is carried
// over the hub-to-hub link to A, which relays it to the agent. The link's
// transport (dialing, TLS, mesh tokens, the duplicate rule, pings,
// deduplication, bounded send queues) is package mesh's; this file, with
// relay.go, is the stream semantics on top of it.
//
// On B, a forwarded client is an ordinary client stream (stream.go) whose
// lane is the link's origin lane: it lives on the link's home loop, and the
// origin carrier turns its frames into mesh frames (with the agent, its
// epoch and a per-stream seq). On A, a stream the peer opened is a relay
// (relay.go) on the agent's tunnel loop, with two flow-controlled legs. Both
// roles of a link share its link-level window (one per direction), which is
// why it lives in peerLink under a lock rather than on one loop.
//
// Forwarding is one hop: A serves an M_OPEN with a local agent whose claim
// has the frame's epoch, or refuses it (not_owner, stale_epoch). A stale
// epoch makes B forget its cached owner and read the registry again. A link
// that goes down resets its streams at once, on both hubs: clients see a
// close within the time it takes to notice (a TCP error at once, a silent
// peer within the transport's ping timeout), never a hang.

// MeshLink is one hub-to-hub link, as the hub needs it (mesh.Link
// implements it). Sends never block: they queue or fail.
type MeshLink interface {
	Peer() string
	PeerHello() codec.MeshHello
	Dialed() bool
	RTT() time.Duration
	SendControl(frame []byte) error
	SendData(header, payload []byte) error
	Close(err error)
}

// Mesh is what the hub needs of the mesh transport (mesh.Manager,
// through internal/haregistry).
type Mesh interface {
	// AcceptsPeers reports whether peers can authenticate at all (mTLS or
	// a mesh secret); without, /mesh answers 404.
	AcceptsPeers() bool
	// VerifyToken checks a peer's "Bearer <mesh token>".
	VerifyToken(authorization []byte) (peer string, err error)
	// AcceptConn runs a link on an upgraded /mesh connection.
	AcceptConn(c net.Conn, authz []byte)
}

// peerLink is the hub's side of one link.
type peerLink struct {
	// set at LinkUp
	h      *Hub
	l      MeshLink
	peer   string
	active bool // the peer forwards (its M_HELLO)
	origin *meshLane

	// the loop that reads the link (meshread.go), nil while its reader
	// goroutine does: frames for streams on it are handled at once
	readLoop atomic.Pointer[engine.Loop]

	mu sync.Mutex
	// guarded by mu
	fc      flow.Tunnel // the link level: Send is the peer's link window, Recv ours
	relays  map[uint32]*relay
	recent  flow.Recent // relays that ended lately (their late frames are ignored)
	waiters []waiter    // streams waiting for link-level credit
	down    bool
}

type waiter struct {
	loop *engine.Loop
	s    laneStream
}

// sendable returns how much a stream with credit c may send on the link
// now: an estimate (streams on other loops share the link's credit); take
// is what reserves it.
func (pl *peerLink) sendable(c *flow.Credit) int {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	return pl.fc.SendAvail(c)
}

// take reserves up to want bytes of a stream's credit c and of the link's,
// in one step, and returns how many: streams on several loops share the
// link's credit, so checking and spending apart would over-send. It is
// called before the bytes are queued on the link: the peer may grant them
// back before SendData even returns.
func (pl *peerLink) take(c *flow.Credit, want int) int {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	n := min(want, pl.fc.SendAvail(c))
	if n <= 0 {
		return 0
	}
	pl.fc.Sent(c, n)
	return n
}

// refund gives back link credit taken for n bytes the link refused to
// queue (the stream that took it is reset, so its own credit is moot).
func (pl *peerLink) refund(n int) {
	pl.mu.Lock()
	pl.fc.Send.Refund(n)
	pl.mu.Unlock()
}

func (pl *peerLink) rtt() time.Duration { return pl.l.RTT() }

// wait queues s (on loop) to be woken by the next link-level WINDOW, s
// needing need bytes of link credit to go on. If that much came back since
// s looked, it is woken at once instead: a WINDOW in between would
// otherwise find no waiter, and s would wait for one that never comes.
func (pl *peerLink) wait(loop *engine.Loop, s laneStream, need int) {
	pl.mu.Lock()
	if pl.fc.Send.Avail() < max(need, 1) {
		pl.waiters = append(pl.waiters, waiter{loop, s})
		pl.mu.Unlock()
		return
	}
	pl.mu.Unlock()
	_ = loop.Execute(func() { wake(s, false) })
}

// received counts n DATA bytes at the link level (any stream, any role).
func (pl *peerLink) received(n int) error {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	return pl.fc.Recv.Receive(n)
}

// released returns link-level credit for n bytes that left this hub.
func (pl *peerLink) released(n int, now time.Time) {
	if n <= 0 {
		return
	}
	pl.mu.Lock()
	inc := pl.fc.Recv.Release(n, now, pl.l.RTT())
	pl.mu.Unlock()
	if inc > 0 {
		var b [codec.MeshHeaderMin + 4]byte
		f, _ := codec.AppendMeshWindow(b[:0], 0, 0, 0, "", "", uint32(inc))
		_ = pl.l.SendControl(f)
	}
}

// linkWindow applies link-level credit and wakes its waiters on their loops.
func (pl *peerLink) linkWindow(inc uint32) error {
	pl.mu.Lock()
	err := pl.fc.Send.Grant(inc)
	ws := pl.waiters
	pl.waiters = nil
	pl.mu.Unlock()
	if err != nil {
		return err
	}
	for _, w := range ws {
		_ = w.loop.Execute(func() { wake(w.s, false) })
	}
	return nil
}

// mine reports whether cid is one this hub opened on the link: odd CIDs
// are the dialer's (codec/mesh.go).
func (pl *peerLink) mine(cid uint32) bool { return (cid%2 == 1) == pl.l.Dialed() }

// Errors of the mesh.
var (
	errMeshDown     = errors.New("mesh: link down")
	errMeshProtocol = errors.New("mesh: protocol error")
)

// peers is the hub's set of links, by peer.
type peers struct {
	mu    sync.Mutex
	links map[string]*peerLink // guarded by mu
	by    map[MeshLink]*peerLink
	rr    atomic.Uint32 // spreads forwarded streams over remote agents
}

func (p *peers) get(peer string) *peerLink {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.links[peer]
}

func (p *peers) of(l MeshLink) *peerLink {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.by[l]
}

func (p *peers) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.links)
}

// LinkUp starts using a link (mesh.Handler; on the link's reader).
func (h *Hub) LinkUp(l MeshLink) {
	hello := l.PeerHello()
	remote := flow.Limits{Stream: int(hello.Window), MaxStream: int(hello.MaxWindow), Tunnel: int(hello.LinkWindow)}
	local := h.meshLimits
	if err := remote.Validate(); err != nil {
		l.Close(fmt.Errorf("%w: M_HELLO windows: %w", errMeshProtocol, err))
		return
	}
	pl := &peerLink{h: h, l: l, peer: l.Peer(), active: hello.Active, relays: make(map[uint32]*relay)}
	pl.fc = flow.NewTunnel(remote, local)
	ml := &meshLane{pl: pl}
	ml.loop = h.srv.NextLoop()
	ml.out = ml
	ml.link = pl
	ml.agentID = "mesh:" + pl.peer
	ml.streams = make(map[uint32]laneStream)
	ml.fc = flow.NewTunnel(remote, local) // per-stream limits; the link level is pl.fc
	ml.cidStep = 2
	if l.Dialed() {
		ml.nextCID = ^uint32(0) // → 1, 3, 5…
	}
	ml.parkBelow = min(h.cfg.ReadBufferBytes, max(remote.Stream/4, 1))
	ml.resumeFrom = max(ml.parkBelow, remote.Stream/2)
	pl.origin = ml
	_ = ml.loop.Execute(func() { ml.loop.AddTicker(ml) })
	pl.readOnLoop()

	h.peers.mu.Lock()
	old := h.peers.links[pl.peer]
	h.peers.links[pl.peer] = pl
	h.peers.by[l] = pl
	h.peers.mu.Unlock()
	if old != nil {
		old.shutdown(errMeshDown)
	}
	h.met.meshLinksUp.Store(int64(h.peers.count()))
	// mesh_link_up is the transport's line (package mesh): one per link.
	if h.owners != nil {
		h.owners.poke() // a full resync: who owns what is read again
	}
}

// LinkDown stops using a link: every stream it carried is reset at once, on
// this hub (mesh.Handler; after the link's last Frame).
func (h *Hub) LinkDown(l MeshLink, err error) {
	h.peers.mu.Lock()
	pl := h.peers.by[l]
	delete(h.peers.by, l)
	if pl != nil && h.peers.links[pl.peer] == pl {
		delete(h.peers.links, pl.peer)
	}
	h.peers.mu.Unlock()
	h.met.meshLinksUp.Store(int64(h.peers.count()))
	if pl == nil {
		return
	}
	pl.shutdown(errMeshDown) // mesh_link_down is the transport's line

}

// shutdown resets the link's streams on their loops.
func (pl *peerLink) shutdown(error) {
	pl.mu.Lock()
	if pl.down {
		pl.mu.Unlock()
		return
	}
	pl.down = true
	relays := make([]*relay, 0, len(pl.relays))
	for _, r := range pl.relays {
		relays = append(relays, r)
	}
	pl.mu.Unlock()
	ml := pl.origin
	_ = ml.loop.Execute(func() {
		for _, s := range ml.streams {
			s.kill(codec.ReasonMeshDown, false, true)
		}
		ml.closed = true
	})
	for _, r := range relays {
		_ = r.t.loop.Execute(func() { r.kill(codec.ReasonMeshDown, true, true) })
	}
}

// Frame handles one stream frame from a link (mesh.Handler; on the link's
// reader goroutine or on the loop that reads it, which must not block).
func (h *Hub) Frame(l MeshLink, fh codec.MeshHeader, p []byte) {
	pl := h.peers.of(l)
	if pl == nil {
		return
	}
	if fh.Type == codec.MeshFrameWindow && fh.CID == 0 {
		inc, err := codec.ParseWindow(p)
		if err == nil {
			err = pl.linkWindow(inc)
		}
		if err != nil {
			l.Close(fmt.Errorf("%w: link WINDOW: %w", errMeshProtocol, err))
		}
		return
	}
	if fh.Type == codec.MeshFrameData {
		if err := pl.received(len(p)); err != nil {
			l.Close(fmt.Errorf("%w: %w", errMeshProtocol, err))
			return
		}
	}
	if pl.mine(fh.CID) {
		pl.origin.fromLink(fh, p)
		return
	}
	if fh.Type == codec.MeshFrameOpen {
		pl.openRelay(fh, p)
		return
	}
	pl.mu.Lock()
	r := pl.relays[fh.CID]
	verdict := flow.Ignore
	if r == nil {
		verdict = pl.recent.Unknown(fh.CID, tunnelType(fh.Type))
	}
	pl.mu.Unlock()
	if r == nil {
		if fh.Type == codec.MeshFrameData {
			pl.released(len(p), time.Now())
		}
		if verdict == flow.Reset {
			h.met.unknownCID.Inc()
			pl.rst(fh, codec.ReasonUnknownCID)
		}
		return
	}
	if fh.Epoch != r.epoch {
		h.met.epochMismatch.Inc()
		if fh.Type == codec.MeshFrameData {
			pl.released(len(p), time.Now())
		}
		_ = pl.run(r.t.loop, func() { r.kill(codec.ReasonStaleEpoch, true, true) })
		return
	}
	r.fromLink(fh.Type, p)
}

// run runs fn on loop for a frame of the link: at once when the link is read
// on that loop, else through it. On the link's reading.
func (pl *peerLink) run(loop *engine.Loop, fn func()) error {
	if pl.readLoop.Load() == loop {
		fn()
		return nil
	}
	return loop.Execute(fn)
}

// tunnelType is the tunnel frame type of a mesh stream frame type (the
// mesh's are the tunnel's with 0x40 set).
func tunnelType(t codec.MeshFrameType) codec.FrameType { return codec.FrameType(t &^ 0x40) }

// meshType is the mesh frame type of a tunnel frame type.
func meshType(t codec.FrameType) codec.MeshFrameType { return codec.MeshFrameType(t | 0x40) }

// rst answers a frame with M_RST(r), echoing its header.
func (pl *peerLink) rst(fh codec.MeshHeader, r codec.Reason) {
	var b [codec.MeshHeaderMax + 1]byte
	f, err := codec.AppendMeshReason(b[:0], codec.MeshFrameRst, fh.CID, fh.Seq+1, max(fh.Epoch, 1),
		string(fh.Agent), string(fh.Connector), r, "")
	if err == nil {
		_ = pl.l.SendControl(f)
	}
}

// pickRemote finds, for a client of connector that no local agent serves,
// an agent another hub owns and a link up to it: the origin lane of that
// link, counted, and what the stream reaches. nil when none.
func (h *Hub) pickRemote(connector string) (*lane, *remote, bool) {
	o := h.owners
	if o == nil {
		return nil, nil, false
	}
	owners := o.remoteOwners(connector)
	if len(owners) == 0 {
		return nil, nil, false
	}
	start := int(h.peers.rr.Add(1))
	for i := range owners {
		ow := owners[(start+i)%len(owners)]
		pl := h.peers.get(ow.ReplicaID)
		if pl == nil || !pl.active {
			continue
		}
		pl.mu.Lock()
		down := pl.down
		pl.mu.Unlock()
		if down {
			continue
		}
		ln := &pl.origin.lane
		ln.active.Add(1)
		return ln, &remote{agentID: ow.AgentID, epoch: ow.Epoch}, true
	}
	return nil, nil, true // owned elsewhere, but no link up to the owner
}

// meshRoute answers /mesh on the control port: a peer hub with a mesh
// token. Without a mesh that can authenticate peers, there is no /mesh.
func (h *Hub) meshRoute(req *engine.Request) engine.Response {
	m := h.mesh
	if m == nil || !m.AcceptsPeers() {
		return engine.Response{Status: 404, Body: []byte("not found\n")}
	}
	if r, refused := h.refuseUpgrade(req); refused {
		return r
	}
	authz := bytes.Clone(req.Authorization)
	remote := req.RemoteAddr.String()
	return engine.Response{Decide: func() engine.Response {
		peer, err := m.VerifyToken(authz)
		if err != nil {
			h.met.meshAuthFailures.Inc()
			h.log.Warn("mesh_auth_failed", "remote", remote, "err", err.Error())
			return engine.Response{Status: 401, Body: []byte("unauthorized\n")}
		}
		return engine.Response{Detach: func(c net.Conn) {
			h.log.Debug("mesh link accepted", "peer", peer, "remote", remote)
			m.AcceptConn(c, authz)
		}}
	}}
}

// meshReady reports whether, in active mode, every hub that owns agents of
// our connectors has a link up.
func (h *Hub) meshReady() (bool, string) {
	o := h.owners
	if o == nil || h.mesh == nil || o.Mode() != ModeActive {
		return true, ""
	}
	for _, replica := range o.remoteReplicas() {
		if h.peers.get(replica) == nil {
			return false, "no mesh link to " + replica
		}
	}
	return true, ""
}
