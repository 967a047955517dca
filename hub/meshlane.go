package hub

import (
	"time"

	"github.com/nowconnect/nowconnect/codec"
	"github.com/nowconnect/nowconnect/internal/bufpool"
	"github.com/nowconnect/nowconnect/internal/flow"
)

// meshLane is the origin lane of a link: the client streams this hub
// forwards to the peer, living on the lane's home loop. It is their
// carrier too: it turns their frames into mesh frames.
type meshLane struct {
	lane
	pl *peerLink

	// owned by the loop
	lastScan time.Time
	hdr      [codec.MeshHeaderMax + 8]byte
}

// Tick enforces the open timeout and walks the streams (idle timeout).
func (ml *meshLane) Tick(now time.Time) bool {
	if ml.closed {
		return false
	}
	ml.expireOpens(ml.pl.h, now)
	if now.Sub(ml.lastScan) >= streamScan {
		ml.lastScan = now
		ml.scan(now)
	}
	return !ml.closed
}

// streamOf returns the stream of cid with what it reaches, nil if gone.
func (ml *meshLane) streamOf(cid uint32) (*stream, *remote) {
	st, _ := ml.streams[cid].(*stream)
	if st == nil || st.via == nil {
		return nil, nil
	}
	return st, st.via
}

// send queues a control frame; a link that cannot take it resets the
// stream (its bytes cannot be carried whole any more).
func (ml *meshLane) send(s *stream, f []byte, err error) {
	if err == nil {
		err = ml.pl.l.SendControl(f)
	}
	if err != nil && s != nil && !s.dead {
		ml.pl.h.met.meshDrops.Inc()
		s.kill(codec.ReasonOverload, false, true)
	}
}

func (ml *meshLane) sendOpen(st laneStream) {
	s, r := ml.streamOf(st.base().cid)
	if s == nil {
		return
	}
	r.seq = 1
	f, err := codec.AppendMeshOpen(ml.hdr[:0], s.cid, r.epoch, r.agentID, s.lis.Connector, s.client.String())
	ml.send(s, f, err)
}

func (ml *meshLane) sendData(cid uint32, p []byte) {
	s, r := ml.streamOf(cid)
	if s == nil {
		return
	}
	for len(p) > 0 && !s.dead {
		n := min(len(p), codec.MaxPayload)
		r.seq++
		h, err := codec.AppendMeshHeader(ml.hdr[:0], codec.MeshFrameData, cid, r.seq, r.epoch, r.agentID, s.lis.Connector)
		if err == nil {
			err = ml.pl.l.SendData(h, p[:n])
		}
		if err != nil {
			ml.pl.refund(len(p)) // taken for bytes the link never carries
			ml.pl.h.met.meshDrops.Inc()
			s.kill(codec.ReasonOverload, false, true)
			return
		}
		p = p[n:]
	}
}

func (ml *meshLane) sendEmpty(ft codec.FrameType, cid uint32) {
	s, r := ml.streamOf(cid)
	if s == nil {
		return
	}
	r.seq++
	f, err := codec.AppendMeshHeader(ml.hdr[:0], meshType(ft), cid, r.seq, r.epoch, r.agentID, s.lis.Connector)
	ml.send(s, f, err)
}

func (ml *meshLane) sendWindow(cid uint32, n int) {
	if cid == 0 {
		return // the link level is the link's (peerLink.released)
	}
	s, r := ml.streamOf(cid)
	if s == nil {
		return
	}
	r.seq++
	f, err := codec.AppendMeshWindow(ml.hdr[:0], cid, r.seq, r.epoch, r.agentID, s.lis.Connector, uint32(n))
	ml.send(s, f, err)
}

func (ml *meshLane) sendRst(cid uint32, reason codec.Reason) {
	s, r := ml.streamOf(cid)
	if s == nil {
		return
	}
	r.seq++
	f, err := codec.AppendMeshReason(ml.hdr[:0], codec.MeshFrameRst, cid, r.seq, r.epoch, r.agentID, s.lis.Connector, reason, "")
	if err == nil {
		_ = ml.pl.l.SendControl(f) // the stream is ending anyway
	}
}

// copyPayload copies p into a pooled buffer of its size class (a small
// frame does not hold a 64 KiB buffer while it waits for its loop); the
// loop gives it back with bufpool.Put.
func copyPayload(p []byte) (*bufpool.Buf, []byte) {
	b := bufpool.Get(len(p))
	return b, b.B[:copy(b.B, p)]
}

// fromLink hands a frame from the peer for one of our streams to the home
// loop, p copied; when the link is read there (meshread.go), it handles it
// at once. On the link's reading.
func (ml *meshLane) fromLink(fh codec.MeshHeader, p []byte) {
	if ml.pl.readLoop.Load() == ml.loop {
		ml.dispatch(fh, p, frameReason(fh.Type, p)) // read on the home loop: no handoff, no copy
		return
	}
	// One pooled buffer holds the payload, then the agent and connector
	// names (for a reset or a stale epoch): no allocation per frame.
	buf := bufpool.Get(len(p) + len(fh.Agent) + len(fh.Connector))
	n := copy(buf.B, p)
	n += copy(buf.B[n:], fh.Agent)
	copy(buf.B[n:], fh.Connector)
	f := fh
	f.Agent = buf.B[len(p):n]
	f.Connector = buf.B[n : n+len(fh.Connector)]
	cp := buf.B[:len(p)]
	reason := frameReason(f.Type, p)
	err := ml.loop.Execute(func() {
		defer bufpool.Put(buf)
		ml.dispatch(f, cp, reason)
	})
	if err != nil {
		bufpool.Put(buf)
	}
}

// frameReason is the reason an M_RST or M_OPEN_ERR carries, none for others.
func frameReason(t codec.MeshFrameType, p []byte) codec.Reason {
	if t != codec.MeshFrameRst && t != codec.MeshFrameOpenErr {
		return codec.ReasonNone
	}
	r, _, _ := codec.ParseReason(p)
	return r
}

// dispatch runs a peer frame (header f, payload p) on the home loop.
func (ml *meshLane) dispatch(f codec.MeshHeader, p []byte, reason codec.Reason) {
	now := time.Now()
	cid, t := f.CID, f.Type
	st := ml.streams[cid]
	if st == nil {
		if t == codec.MeshFrameData {
			ml.pl.released(len(p), now)
		}
		// The late frames of a stream that ended are ignored; a frame for
		// a CID this hub never opened is reset (internal/flow's rule).
		if ml.fc.Recent.Unknown(cid, tunnelType(t)) == flow.Reset {
			ml.pl.h.met.unknownCID.Inc()
			ml.pl.rst(f, codec.ReasonUnknownCID)
		}
		return
	}
	if o := ml.pl.h.owners; o != nil {
		switch reason {
		case codec.ReasonStaleEpoch:
			// Our cached owner is outdated: read the registry again, once.
			o.invalidate(string(f.Agent))
		case codec.ReasonNotOwner:
			// The peer no longer owns the agent (it moved to another hub):
			// our cache is outdated too, or the peer is not serving it.
			o.refuted(string(f.Agent))
		}
	}
	st.onFrame(tunnelType(t), p, now)
}
