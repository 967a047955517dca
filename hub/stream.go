package hub

import (
	"errors"
	"io"
	"net/netip"
	"time"

	"github.com/panjf2000/gnet/v2"

	"github.com/nowconnect/nowconnect/codec"
	"github.com/nowconnect/nowconnect/engine"
	"github.com/nowconnect/nowconnect/ring"
)

// stream is one client connection carried over a tunnel. All of it is owned
// by the tunnel's loop (a client accepted elsewhere is migrated first).
//
// The client socket is read through gnet and written directly with writev
// on its descriptor, so we always know exactly which bytes the kernel took:
// nothing is lost when gnet closes or parks the connection. The descriptor
// is gnet's while the connection is attached, or our own dup while it is
// migrating, parked (client→agent credit exhausted: not read at all, so the
// client's kernel window closes), or read-closed (the client sent FIN and
// still receives the response).
type stream struct {
	// set at construction
	h          *Hub
	lis        *listener
	t          *tunnel
	client     netip.AddrPort
	start      time.Time
	parkBelow  int // park when credit falls under this
	resumeFrom int // unpark once credit reaches this

	// owned by the tunnel's loop
	cid        uint32
	c          gnet.Conn // attached connection, nil otherwise
	dup        int       // our descriptor while not attached, else -1
	parked     bool      // detached from gnet for backpressure
	unparking  bool      // enrolled again, OnOpen pending
	credit     int       // client→agent bytes we may still send
	pend       ring.Queue
	out        ring.Queue // agent→client bytes the socket has not taken
	unacked    int        // agent→client bytes written, not yet credited back
	draining   bool       // registered with the loop's drain poller
	drainStart time.Time  // when the queue last became non-empty
	readEOF    bool       // the client sent FIN; FIN sent to the agent
	finRecv    bool       // the agent sent FIN
	shut       bool       // we shut the client's write side
	opened     bool       // stream registered on the tunnel
	dead       bool
	lastAct    time.Time
}

// pendChunk is the buffer size of the client→agent overflow queue.
const pendChunk = 16 << 10

func newStream(h *Hub, l *listener, t *tunnel, client netip.AddrPort) *stream {
	s := &stream{h: h, lis: l, t: t, client: client, start: time.Now(), dup: -1}
	rb := h.cfg.ReadBufferBytes
	s.parkBelow = min(rb, max(t.window/4, 1))
	s.resumeFrom = max(s.parkBelow, t.window/2)
	return s
}

// fd is the descriptor to write the client's bytes to.
func (s *stream) fd() int {
	if s.c != nil {
		return s.c.Fd()
	}
	return s.dup
}

// OnOpen runs on the tunnel's loop for a client accepted there, migrated
// there, or unparked.
func (s *stream) OnOpen(c gnet.Conn) gnet.Action {
	if s.dup >= 0 {
		engine.CloseFD(s.dup, false) // gnet holds its own copy now
		s.dup = -1
	}
	if s.dead || s.t.closed {
		if !s.opened {
			s.t.active.Add(-1)
			s.dead = true
		}
		return gnet.Close
	}
	c.SetContext(s)
	s.c = c
	s.lastAct = time.Now()
	if s.unparking {
		s.unparking, s.parked = false, false
		if s.h.debug {
			s.h.log.Debug("stream unparked", "cid", s.cid, "credit", s.credit, "inbound", c.InboundBuffered())
		}
		return gnet.None
	}
	// A new stream.
	s.opened = true
	s.cid = s.t.newCID()
	s.t.streams[s.cid] = s
	s.credit = s.t.window
	// pend holds at most one read beyond credit (a read is at most the
	// read buffer); depth follows from the byte bound.
	pendMax := s.h.cfg.ReadBufferBytes + codec.MaxPayload
	s.pend.Init((pendMax+pendChunk-1)/pendChunk, pendMax, pendChunk)
	s.out.Init(s.h.cfg.QueueDepth, s.h.cfg.Window, max(16<<10, s.h.cfg.Window/s.h.cfg.QueueDepth))
	m := s.lis.met
	m.connections.Inc()
	m.active.Inc()
	if s.h.debug {
		s.h.log.Debug("connection open", "connector", s.lis.Connector, "cid", s.cid,
			"client", s.h.maskAddr(s.client), "agent_id", s.t.agentID)
	}
	b, err := codec.AppendOpen(s.t.ctl[:0], s.cid, s.lis.Connector, s.client.String())
	if err != nil {
		s.kill(codec.ReasonProtocol, false, true)
		return gnet.Close
	}
	s.t.write(b, nil)
	if s.dead {
		return gnet.Close
	}
	return gnet.None
}

