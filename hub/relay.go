package hub

import (
	"net/netip"
	"time"

	"github.com/nowconnect/nowconnect/codec"
	"github.com/nowconnect/nowconnect/internal/bufpool"
	"github.com/nowconnect/nowconnect/internal/flow"
	"github.com/nowconnect/nowconnect/ring"
)

// relay is, on the hub that owns the agent, a stream another hub opened
// over the mesh: it rides the agent's tunnel lane like a client stream, but
// its "client" is the peer hub. It lives on the tunnel's loop and has two
// flow-controlled legs:
//
//	peer ──M_DATA──▶ toAgent ──DATA──▶ agent    (mesh leg mfc.Recv, tunnel leg fc.Send)
//	peer ◀──M_DATA── toPeer ◀──DATA── agent     (mesh leg mfc.Send, tunnel leg fc.Recv)
//
// Bytes wait in toAgent or toPeer only while the next leg has no credit,
// each queue bounded by the window of the leg that filled it. Credit runs
// end to end: a leg's stream credit is returned once the next leg's
// receiver returned credit for the bytes (its WINDOW), not when they were
// sent on, so a stalled client or target holds about one window per hub and
// its windows never grow in the burst before the stall showed; a quarter of
// the next leg's window is lent ahead, so a receiver that announces credit
// a quarter window at a time never leaves the sender waiting for good
// (flow.Chain). (The lane
// levels, the tunnel's and the link's, are returned as bytes leave this
// hub: they bound its buffers, not the stream's.) A FIN is passed on once
// the bytes before it went. Frames from the peer arrive on the link's
// reader goroutine and run here through the loop (fromLink).
type relay struct {
	streamBase // on the tunnel lane: cid, fc (the tunnel leg), lis, client, openAt

	// set at construction
	h         *Hub
	t         *lane
	pl        *peerLink
	mcid      uint32 // the stream's CID on the link
	agentID   string
	connector string
	epoch     uint64

	// owned by the tunnel's loop
	mfc        flow.Stream // the mesh leg
	toPeerCr   flow.Chain  // bytes sent to the peer: their tunnel-leg credit waits for its M_WINDOW (or is lent)
	toAgentCr  flow.Chain  // bytes sent to the agent: their mesh-leg credit waits for its WINDOW (or is lent)
	seq        uint64      // the last seq sent to the peer
	toAgent    ring.Queue
	toPeer     ring.Queue
	peerFin    bool // the peer sent M_FIN; FIN goes to the agent once toAgent is empty
	agentFin   bool // the agent sent FIN; M_FIN goes to the peer once toPeer is empty
	finAgent   bool // FIN sent to the agent
	finPeer    bool // M_FIN sent to the peer
	registered bool
	counted    bool
	hdr        [codec.MeshHeaderMax + 8]byte
}

// openRelay serves an M_OPEN from the peer: in active mode, for an agent
// this hub owns at the frame's epoch, on one of its local tunnels; else it
// refuses (one hop only). On the link's reader goroutine.
func (pl *peerLink) openRelay(fh codec.MeshHeader, p []byte) {
	h := pl.h
	o := h.owners
	agent, connector := string(fh.Agent), string(fh.Connector)
	if o == nil || o.Mode() != ModeActive {
		pl.rst(fh, codec.ReasonNotOwner)
		return
	}
	epoch, owned := o.epochOf(agent, fh.Epoch)
	switch {
	case !owned:
		pl.rst(fh, codec.ReasonNotOwner)
		return
	case fh.Epoch != epoch:
		h.met.epochMismatch.Inc()
		h.log.Warn("mesh_stale_epoch", "peer", pl.peer, "agent_id", agent, "epoch", fh.Epoch, "owned_epoch", epoch)
		pl.rst(fh, codec.ReasonStaleEpoch)
		return
	}
	t := h.router.pickAgent(connector, agent, pl.readLoop.Load())
	if t == nil {
		pl.rst(fh, codec.ReasonNotOwner)
		return
	}
	clientStr, _ := codec.ParseMeshOpen(p)
	client, _ := netip.ParseAddrPort(string(clientStr))
	r := &relay{h: h, t: t, pl: pl, mcid: fh.CID, agentID: agent, connector: connector, epoch: epoch, counted: true}
	r.lis = h.meshListener(connector)
	r.client = client
	pl.mu.Lock()
	if pl.down {
		pl.mu.Unlock()
		r.release()
		return
	}
	pl.relays[fh.CID] = r
	pl.mu.Unlock()
	if err := pl.run(t.loop, r.open); err != nil {
		pl.mu.Lock()
		delete(pl.relays, fh.CID)
		pl.mu.Unlock()
		r.release()
		pl.rst(fh, codec.ReasonAgentGone)
	}
}

