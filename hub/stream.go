package hub

import (
	"errors"
	"io"
	"net/netip"
	"time"

	"github.com/panjf2000/gnet/v2"

	"github.com/nowconnect/nowconnect/codec"
	"github.com/nowconnect/nowconnect/engine"
	"github.com/nowconnect/nowconnect/internal/flow"
	"github.com/nowconnect/nowconnect/ring"
)

// stream is one client connection carried over a tunnel. All of it is owned
// by the tunnel's loop (the client is handed to that loop when accepted).
//
// The client socket is read through gnet and written directly with writev
// on its descriptor, so we always know exactly which bytes the kernel took:
// nothing is lost when gnet closes or parks the connection. The descriptor
// is gnet's while the connection is attached, or our own dup while it is
// parked (client→agent credit exhausted: not read at all, so the client's
// kernel window closes), unparking, or read-closed (the client sent FIN and
// still receives the response).
//
// The flow rules (credit, windows and their growth, FIN legality) are
// internal/flow's: s.fc for the stream, t.fc for the tunnel level.
//
// States, as the fields tell them:
//
//	handed over ──OnOpen──▶ open (OPEN sent, awaiting OPEN_ACK: opening)
//	open ──credit low──▶ parked ──credit back──▶ unparking ──OnOpen──▶ open
//	open ──client FIN──▶ read-closed (FIN sent; the dup is written to)
//	any ──both FINs done / kill──▶ dead (end ran once; slot released)
type stream struct {
	streamBase // what its lane knows of it

	// set at construction
	h     *Hub
	t     *lane // what carries it to its agent (router.pick)
	start time.Time
	via   *remote // the agent on another hub this stream reaches over the mesh; nil for a local agent

	// owned by the tunnel's loop
	c          gnet.Conn // attached connection, nil otherwise
	dup        int       // our descriptor while not attached, else -1
	parked     bool      // detached from gnet for backpressure
	unparking  bool      // enrolled again, OnOpen pending
	pend       ring.Queue
	out        ring.Queue // agent→client bytes the socket has not taken
	draining   bool       // registered with the loop's drain poller
	drainStart time.Time  // when the queue last became non-empty
	shut       bool       // we shut the client's write side
	opened     bool       // stream registered on the tunnel
	counted    bool       // holds a slot (t.active, its agent's, h.conns) until release
	lastAct    time.Time
	up, down   int64 // bytes client→agent, agent→client
}

// streamBase is what a lane knows of every stream it carries: a client
// stream (this file) or, on the hub that owns the agent, a relay of a
// stream another hub opened over the mesh (relay.go). Owned by the lane's
// loop.
type streamBase struct {
	cid           uint32
	fc            flow.Stream
	openAt        time.Time
	dead          bool
	waitingTunnel bool // in the lane's waiting list: parked for lane-level credit
	lis           *listener
	client        netip.AddrPort
}

// laneStream is a stream a lane carries.
type laneStream interface {
	base() *streamBase
	// onFrame handles a frame from the lane's carrier for this stream.
	onFrame(ft codec.FrameType, p []byte, now time.Time)
	// kill aborts the stream (see stream.kill).
	kill(r codec.Reason, tellAgent, abort bool)
	// tick enforces the idle timeout.
	tick(now time.Time)
	// queued returns the buffers waiting for the client (the inbound queue gauge).
	queued() int
	// flushPend sends what waited for credit, now that lane-level credit is back.
	flushPend()
}

// remote is the agent on another hub that a mesh stream reaches.
type remote struct {
	agentID string
	epoch   uint64
	seq     uint64 // the last seq sent on the stream
}

func (s *stream) base() *streamBase { return &s.streamBase }
func (s *stream) queued() int       { return s.out.Frames() }

// pendChunk is the buffer size of the client→agent overflow queue.
const pendChunk = 16 << 10

// Chunks of the agent→client queue: a quarter of queue_depth_per_cid's
// share of the window, so that a queue of depth D holds a whole window in
// at most D buffers, from 16 KiB (a 256 KiB window at depth 64) up to
// maxOutChunk for grown windows.
const (
	minOutChunk = 16 << 10
	maxOutChunk = 1 << 20
)

// outChunk returns the buffer size that lets depth buffers hold window
// bytes, a power of two within [minOutChunk, maxOutChunk].
func outChunk(window, depth int) int {
	c := minOutChunk
	for c*depth < window && c < maxOutChunk {
		c *= 2
	}
	return c
}

// newStream returns a stream picked for t (router.pick counted it).
func newStream(h *Hub, l *listener, t *lane, client netip.AddrPort) *stream {
	return &stream{streamBase: streamBase{lis: l, client: client}, h: h, t: t, start: time.Now(), dup: -1, counted: true}
}