// OnTraffic forwards what the client sent, within credit, zero-copy from
// gnet's buffer to the tunnel. When credit runs low it parks the client.
func (s *stream) OnTraffic(c gnet.Conn) gnet.Action {
	buf, _ := c.Peek(-1)
	n := len(buf)
	if s.dead || c != s.c {
		_, _ = c.Discard(n)
		return gnet.Close
	}
	s.lastAct = time.Now()
	send := min(n, s.credit)
	if s.pend.Len() > 0 {
		send = 0 // order: queued bytes go first
	}
	if send > 0 {
		s.credit -= send
		s.lis.met.bytesC2A.Add(send)
		s.t.sendData(s.cid, buf[:send])
		if s.dead {
			return gnet.Close
		}
	}
	if send < n {
		if err := s.pend.Push(buf[send:n]); err != nil {
			_, _ = c.Discard(n)
			s.kill(codec.ReasonOverload, true, true)
			return gnet.Close
		}
	}
	_, _ = c.Discard(n)
	if s.pend.Len() > 0 || s.credit < s.parkBelow {
		return s.park(c)
	}
	return gnet.None
}

// park detaches the client from gnet: nobody reads it until credit returns.
func (s *stream) park(c gnet.Conn) gnet.Action {
	fd, err := engine.Park(c)
	if err != nil {
		s.kill(codec.ReasonOverload, true, true)
		return gnet.Close
	}
	s.dup, s.c, s.parked = fd, nil, true
	s.h.met.parks.Inc()
	if s.h.debug {
		s.h.log.Debug("stream parked", "cid", s.cid, "credit", s.credit)
	}
	return gnet.Close
}

// unpark hands the parked socket back to gnet on this loop.
func (s *stream) unpark() {
	if !s.parked || s.unparking || s.readEOF {
		return
	}
	_, err := engine.Enroll(s.t.loop.EventLoop(), s.dup, s)
	if errors.Is(err, engine.ErrNotConnected) {
		s.readParked()
		return
	}
	if err != nil {
		s.h.log.Warn("unpark failed", "cid", s.cid, "err", err)
		s.kill(codec.ReasonOverload, true, true)
		return
	}
	s.unparking = true
	if s.h.debug {
		s.h.log.Debug("stream unparking", "cid", s.cid, "credit", s.credit)
	}
}

// OnClose runs when gnet closes the attached connection: on the client's
// FIN (half-close: keep a dup to write the rest), on an error, or after a
// park (ignored: c is no longer attached).
func (s *stream) OnClose(c gnet.Conn, err error) {
	if c != s.c || s.dead {
		return
	}
	s.c = nil
	if err == nil {
		// Closed by us or by the engine stopping.
		s.kill(codec.ReasonShutdown, true, true)
		return
	}
	if !errors.Is(err, io.EOF) {
		s.kill(codec.ReasonClientReset, true, true)
		return
	}
	s.clientEOF(c)
}

// clientEOF handles the client's FIN: FIN to the agent, and keep a
// descriptor to write the rest of the response unless it is all written.
// c is the gnet connection being closed, or nil when s.dup is already ours.
func (s *stream) clientEOF(c gnet.Conn) {
	s.readEOF = true
	if s.h.debug {
		s.h.log.Debug("client fin", "cid", s.cid, "shut", s.shut, "out", s.out.Len())
	}
	s.lis.met.finSent.Inc()
	s.t.sendEmpty(codec.FrameFin, s.cid)
	if s.dead {
		return
	}
	if s.shut {
		s.finish()
		return
	}
	if c == nil {
		return
	}
	fd, derr := c.Dup()
	if derr != nil {
		s.kill(codec.ReasonClientReset, true, true)
		return
	}
	s.dup = fd
}