// open registers the relay on the tunnel and sends OPEN to the agent. On
// the tunnel's loop.
func (r *relay) open() {
	if r.dead {
		return
	}
	if r.t.closed {
		r.kill(codec.ReasonAgentGone, false, true)
		return
	}
	r.openAt = time.Now()
	r.t.register(r, true)
	r.registered = true
	pl := r.pl
	r.mfc = flow.NewStream(pl.fc.Peer(), pl.fc.Local(), false)
	w := r.fc.Recv.Size()
	r.toPeer.Init(r.h.cfg.QueueDepth, w, outChunk(w, r.h.cfg.QueueDepth))
	mw := r.mfc.Recv.Size()
	r.toAgent.Init(r.h.cfg.QueueDepth, mw, outChunk(mw, r.h.cfg.QueueDepth))
	r.lis.met.connections.Inc()
	r.lis.met.active.Inc()
	r.t.out.sendOpen(r)
}

func (r *relay) base() *streamBase { return &r.streamBase }
func (r *relay) queued() int       { return r.toPeer.Frames() }
func (r *relay) tick(time.Time)    {}

// peerSend queues a control frame to the peer.
func (r *relay) peerSend(f []byte, err error) {
	if err == nil {
		err = r.pl.l.SendControl(f)
	}
	if err != nil && !r.dead {
		r.h.met.meshDrops.Inc()
		r.kill(codec.ReasonOverload, true, false)
	}
}

func (r *relay) peerHeader(t codec.MeshFrameType) ([]byte, error) {
	r.seq++
	return codec.AppendMeshHeader(r.hdr[:0], t, r.mcid, r.seq, r.epoch, r.agentID, r.connector)
}

// onFrame handles a frame from the agent. On the tunnel's loop.
func (r *relay) onFrame(ft codec.FrameType, p []byte, now time.Time) {
	switch ft {
	case codec.FrameOpenAck:
		if r.fc.OpenAck() != nil {
			r.kill(codec.ReasonProtocol, true, true)
			return
		}
		r.peerSend(r.peerHeader(codec.MeshFrameOpenAck))
		r.creditPeer(0, 0, now)
	case codec.FrameOpenErr:
		reason, msg, _ := codec.ParseReason(p)
		r.seq++
		r.peerSend(codec.AppendMeshReason(r.hdr[:0], codec.MeshFrameOpenErr, r.mcid, r.seq, r.epoch, r.agentID, r.connector, reason, string(msg)))
		r.end()
	case codec.FrameData:
		if err := r.fc.Data(len(p)); err != nil {
			r.t.released(len(p), now)
			r.kill(flow.ResetReason(err), true, true)
			return
		}
		r.lis.met.bytesA2C.Add(len(p))
		if r.toPeer.Empty() {
			p = p[r.sendPeer(p, now):]
		}
		if len(p) > 0 && r.toPeer.Push(p) != nil {
			r.kill(codec.ReasonWindowExceeded, true, true)
		}
	case codec.FrameFin:
		if r.fc.Fin() != nil {
			r.kill(codec.ReasonProtocol, true, true)
			return
		}
		r.agentFin = true
		r.flushPeer(now)
	case codec.FrameRst:
		reason, _, _ := codec.ParseReason(p)
		r.lis.met.rstRecv.Inc()
		r.kill(reason, false, true) // RST goes on to the peer
	case codec.FrameWindow:
		inc, err := codec.ParseWindow(p)
		if err == nil {
			err = r.fc.Window(inc)
		}
		if err != nil {
			r.kill(codec.ReasonProtocol, true, true)
			return
		}
		// The agent took bytes: the peer gets their credit (the WINDOWs of
		// an opened stream follow its OPEN_ACK, and so do ours).
		ret, loan := r.toAgentCr.Acked(int(inc), r.fc.Send.Avail())
		r.creditPeer(ret, loan, now)
		r.flushAgent(now)
	default:
		r.kill(codec.ReasonProtocol, true, true)
	}
}

