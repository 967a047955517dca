package hub

import (
	"sync/atomic"
	"time"

	"github.com/nowconnect/nowconnect/codec"
	"github.com/nowconnect/nowconnect/engine"
	"github.com/nowconnect/nowconnect/internal/flow"
)

// lane is what carries client streams to an agent, as far as the streams
// are concerned: the event loop they live on, the tunnel-level flow state
// they share, and their bookkeeping. How frames leave is its carrier's: a
// local agent's tunnel today, a mesh link to the hub that owns the agent
// (HA) next. router.pick returns a lane; a stream never sees which carrier
// it rides on (the derp PacketForwarder seam).
//
// Everything but the fields marked shared is owned by loop.
type lane struct {
	// set when the lane starts carrying streams (tunnel: at HELLO), then read-only
	loop       *engine.Loop
	out        carrier
	agentID    string      // for logs
	agent      *agentState // the agent's shared counters; nil for a lane that carries several agents
	parkBelow  int         // a stream parks when its credit falls under this
	resumeFrom int         // and unparks once it is back to this
	// qmax holds, per connector, the largest agent→client queue of the
	// lane's streams in buffers: written by the loop, read by scrapes.
	qmax map[string]*atomic.Int64

	// shared
	active  atomic.Int32 // streams picked for this lane and not yet ended
	suspect atomic.Bool  // owes an answer and silent: no new streams while another lane serves
	barred  atomic.Bool  // no new streams at all (HA: fenced out or superseded)

	// owned by the loop
	fc      flow.Tunnel
	closed  bool
	streams map[uint32]laneStream
	opening []laneStream // streams in OPEN order, until OPEN_ACK/OPEN_ERR (open timeout)
	waiting []laneStream // parked streams waiting for lane-level credit
	nextCID uint32
	cidStep uint32 // CIDs this side allocates: every cidStep-th from nextCID (mesh links split the space)

	// set with the lane: the mesh link whose lane this is (nil for a
	// tunnel); its link-level flow state is shared with the relays of the
	// link, which live on other loops, so it is the link's, under its lock
	link *peerLink
}

// carrier sends a lane's frames. Every method runs on the lane's loop; a
// send that fails closes the carrier (and with it the lane) synchronously,
// so callers re-check their state afterwards.
type carrier interface {
	// sendOpen announces a stream just registered on the lane.
	sendOpen(s laneStream)
	// sendData sends p as DATA for cid, in frames the carrier chooses.
	sendData(cid uint32, p []byte)
	// sendEmpty sends a frame without payload (FIN).
	sendEmpty(ft codec.FrameType, cid uint32)
	// sendWindow returns n bytes of credit for cid (0: the lane level).
	sendWindow(cid uint32, n int)
	// sendRst aborts cid with r.
	sendRst(cid uint32, r codec.Reason)
}

// newCID returns an unused stream id.
func (ln *lane) newCID() uint32 {
	step := max(ln.cidStep, 1)
	for {
		ln.nextCID += step
		if ln.nextCID == 0 {
			continue
		}
		if _, used := ln.streams[ln.nextCID]; !used {
			return ln.nextCID
		}
	}
}

// register gives s a CID and its flow state, and announces it.
func (ln *lane) register(s laneStream, opener bool) {
	b := s.base()
	b.cid = ln.newCID()
	ln.streams[b.cid] = s
	b.fc = ln.fc.NewStream(opener)
	if opener {
		ln.opening = append(ln.opening, s)
	}
}

// sendable returns how much a stream with credit c may send: the smaller of
// its credit and the lane's.
func (ln *lane) sendable(c *flow.Credit) int {
	if ln.link != nil {
		return ln.link.sendable(c)
	}
	return ln.fc.SendAvail(c)
}

// take reserves up to want bytes of a stream's credit c and of the lane's,
// and returns how many: the bytes are then the caller's to send.
func (ln *lane) take(c *flow.Credit, want int) int {
	if ln.link != nil {
		return ln.link.take(c, want)
	}
	n := min(want, ln.fc.SendAvail(c))
	if n <= 0 {
		return 0
	}
	ln.fc.Sent(c, n)
	return n
}

// minRTT is the round trip window growth is judged by.
func (ln *lane) minRTT() time.Duration {
	if ln.link != nil {
		return ln.link.rtt()
	}
	return ln.fc.RTT.Min()
}

// waitCredit parks s until lane-level credit returns: need bytes of it,
// for a lane whose credit other loops share (a mesh link).
func (ln *lane) waitCredit(s laneStream, m *hubMetrics, need int) {
	b := s.base()
	if b.waitingTunnel {
		return
	}
	b.waitingTunnel = true
	m.tunnelCreditWaits.Inc()
	if ln.link != nil {
		ln.link.wait(ln.loop, s, need)
		return
	}
	ln.waiting = append(ln.waiting, s)
}

// wakeWaiting lets the streams that waited for lane-level credit send.
func (ln *lane) wakeWaiting() {
	waiting := ln.waiting
	ln.waiting = nil
	for i, s := range waiting {
		waiting[i] = nil
		wake(s, ln.closed)
	}
	if ln.waiting == nil {
		ln.waiting = waiting[:0] // keep the array
	}
}

// wake lets one stream that waited for lane-level credit send. On its loop.
func wake(s laneStream, closed bool) {
	if b := s.base(); !b.dead && !closed {
		b.waitingTunnel = false
		s.flushPend()
	}
}

// released returns lane-level credit for n bytes that left the hub's
// buffers (written to a client, or dropped with a dead stream).
func (ln *lane) released(n int, now time.Time) {
	if ln.link != nil {
		ln.link.released(n, now)
		return
	}
	if inc := ln.fc.Recv.Release(n, now, ln.fc.RTT.Min()); inc > 0 {
		ln.out.sendWindow(0, inc)
	}
}

// expireOpens closes the streams whose OPEN got no answer in time. OPENs
// are in order, so only the head of the queue is ever due.
func (ln *lane) expireOpens(h *Hub, now time.Time) {
	i := 0
	for ; i < len(ln.opening) && !ln.closed; i++ {
		st := ln.opening[i]
		s := st.base()
		if s.dead || s.fc.Acked() {
			continue
		}
		if now.Sub(s.openAt) < h.cfg.OpenTimeout {
			break
		}
		s.lis.met.openTimeout.Inc()
		if n, ok := h.met.openTimeoutLog.Allow(time.Now()); ok {
			h.log.Warn("open_timeout", "connector", s.lis.Connector, "agent_id", ln.agentID, "cid", s.cid,
				"client", h.maskAddr(s.client), "timeout", h.cfg.OpenTimeout.String(), "suppressed", n)
		}
		st.kill(codec.ReasonOpenTimeout, true, false)
	}
	clear(ln.opening[:i])
	ln.opening = append(ln.opening[:0], ln.opening[i:]...)
}

// scan walks the streams (idle timeout, the inbound queue gauge).
func (ln *lane) scan(now time.Time) {
	for _, q := range ln.qmax {
		q.Store(0)
	}
	for _, s := range ln.streams {
		s.tick(now)
		if q := ln.qmax[s.base().lis.Connector]; q != nil && int64(s.queued()) > q.Load() {
			q.Store(int64(s.queued()))
		}
	}
}

// closeStreams ends every stream of a lane whose carrier is gone.
func (ln *lane) closeStreams() {
	ln.closed = true
	for _, s := range ln.streams {
		s.kill(codec.ReasonAgentGone, false, true)
	}
	clear(ln.opening)
	clear(ln.waiting)
	ln.opening, ln.waiting = nil, nil
}