// readParked reads a parked socket that gnet cannot adopt any more (both
// directions ended): its receive queue is all there is, so reading never
// blocks. It forwards what credit allows and handles the EOF.
func (s *stream) readParked() {
	buf := s.t.loop.ReadBuf
	for !s.dead && s.parked && s.credit > 0 {
		n, err := engine.ReadFD(s.dup, buf[:min(len(buf), s.credit)])
		switch {
		case n > 0:
			s.credit -= n
			s.lis.met.bytesC2A.Add(n)
			s.t.sendData(s.cid, buf[:n])
		case err == nil: // EOF
			s.parked = false
			s.clientEOF(nil)
			return
		case errors.Is(err, engine.ErrWouldBlock):
			return
		default:
			s.kill(codec.ReasonClientReset, true, true)
			return
		}
	}
}

// onFrame handles a frame from the agent for this stream.
func (s *stream) onFrame(ft codec.FrameType, p []byte) {
	switch ft {
	case codec.FrameData:
		s.onData(p)
	case codec.FrameWindow:
		inc, err := codec.ParseWindow(p)
		if err != nil || s.credit+int(inc) > s.t.window {
			s.kill(codec.ReasonProtocol, true, true)
			return
		}
		s.credit += int(inc)
		s.flushPend()
	case codec.FrameFin:
		if s.finRecv {
			s.kill(codec.ReasonProtocol, true, true)
			return
		}
		s.finRecv = true
		s.lis.met.finRecv.Inc()
		s.maybeShut()
	case codec.FrameRst:
		s.lis.met.rstRecv.Inc()
		s.kill(codec.ReasonTargetReset, false, true)
	case codec.FrameOpenAck:
	case codec.FrameOpenErr:
		r, msg, _ := codec.ParseReason(p)
		s.lis.met.dialErrors.Inc()
		s.h.log.Warn("agent_dial_failed", "connector", s.lis.Connector, "cid", s.cid,
			"agent_id", s.t.agentID, "reason", r.String(), "detail", string(msg))
		s.kill(r, false, false)
	default:
		s.kill(codec.ReasonProtocol, true, true)
	}
}

// onData writes the agent's bytes to the client straight from the tunnel's
// buffer; what the socket does not take is copied once into the queue.
// When bytes already wait, new ones queue behind them and the queue is
// written at once as far as the socket takes it, so a queue that formed
// in a burst does not hold the stream to the drain poller's pace.
func (s *stream) onData(p []byte) {
	if s.finRecv || s.shut {
		s.kill(codec.ReasonProtocol, true, true)
		return
	}
	start := time.Now()
	s.lastAct = start
	s.lis.met.bytesA2C.Add(len(p))
	if s.out.Empty() {
		iov := append(s.t.loop.Iov[:0], p)
		n, err := s.t.loop.WriteFD(s.fd(), iov)
		clear(iov)
		if err != nil {
			s.lis.met.writeErr.Inc()
			s.kill(codec.ReasonClientReset, true, true)
			return
		}
		s.lis.met.writeSec.UpdateDuration(start)
		s.acked(n)
		p = p[n:]
		if s.dead || len(p) == 0 {
			return
		}
		if err := s.out.Push(p); err != nil {
			s.kill(codec.ReasonWindowExceeded, true, true)
			return
		}
	} else {
		if err := s.out.Push(p); err != nil {
			s.kill(codec.ReasonWindowExceeded, true, true)
			return
		}
		if _, err := s.flushOut(); err != nil || s.dead {
			return
		}
		if s.out.Empty() {
			s.drained()
			return
		}
	}
	if q := s.t.qmax[s.lis.Connector]; q != nil && int64(s.out.Frames()) > q.Load() {
		q.Store(int64(s.out.Frames())) // spikes show before the next tick
	}
	if s.drainStart.IsZero() {
		s.drainStart = time.Now()
	}
	if !s.draining {
		s.draining = true
		s.t.loop.WaitDrain(s)
	}
}

// flushOut writes queued bytes until the socket refuses more or the queue
// is empty, and reports whether the socket took anything. A write error
// kills the stream.
func (s *stream) flushOut() (progressed bool, err error) {
	for !s.out.Empty() && !s.dead {
		iov := s.out.Peek(s.t.loop.Iov[:0], 16)
		want := 0
		for _, b := range iov {
			want += len(b)
		}
		n, err := s.t.loop.WriteFD(s.fd(), iov)
		clear(iov)
		if err != nil {
			s.lis.met.writeErr.Inc()
			s.kill(codec.ReasonClientReset, true, true)
			return progressed, err
		}
		s.out.Discard(n)
		s.acked(n)
		progressed = progressed || n > 0
		if n < want {
			break // the socket is full
		}
	}
	return progressed, nil
}