// sendPeer sends as much of p to the peer as the mesh leg's credit allows
// and returns the tunnel credit for it; it returns how much it sent.
func (r *relay) sendPeer(p []byte, now time.Time) int {
	sent := 0
	for len(p) > 0 && !r.dead {
		n := r.pl.take(&r.mfc.Send, min(len(p), codec.MaxPayload))
		if n <= 0 {
			if r.mfc.Send.Avail() > 0 {
				r.pl.wait(r.t.loop, r, 1) // the link level is short
			}
			break
		}
		h, err := r.peerHeader(codec.MeshFrameData)
		if err == nil {
			err = r.pl.l.SendData(h, p[:n])
		}
		if err != nil {
			r.pl.refund(n)
			r.h.met.meshDrops.Inc()
			r.kill(codec.ReasonOverload, true, true)
			return sent
		}
		r.t.released(n, now)
		if loan := r.toPeerCr.Sent(n, r.mfc.Send.Avail()); loan > 0 {
			r.creditAgent(0, loan, now)
		}
		sent += n
		p = p[n:]
	}
	return sent
}

// flushPeer sends queued agent bytes to the peer, then a pending M_FIN.
func (r *relay) flushPeer(now time.Time) {
	for !r.toPeer.Empty() && !r.dead {
		b := r.toPeer.Peek(r.t.loop.Iov[:0], 1)[0]
		n := r.sendPeer(b, now)
		clear(r.t.loop.Iov[:1])
		r.toPeer.Discard(n)
		if n < len(b) {
			return
		}
	}
	if r.dead || !r.agentFin || r.finPeer {
		return
	}
	r.finPeer = true
	r.peerSend(r.peerHeader(codec.MeshFrameFin))
	r.maybeDone()
}

// fromLink hands a frame from the peer to the relay's loop, p copied; when
// the link is read there (meshread.go), it handles it at once. On the
// link's reading.
func (r *relay) fromLink(t codec.MeshFrameType, p []byte) {
	if r.pl.readLoop.Load() == r.t.loop {
		r.onPeer(t, p, time.Now()) // the link is read on the tunnel's loop
		return
	}
	buf, cp := copyPayload(p)
	if err := r.t.loop.Execute(func() {
		defer bufpool.Put(buf)
		r.onPeer(t, cp, time.Now())
	}); err != nil {
		bufpool.Put(buf)
	}
}

// onPeer handles a frame from the peer. On the tunnel's loop.
func (r *relay) onPeer(t codec.MeshFrameType, p []byte, now time.Time) {
	if r.dead {
		if t == codec.MeshFrameData {
			r.pl.released(len(p), now)
		}
		return
	}
	switch t {
	case codec.MeshFrameData:
		if err := r.mfc.Data(len(p)); err != nil {
			r.pl.released(len(p), now)
			r.kill(flow.ResetReason(err), true, true)
			return
		}
		r.lis.met.bytesC2A.Add(len(p))
		if r.toAgent.Empty() {
			p = p[r.sendAgent(p, now):]
		}
		if len(p) > 0 && r.toAgent.Push(p) != nil {
			r.kill(codec.ReasonWindowExceeded, true, true)
		}
	case codec.MeshFrameFin:
		if r.mfc.Fin() != nil {
			r.kill(codec.ReasonProtocol, true, true)
			return
		}
		r.peerFin = true
		r.flushAgent(now)
	case codec.MeshFrameRst:
		r.lis.met.rstSent.Inc()
		if r.registered {
			r.t.out.sendRst(r.cid, codec.ReasonClientReset)
		}
		r.end()
	case codec.MeshFrameWindow:
		inc, err := codec.ParseWindow(p)
		if err == nil {
			err = r.mfc.Window(inc)
		}
		if err != nil {
			r.kill(codec.ReasonProtocol, true, true)
			return
		}
		// The peer's client took bytes: the agent gets their credit.
		ret, loan := r.toPeerCr.Acked(int(inc), r.mfc.Send.Avail())
		r.creditAgent(ret, loan, now)
		r.flushPeer(now)
	default:
		r.kill(codec.ReasonProtocol, true, true)
	}
}

// sendAgent sends as much of p to the agent as the tunnel leg's credit
// allows and returns the mesh credit for it; it returns how much it sent.
func (r *relay) sendAgent(p []byte, now time.Time) int {
	n := r.t.take(&r.fc.Send, len(p))
	if n <= 0 {
		if r.fc.Send.Avail() > 0 {
			r.t.waitCredit(r, r.h.met, 1) // the tunnel level is short
		}
		return 0
	}
	r.t.out.sendData(r.cid, p[:n])
	r.pl.released(n, now)
	if loan := r.toAgentCr.Sent(n, r.fc.Send.Avail()); loan > 0 {
		r.creditPeer(0, loan, now)
	}
	return n
}