// release returns credit for n bytes that left the queue q filled under
// window w and returns the increment to announce (0: none). A window that
// grew grows q first (flow.Window.ReleaseGrow): for client streams and
// both legs of a relay.
func (h *Hub) release(w *flow.Window, q *ring.Queue, n int, now time.Time, rtt time.Duration) int {
	inc, grew := w.ReleaseGrow(n, now, rtt, func(size int) { q.Grow(size, outChunk(size, h.cfg.QueueDepth)) })
	if grew {
		h.met.windowGrowths.Inc()
	}
	return inc
}

// fd is the descriptor to write the client's bytes to.
func (s *stream) fd() int {
	if s.c != nil {
		return s.c.Fd()
	}
	return s.dup
}

// sendable returns the client→agent bytes the stream may send now: its own
// credit and the tunnel's.
func (s *stream) sendable() int { return s.t.sendable(&s.fc.Send) }

// OnOpen runs on the tunnel's loop for a client handed to it, or unparked.
func (s *stream) OnOpen(c gnet.Conn) gnet.Action {
	if s.dup >= 0 {
		engine.CloseFD(s.dup, false) // gnet holds its own copy now
		s.dup = -1
	}
	if s.dead || s.t.closed {
		if !s.opened {
			s.dead = true
			s.release()
		}
		return gnet.Close
	}
	c.SetContext(s)
	s.c = c
	s.lastAct = time.Now()
	if s.unparking {
		s.unparking, s.parked = false, false
		if s.h.debugOn() {
			s.h.log.Debug("stream unparked", "cid", s.cid, "credit", s.sendable(), "inbound", c.InboundBuffered())
		}
		return gnet.None
	}
	// A new stream.
	t := s.t
	s.opened = true
	s.openAt = s.lastAct
	t.register(s, true)
	// pend holds at most one read beyond credit (a read is at most the
	// read buffer); depth follows from the byte bound.
	pendMax := s.h.cfg.ReadBufferBytes + codec.MaxPayload
	s.pend.Init((pendMax+pendChunk-1)/pendChunk, pendMax, pendChunk)
	w := s.fc.Recv.Size()
	s.out.Init(s.h.cfg.QueueDepth, w, outChunk(w, s.h.cfg.QueueDepth))
	m := s.lis.met
	m.connections.Inc()
	m.active.Inc()
	s.logOpen()
	t.out.sendOpen(s)
	if s.dead {
		return gnet.Close
	}
	return gnet.None
}