// drained records how long the queue took to empty and half-closes if the
// agent's FIN waits. The poller keeps its registration (draining) until its
// own next poll finds the queue empty.
func (s *stream) drained() {
	if !s.drainStart.IsZero() {
		s.lis.met.drainSec.UpdateDuration(s.drainStart)
		s.drainStart = time.Time{}
	}
	s.maybeShut()
}

// Drain writes queued bytes as the client's socket takes them. It runs on
// the loop's drain poller.
func (s *stream) Drain(time.Time) (done, progressed bool) {
	if s.dead {
		s.draining = false
		return true, false
	}
	progressed, err := s.flushOut()
	if err != nil || s.dead {
		s.draining = false
		return true, progressed
	}
	if !s.out.Empty() {
		return false, progressed
	}
	s.drained()
	s.draining = false
	return true, progressed
}

// acked counts bytes the client's socket took and returns credit to the
// agent in batches of a quarter window.
func (s *stream) acked(n int) {
	s.unacked += n
	if s.unacked >= s.h.cfg.Window/4 {
		s.t.sendWindow(s.cid, s.unacked)
		s.unacked = 0
	}
}

// flushPend sends queued client bytes as credit allows, and unparks the
// client once enough credit is back.
func (s *stream) flushPend() {
	for s.pend.Len() > 0 && s.credit > 0 && !s.dead {
		iov := s.pend.Peek(s.t.loop.Iov[:0], 1)
		b := iov[0][:min(len(iov[0]), s.credit)]
		clear(iov)
		s.credit -= len(b)
		s.lis.met.bytesC2A.Add(len(b))
		s.t.sendData(s.cid, b)
		s.pend.Discard(len(b))
	}
	if !s.dead && s.parked && s.pend.Len() == 0 && s.credit >= s.resumeFrom {
		s.unpark()
	}
}

// maybeShut half-closes the client once the agent's FIN arrived and every
// byte before it was written.
func (s *stream) maybeShut() {
	if !s.finRecv || s.shut || !s.out.Empty() || s.dead {
		return
	}
	if err := engine.ShutdownWrite(s.fd()); err != nil {
		s.kill(codec.ReasonClientReset, true, true)
		return
	}
	s.shut = true
	if s.readEOF {
		s.finish()
	}
}

// tick enforces the idle timeout.
func (s *stream) tick(now time.Time) {
	if idle := s.h.cfg.IdleTimeout; idle > 0 && now.Sub(s.lastAct) > idle && !s.dead {
		s.kill(codec.ReasonIdle, true, true)
	}
}

// finish ends a stream whose both directions completed.
func (s *stream) finish() {
	s.end()
	if s.c != nil {
		_ = s.c.Close()
		s.c = nil
	}
	engine.CloseFD(s.dup, false)
	s.dup = -1
}

// kill aborts the stream: optionally tells the agent (RST) and resets the
// client (abort) or closes it cleanly.
func (s *stream) kill(r codec.Reason, tellAgent, abort bool) {
	if s.dead {
		return
	}
	if tellAgent && s.opened && !s.t.closed {
		s.lis.met.rstSent.Inc()
		s.t.sendRst(s.cid, r)
	}
	if s.h.debug {
		s.h.log.Debug("connection reset", "connector", s.lis.Connector, "cid", s.cid, "reason", r.String())
	}
	s.end()
	if s.c != nil {
		if abort {
			_ = s.c.SetLinger(0)
		}
		_ = s.c.Close()
		s.c = nil
	}
	engine.CloseFD(s.dup, abort)
	s.dup = -1
}

// end releases the stream's resources and counts it once.
func (s *stream) end() {
	if s.dead {
		return
	}
	s.dead = true
	s.out.Reset()
	s.pend.Reset()
	if s.opened {
		delete(s.t.streams, s.cid)
		s.lis.met.active.Dec()
		s.lis.met.duration.UpdateDuration(s.start)
	}
	s.t.active.Add(-1)
}