// creditPeer returns mesh-leg credit to the peer: ret bytes the agent
// consumed, loan bytes lent ahead of it (flow.Chain).
func (r *relay) creditPeer(ret, loan int, now time.Time) {
	r.mfc.Recv.Lend(loan)
	if !r.fc.Acked() {
		return // lent for bytes pipelined behind the OPEN: announced after our M_OPEN_ACK
	}
	if inc := r.h.release(&r.mfc.Recv, &r.toAgent, ret, now, r.pathRTT()); inc > 0 && !r.dead {
		h, err := codec.AppendMeshWindow(r.hdr[:0], r.mcid, r.nextSeq(), r.epoch, r.agentID, r.connector, uint32(inc))
		r.peerSend(h, err)
	}
}

// creditAgent returns tunnel-leg credit to the agent: ret bytes the peer's
// client consumed, loan bytes lent ahead of it (flow.Chain).
func (r *relay) creditAgent(ret, loan int, now time.Time) {
	r.fc.Recv.Lend(loan)
	if inc := r.h.release(&r.fc.Recv, &r.toPeer, ret, now, r.pathRTT()); inc > 0 && !r.dead {
		r.t.out.sendWindow(r.cid, inc)
	}
}

// pathRTT is the round trip a relayed stream's credit takes: the tunnel's
// and the link's, by which its windows' growth is judged.
func (r *relay) pathRTT() time.Duration { return r.t.minRTT() + r.pl.rtt() }

func (r *relay) nextSeq() uint64 { r.seq++; return r.seq }

// flushAgent sends queued peer bytes to the agent, then a pending FIN.
func (r *relay) flushAgent(now time.Time) {
	for !r.toAgent.Empty() && !r.dead {
		b := r.toAgent.Peek(r.t.loop.Iov[:0], 1)[0]
		n := r.sendAgent(b, now)
		clear(r.t.loop.Iov[:1])
		r.toAgent.Discard(n)
		if n < len(b) {
			return
		}
	}
	if r.dead || !r.peerFin || r.finAgent {
		return
	}
	r.finAgent = true
	r.fc.SendFin()
	r.t.out.sendEmpty(codec.FrameFin, r.cid)
	r.maybeDone()
}

// flushPend resumes both legs once lane-level credit (the tunnel's or the
// link's) is back.
func (r *relay) flushPend() {
	now := time.Now()
	r.flushAgent(now)
	r.flushPeer(now)
}

// maybeDone ends the relay once both directions are complete.
func (r *relay) maybeDone() {
	if r.finAgent && r.finPeer && r.toAgent.Empty() && r.toPeer.Empty() {
		r.end()
	}
}

// kill aborts both legs: RST to the agent (tellAgent) and to the peer.
func (r *relay) kill(reason codec.Reason, tellAgent, _ bool) {
	if r.dead {
		return
	}
	if tellAgent && r.registered && !r.t.closed {
		r.lis.met.rstSent.Inc()
		r.t.out.sendRst(r.cid, reason)
	}
	r.seq++
	if f, err := codec.AppendMeshReason(r.hdr[:0], codec.MeshFrameRst, r.mcid, r.seq, r.epoch, r.agentID, r.connector, reason, ""); err == nil {
		_ = r.pl.l.SendControl(f)
	}
	if r.registered {
		r.lis.met.reset(reason)
	}
	r.end()
}

// end forgets the relay on both sides and gives its credit back.
func (r *relay) end() {
	if r.dead {
		return
	}
	r.dead = true
	now := time.Now()
	if r.registered {
		// The lane levels were returned for what left: what did not is
		// the stream's unreleased bytes less those sent on whose credit
		// is still held (flow.Chain.Held).
		if b := r.fc.Recv.Buffered() - r.toPeerCr.Held(); b > 0 && !r.t.closed {
			r.t.released(b, now)
		}
		delete(r.t.streams, r.cid)
		r.t.fc.Recent.Add(r.cid)
		r.lis.met.active.Dec()
	}
	if b := r.mfc.Recv.Buffered() - r.toAgentCr.Held(); b > 0 {
		r.pl.released(b, now)
	}
	r.toAgent.Reset()
	r.toPeer.Reset()
	r.pl.mu.Lock()
	if r.pl.relays[r.mcid] == r {
		delete(r.pl.relays, r.mcid)
		r.pl.recent.Add(r.mcid)
	}
	r.pl.mu.Unlock()
	r.release()
}

func (r *relay) release() {
	if !r.counted {
		return
	}
	r.counted = false
	r.t.active.Add(-1)
	if a := r.t.agent; a != nil {
		a.active.Add(-1)
	}
}