// EnrollFailed runs when gnet could not adopt the client (descriptors
// exhausted, say): a new stream gives its slot back, an unparking one is
// reset.
func (s *stream) EnrollFailed(err error) {
	switch {
	case s.dead:
	case !s.opened:
		s.dead = true
		s.release()
		s.lis.met.sessionErr.Inc()
		s.h.log.Debug("enroll failed", "connector", s.lis.Connector, "err", err.Error())
	case s.unparking:
		s.unparking = false
		s.h.log.Warn("unpark failed", "cid", s.cid, "err", err.Error())
		s.kill(codec.ReasonOverload, true, true)
	}
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
	send := 0
	if s.pend.Len() == 0 { // order: queued bytes go first
		send = s.forward(buf[:n])
		if s.dead {
			_, _ = c.Discard(n)
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
	if s.pend.Len() > 0 || s.sendable() < s.t.parkBelow {
		return s.park(c)
	}
	return gnet.None
}

// forward sends as much of p as credit allows now, and returns how much.
func (s *stream) forward(p []byte) int {
	n := s.t.take(&s.fc.Send, len(p))
	if n > 0 {
		s.sent(p[:n])
	}
	return n
}

// sent sends p as DATA, its credit taken (lane.take).
func (s *stream) sent(p []byte) {
	s.up += int64(len(p))
	s.lis.met.bytesC2A.Add(len(p))
	s.t.out.sendData(s.cid, p)
}

// needCredit is the lane credit a parked stream waits for: enough to
// unpark, or any to send what it holds.
func (s *stream) needCredit() int {
	if s.pend.Len() > 0 {
		return 1
	}
	return s.t.resumeFrom
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
	if s.fc.Send.Avail() >= s.t.resumeFrom {
		s.t.waitCredit(s, s.h.met, s.needCredit()) // the stream has credit: the tunnel has not
	}
	if s.h.debugOn() {
		s.h.log.Debug("stream parked", "cid", s.cid, "credit", s.fc.Send.Avail(), "lane_credit", s.t.sendable(&s.fc.Send))
	}
	return gnet.Close
}

// unpark hands the parked socket back to gnet on this loop.
func (s *stream) unpark() {
	if !s.parked || s.unparking || s.fc.FinSent() {
		return
	}
	err := engine.Enroll(s.t.loop, s.dup, s)
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
	if s.h.debugOn() {
		s.h.log.Debug("stream unparking", "cid", s.cid, "credit", s.sendable())
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
	if !s.fc.SendFin() {
		return
	}
	if s.h.debugOn() {
		s.h.log.Debug("client fin", "cid", s.cid, "shut", s.shut, "out", s.out.Len())
	}
	s.lis.met.finSent.Inc()
	s.t.out.sendEmpty(codec.FrameFin, s.cid)
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
	for !s.dead && s.parked {
		room := s.sendable()
		if room <= 0 {
			if s.fc.Send.Avail() > 0 {
				s.t.waitCredit(s, s.h.met, 1)
			}
			return
		}
		n, err := engine.ReadFD(s.dup, buf[:min(len(buf), room)])
		switch {
		case n > 0:
			if k := s.forward(buf[:n]); k < n {
				// Streams on other loops took the link's credit
				// meanwhile: keep the rest for when it returns.
				if err := s.pend.Push(buf[k:n]); err != nil {
					s.kill(codec.ReasonOverload, true, true)
					return
				}
				s.t.waitCredit(s, s.h.met, 1)
				return
			}
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
func (s *stream) onFrame(ft codec.FrameType, p []byte, now time.Time) {
	switch ft {
	case codec.FrameData:
		s.onData(p, now)
	case codec.FrameWindow:
		inc, err := codec.ParseWindow(p)
		if err == nil {
			err = s.fc.Window(inc)
		}
		if err != nil {
			s.kill(codec.ReasonProtocol, true, true)
			return
		}
		s.flushPend()
	case codec.FrameFin:
		if s.fc.Fin() != nil {
			s.kill(codec.ReasonProtocol, true, true)
			return
		}
		s.lis.met.finRecv.Inc()
		s.maybeShut()
	case codec.FrameRst:
		s.lis.met.rstRecv.Inc()
		r, _, _ := codec.ParseReason(p)
		if r == codec.ReasonNone || !r.Known() {
			r = codec.ReasonTargetReset
		}
		s.kill(r, false, true)
	case codec.FrameOpenAck:
		if s.fc.OpenAck() != nil {
			s.kill(codec.ReasonProtocol, true, true)
		}
	case codec.FrameOpenErr:
		r, msg, _ := codec.ParseReason(p)
		if s.fc.Acked() {
			s.kill(codec.ReasonProtocol, true, true)
			return
		}
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
// in a burst does not hold the stream to the drain poller's pace. The
// tunnel level counted the bytes already (tunnel.OnMessage).
func (s *stream) onData(p []byte, now time.Time) {
	if err := s.fc.Data(len(p)); err != nil || s.shut {
		if err == nil {
			s.fc.Recv.Release(len(p), now, 0) // counted, never buffered: end must not release it again
		}
		s.t.released(len(p), now)
		s.kill(flow.ResetReason(err), true, true) // shut, err nil: protocol
		return
	}
	s.lastAct = now
	s.down += int64(len(p))
	s.lis.met.bytesA2C.Add(len(p))
	if s.out.Empty() {
		iov := append(s.t.loop.Iov[:0], p)
		n, err := s.t.loop.WriteFD(s.fd(), iov)
		clear(iov)
		if err != nil {
			s.lis.met.writeErr.Inc()
			s.kill(codec.ReasonClientReset, true, true) // end releases the unwritten bytes
			return
		}
		s.lis.met.writeSec.UpdateDuration(now)
		s.acked(n, now)
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
		if _, err := s.flushOut(now); err != nil || s.dead {
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
		s.drainStart = now
	}
	if !s.draining {
		s.draining = true
		s.t.loop.WaitDrain(s)
	}
}

// flushOut writes queued bytes until the socket refuses more or the queue
// is empty, and reports whether the socket took anything. A write error
// kills the stream.
func (s *stream) flushOut(now time.Time) (progressed bool, err error) {
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
		s.acked(n, now)
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
func (s *stream) Drain(now time.Time) (done, progressed bool) {
	if s.dead {
		s.draining = false
		return true, false
	}
	progressed, err := s.flushOut(now)
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
// agent as the flow rules say: per stream (its window may grow) and per
// tunnel.
func (s *stream) acked(n int, now time.Time) {
	if n <= 0 {
		return
	}
	if inc := s.h.release(&s.fc.Recv, &s.out, n, now, s.t.minRTT()); inc > 0 {
		s.t.out.sendWindow(s.cid, inc)
	}
	s.t.released(n, now)
}

// flushPend sends queued client bytes as credit allows, and unparks the
// client once enough credit is back (or waits for the tunnel's).
func (s *stream) flushPend() {
	for s.pend.Len() > 0 && !s.dead {
		room := s.sendable()
		if room <= 0 {
			break
		}
		iov := s.pend.Peek(s.t.loop.Iov[:0], 1)
		b := iov[0][:min(len(iov[0]), room)]
		clear(iov)
		k := s.forward(b)
		s.pend.Discard(k)
		if k < len(b) {
			break // other loops took the link's credit meanwhile
		}
	}
	if s.dead || !s.parked {
		return
	}
	switch {
	case s.pend.Len() == 0 && s.sendable() >= s.t.resumeFrom:
		s.unpark()
	case s.fc.Send.Avail() >= s.t.resumeFrom || s.pend.Len() > 0 && s.fc.Send.Avail() > 0:
		s.t.waitCredit(s, s.h.met, s.needCredit())
	}
}

// maybeShut half-closes the client once the agent's FIN arrived and every
// byte before it was written.
func (s *stream) maybeShut() {
	if !s.fc.FinRecv() || s.shut || !s.out.Empty() || s.dead {
		return
	}
	if err := engine.ShutdownWrite(s.fd()); err != nil {
		s.kill(codec.ReasonClientReset, true, true)
		return
	}
	s.shut = true
	if s.fc.FinSent() {
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
	s.end(codec.ReasonNone)
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
		s.t.out.sendRst(s.cid, r)
	}
	if s.h.debugOn() {
		s.h.log.Debug("connection reset", "connector", s.lis.Connector, "cid", s.cid, "reason", r.String())
	}
	if s.opened {
		s.lis.met.reset(r)
	}
	s.end(r)
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

// end releases the stream's resources and counts it once. r is why it
// ended (ReasonNone: both FINs).
func (s *stream) end(r codec.Reason) {
	if s.dead {
		return
	}
	s.dead = true
	if s.opened && !s.t.closed {
		// Bytes still queued will never be written: their tunnel-level
		// credit goes back now, or the tunnel would shrink for good.
		if b := s.fc.Recv.Buffered(); b > 0 {
			s.t.released(b, time.Now())
		}
		s.t.fc.Recent.Add(s.cid)
	}
	s.out.Reset()
	s.pend.Reset()
	if s.opened {
		delete(s.t.streams, s.cid)
		s.lis.met.active.Dec()
		s.lis.met.duration.UpdateDuration(s.start)
		s.logClose(r)
	}
	s.release()
}

// release gives back the stream's slot on its tunnel, its agent and the
// hub's connection budget, once.
func (s *stream) release() {
	if !s.counted {
		return
	}
	s.counted = false
	s.t.active.Add(-1)
	if a := s.t.agent; a != nil {
		a.active.Add(-1)
	}
	s.h.conns.Add(-1)
}

// logOpen writes "connection open": at info, rate-limited, or at debug
// when connection lines are off.
func (s *stream) logOpen() {
	if s.h.connLog == nil {
		if s.h.debugOn() {
			s.h.log.Debug("connection open", "connector", s.lis.Connector, "cid", s.cid,
				"client", s.h.maskAddr(s.client), "agent_id", s.t.agentID)
		}
		return
	}
	if n, ok := s.h.connLog.Allow(time.Now()); ok {
		s.h.log.Info("connection open", "connector", s.lis.Connector, "cid", s.cid,
			"client", s.h.maskAddr(s.client), "agent_id", s.t.agentID, "suppressed", n)
	}
}

// logClose writes "connection closed" with the bytes and the duration.
func (s *stream) logClose(r codec.Reason) {
	reason := "fin"
	if r != codec.ReasonNone {
		reason = r.String()
	}
	if s.h.connLog == nil {
		if s.h.debugOn() {
			s.h.log.Debug("connection closed", "connector", s.lis.Connector, "cid", s.cid, "reason", reason,
				"bytes_c2a", s.up, "bytes_a2c", s.down, "duration", time.Since(s.start).Round(time.Millisecond).String())
		}
		return
	}
	if n, ok := s.h.connLog.Allow(time.Now()); ok {
		s.h.log.Info("connection closed", "connector", s.lis.Connector, "cid", s.cid,
			"client", s.h.maskAddr(s.client), "reason", reason, "bytes_c2a", s.up, "bytes_a2c", s.down,
			"duration", time.Since(s.start).Round(time.Millisecond).String(), "suppressed", n)
	}
}
