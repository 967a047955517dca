package agent

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/nowconnect/nowconnect/codec"
	"github.com/nowconnect/nowconnect/internal/flow"
	"github.com/nowconnect/nowconnect/internal/logmask"
	"github.com/nowconnect/nowconnect/internal/proxyproto"
	"github.com/nowconnect/nowconnect/ring"
)

// dialLogPerSecond bounds the target_dial_failed lines: a dead target under
// a connection storm must not flood the log.
const dialLogPerSecond = 10

// maxStreams bounds the live streams of one tunnel; beyond it OPEN is
// answered with OPEN_ERR(overload). (File descriptors usually run out
// first; dial errors then say so.)
const maxStreams = 1 << 18

// maxIOV is how many queue buffers one writev to a target carries
// (4 × queueChunk = 64 KiB at the first window), so credit flows back in
// steps of about a quarter window.
const maxIOV = 4

// queueChunkFor returns the buffer size that lets a queue of depth buffers
// hold window bytes: queueChunk, doubled as the window grows.
func queueChunkFor(window, depth int) int {
	c := queueChunk
	for c*(depth-3) < window && c < 1<<20 {
		c *= 2
	}
	return c
}

// stream is one tunneled connection: a CID of the session and its target
// TCP connection.
//
// Memory while idle: the struct and the target's net.TCPConn. On Linux the
// target is read from the agent's epoll pollers (targetread_linux.go), so no
// goroutine, no read or write buffer and no queue slots are held while no
// bytes move (TestIdleStreamMemory measures it).
type stream struct {
	// set at creation
	sess   *session
	cid    uint32
	conn   *connector
	client netip.AddrPort // from OPEN; invalid if it did not parse

	// set by dialLoop under mu before open is set; read-only after
	target *net.TCPConn
	raw    syscall.RawConn

	mu sync.Mutex
	// guarded by mu
	rd         readState   // the target reader's state (targetread_*.go)
	fc         flow.Stream // credit (agent→hub), window (hub→agent), FIN state
	open       bool        // target dialed, OPEN_ACK sent
	closed     bool        // ended: forgotten by the session, target closed
	writing    bool        // a targetWriteLoop runs
	finWritten bool        // queue drained after the hub's FIN and target write side shut
	tunnelWait bool        // in sess.waiters: out of tunnel-level credit
	q          ring.Queue

	// guarded by sess.mu
	prev, next *stream
}

// refuseOpen answers an OPEN with OPEN_ERR. The CID counts as ended: frames
// the hub sent behind its OPEN are late frames, ignored (internal/flow).
func (s *session) refuseOpen(cid uint32, r codec.Reason, msg string) {
	s.mu.Lock()
	s.recent.Add(cid)
	s.mu.Unlock()
	s.sendReason(codec.FrameOpenErr, cid, r, msg)
}

// handleOpen answers an OPEN. Called by the tunnel reader.
func (s *session) handleOpen(cid uint32, p []byte) {
	name, client, err := codec.ParseOpen(p)
	if err != nil {
		s.refuseOpen(cid, codec.ReasonProtocol, "malformed OPEN")
		return
	}
	if old := s.lookup(cid); old != nil && !old.detachIfDone() {
		old.abort(codec.ReasonProtocol, true, "OPEN for a live cid")
		return
	}
	a := s.a
	if a.draining.Load() {
		s.refuseOpen(cid, codec.ReasonShutdown, "agent shutting down")
		return
	}
	if a.active.Load() >= maxStreams {
		s.refuseOpen(cid, codec.ReasonOverload, "too many streams")
		return
	}
	c := a.conns.Load().byName[string(name)]
	if c == nil {
		s.refuseOpen(cid, codec.ReasonUnknownConnector, "")
		if debugOn(s.log) {
			s.log.Debug("open refused: unknown connector", "cid", cid, "connector", string(name))
		}
		return
	}
	st := newStream(s, cid, c)
	st.client, _ = netip.ParseAddrPort(string(client))
	s.mu.Lock()
	s.streams[cid] = st
	st.next = s.head
	if s.head != nil {
		s.head.prev = st
	}
	s.head = st
	s.mu.Unlock()
	a.active.Add(1)
	if debugOn(s.log) {
		s.log.Debug("stream open", "cid", cid, "connector", c.name, "client", a.logClient(st.client))
	}
	s.wg.Go(st.dialLoop)
}

func newStream(s *session, cid uint32, c *connector) *stream {
	st := &stream{sess: s, cid: cid, conn: c, fc: flow.NewStream(s.peer, s.local, false)}
	st.initReader()
	st.q.Init(s.a.qDepth, s.local.Stream, queueChunk)
	return st
}

// detachIfDone lets a CID be reused when its stream has exchanged both FINs
// and only drains its last bytes to the target: the old stream leaves the
// CID map and finishes on its own. It reports whether it did.
func (st *stream) detachIfDone() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.closed || !st.fc.Complete() {
		return false
	}
	s := st.sess
	s.mu.Lock()
	if s.streams[st.cid] == st {
		delete(s.streams, st.cid)
	}
	s.mu.Unlock()
	return true
}

// forgetLocked removes st from its session and remembers its CID as ended
// (late frames for it are then ignored, see internal/flow). Called once per
// stream, with st.mu held, by endLocked.
func (st *stream) forgetLocked() {
	s := st.sess
	s.mu.Lock()
	if s.streams[st.cid] == st {
		delete(s.streams, st.cid)
	}
	if st.prev != nil {
		st.prev.next = st.next
	} else {
		s.head = st.next
	}
	if st.next != nil {
		st.next.prev = st.prev
	}
	st.prev, st.next = nil, nil
	s.recent.Add(st.cid)
	s.mu.Unlock()
	select {
	case s.gone <- struct{}{}:
	default:
	}
	// Bytes received and never written give their tunnel-level credit back.
	s.releaseTunnel(st.fc.Recv.Buffered())
	s.a.streamGone()
}

// endLocked marks the stream ended, forgets it and stops its reader. The
// caller queues its last frame (FIN, RST, OPEN_ERR) before, since a
// graceful Shutdown may close the tunnel as soon as the last stream is
// forgotten, and closes the returned target (if any) after unlocking. The
// queue is recycled here unless a targetWriteLoop still writes from it;
// that loop recycles it when it sees closed.
func (st *stream) endLocked() *net.TCPConn {
	st.closed = true
	if !st.writing {
		st.q.Reset()
	}
	st.forgetLocked()
	st.stopReaderLocked()
	return st.target
}

// abort ends the stream at once, sending RST(r) when sendRST. Safe from
// any goroutine; a no-op on an ended stream.
func (st *stream) abort(r codec.Reason, sendRST bool, why string) {
	st.mu.Lock()
	if st.closed {
		st.mu.Unlock()
		return
	}
	if sendRST {
		st.sess.sendReason(codec.FrameRst, st.cid, r, why)
	}
	st.conn.reset(r)
	t := st.endLocked()
	st.mu.Unlock()
	if t != nil {
		_ = t.Close()
	}
	if debugOn(st.sess.log) {
		st.sess.log.Debug("stream reset", "cid", st.cid, "connector", st.conn.name,
			"reason", r.String(), "detail", why, "rst_sent", sendRST)
	}
}

// startWriterLocked starts targetWriteLoop if the target is connected and
// none runs.
func (st *stream) startWriterLocked() {
	if st.open && !st.writing && !st.closed {
		st.writing = true
		st.sess.wg.Go(st.targetWriteLoop)
	}
}

// fromHub queues DATA for the target. Called by the tunnel reader.
func (st *stream) fromHub(p []byte) {
	st.mu.Lock()
	if st.closed {
		st.mu.Unlock()
		return
	}
	if err := st.fc.Data(len(p)); err != nil {
		st.mu.Unlock()
		st.sess.releaseTunnel(len(p)) // not counted by the stream: abort will not return it
		st.abort(flow.ResetReason(err), true, err.Error())
		return
	}
	st.conn.bytesC2A.add(len(p))
	rest := p
	if st.open && !st.writing && st.q.Empty() {
		// Fast path: the target's socket usually takes the bytes at once;
		// write them from the tunnel reader without waking a writer.
		n, err := st.writeNow(p)
		if err != nil {
			st.mu.Unlock()
			st.abort(codec.ReasonTargetReset, true, shortErr(err))
			return
		}
		st.wroteLocked(n)
		rest = p[n:]
	}
	if len(rest) > 0 {
		if st.q.Push(rest) != nil {
			st.mu.Unlock()
			st.abort(codec.ReasonWindowExceeded, true, "")
			return
		}
		st.startWriterLocked()
	}
	st.mu.Unlock()
}

// flushQueueLocked writes queued bytes to the target without blocking
// until the queue is empty or the socket refuses more. Called with mu held
// while no targetWriteLoop runs.
func (st *stream) flushQueueLocked() error {
	var one [1][]byte
	for !st.q.Empty() {
		b := st.q.Peek(one[:0], 1)[0]
		n, err := st.writeNow(b)
		if err != nil {
			return err
		}
		st.q.Discard(n)
		st.wroteLocked(n)
		if n < len(b) {
			return nil
		}
	}
	st.q.Reset() // an idle stream holds no slot array
	return nil
}

// wroteLocked counts n bytes written to the target and returns credit to
// the hub as the flow rules say (its window may grow; the queue grows with
// it before the WINDOW goes out). Called with mu held.
func (st *stream) wroteLocked(n int) {
	if st.closed || n == 0 {
		return
	}
	s := st.sess
	inc, grew := st.fc.Recv.ReleaseGrow(n, time.Now(), s.rtt(), func(w int) { st.q.Grow(w, queueChunkFor(w, s.a.qDepth)) })
	if grew {
		s.a.m.windowGrowths.inc()
	}
	if inc > 0 {
		s.sendWindow(st.cid, inc)
	}
	s.releaseTunnel(n)
}

// finFromHub records the hub's FIN; the writer shuts the target's write
// side once the queue is drained. Called by the tunnel reader.
func (st *stream) finFromHub() {
	st.mu.Lock()
	if st.closed {
		st.mu.Unlock()
		return
	}
	if err := st.fc.Fin(); err != nil {
		st.mu.Unlock()
		st.abort(codec.ReasonProtocol, true, err.Error())
		return
	}
	st.startWriterLocked()
	st.mu.Unlock()
}

// addCredit adds WINDOW credit and resumes the reader; an over-grant is a
// protocol error (internal/flow). Called by the tunnel reader.
func (st *stream) addCredit(inc uint32) {
	st.mu.Lock()
	if st.closed {
		st.mu.Unlock()
		return
	}
	if err := st.fc.Window(inc); err != nil {
		st.mu.Unlock()
		st.abort(codec.ReasonProtocol, true, err.Error())
		return
	}
	st.creditLocked()
	st.mu.Unlock()
}

// readableLocked returns how much the reader may read now: the stream's
// credit, capped at readChunk and by the tunnel-level credit it reserves
// (0, with st queued for the tunnel's next WINDOW, when that is short).
// The reader gives back what it did not use (sess.refund). Called with mu
// held.
func (st *stream) readableLocked() int {
	s := st.sess
	c := st.fc.Send.Avail()
	if c < s.readMin {
		return 0
	}
	return s.reserveLocked(st, min(c, readChunk), s.readMin)
}

// refuseOpen answers OPEN_ERR(r), ends the stream and closes its target if
// one was set. A no-op on a stream that already ended.
func (st *stream) refuseOpen(r codec.Reason, msg string) {
	st.mu.Lock()
	var t *net.TCPConn
	if !st.closed {
		st.sess.sendReason(codec.FrameOpenErr, st.cid, r, msg)
		st.conn.reset(r)
		t = st.endLocked()
	}
	st.mu.Unlock()
	if t != nil {
		_ = t.Close()
	}
}

// dialLoop dials the target and answers OPEN_ERR, or OPEN_ACK once the
// target is registered with its reader; it writes bytes pipelined behind
// the OPEN and starts a writer only for a rest or a FIN.
func (st *stream) dialLoop() {
	s := st.sess
	c := st.conn
	start := time.Now()
	nc, err := s.a.dialer.DialContext(s.ctx, "tcp", c.addr)
	if err != nil {
		if s.ctx.Err() != nil {
			st.abort(codec.ReasonAgentGone, false, "tunnel closed while dialing")
			return
		}
		r, msg := dialReason(err)
		if r == codec.ReasonDialTimeout {
			c.dialTimeout.inc()
		} else {
			c.dialFailed.inc()
		}
		st.refuseOpen(r, msg)
		st.logDialFailed(r, msg)
		return
	}
	if c.dialSeconds != nil {
		c.dialSeconds.UpdateDuration(start)
	}
	tc, ok := nc.(*net.TCPConn)
	var raw syscall.RawConn
	if ok {
		raw, err = tc.SyscallConn()
	}
	if ok && err == nil && s.a.cfg.TargetSendBuffer > 0 {
		err = tc.SetWriteBuffer(s.a.cfg.TargetSendBuffer)
	}
	if !ok || err != nil {
		_ = nc.Close()
		st.refuseOpen(codec.ReasonDialFailed, "target connection unusable")
		return
	}
	if c.proxy {
		// First bytes on the connection: before OPEN_ACK, before any
		// pipelined client byte, before the reader starts.
		if err := st.writeProxyHeader(tc); err != nil {
			_ = nc.Close()
			msg := "proxy header: " + shortErr(err)
			c.dialFailed.inc()
			st.refuseOpen(codec.ReasonDialFailed, msg)
			st.logDialFailed(codec.ReasonDialFailed, msg)
			return
		}
	}
	st.mu.Lock()
	if st.closed {
		st.mu.Unlock()
		_ = nc.Close()
		return
	}
	st.target, st.raw = tc, raw
	// The reader takes st.mu before it reads, so nothing it reads can
	// overtake the OPEN_ACK queued below under the same lock.
	if err := st.startReaderLocked(); err != nil {
		st.mu.Unlock()
		st.refuseOpen(codec.ReasonDialFailed, "target not pollable") // closes the target
		return
	}
	st.open = true
	s.sendEmpty(codec.FrameOpenAck, st.cid)
	if err := st.flushQueueLocked(); err != nil {
		st.mu.Unlock()
		st.abort(codec.ReasonTargetReset, true, shortErr(err)) // closes the target
		return
	}
	if !st.q.Empty() || st.fc.FinRecv() {
		st.startWriterLocked()
	}
	st.mu.Unlock()
}

// logDialFailed logs target_dial_failed at warn, at most dialLogPerSecond
// lines a second (the next line says how many were suppressed). Called by
// dialLoop.
func (st *stream) logDialFailed(r codec.Reason, msg string) {
	s := st.sess
	sup, ok := s.a.dialLog.Allow(time.Now())
	if !ok {
		return
	}
	s.log.Warn("target_dial_failed", "agent_id", s.a.cfg.AgentID, "cid", st.cid, "connector", st.conn.name,
		"target", st.conn.addr, "reason", r.String(), "detail", msg, "client", s.a.logClient(st.client), "suppressed", sup)
}

// writeProxyHeader writes the PROXY protocol v2 header to the freshly
// dialed target: source the client of the OPEN frame, destination the
// address dialed, or LOCAL when the client address did not parse. Called
// by dialLoop before the target is shared with anything.
func (st *stream) writeProxyHeader(tc *net.TCPConn) error {
	var b [proxyproto.MaxLen]byte
	var dst netip.AddrPort
	if ra, ok := tc.RemoteAddr().(*net.TCPAddr); ok {
		dst = ra.AddrPort()
	}
	hdr, err := proxyproto.AppendProxy(b[:0], st.client, dst)
	if err != nil {
		hdr = proxyproto.AppendLocal(b[:0])
	}
	_ = tc.SetWriteDeadline(time.Now().Add(st.sess.a.cfg.DialTimeout))
	_, err = tc.Write(hdr)
	_ = tc.SetWriteDeadline(time.Time{})
	return err
}

// logClient renders a client address of an OPEN frame for logs, masked
// with Config.MaskClientAddr (as last reloaded); "invalid" when it did not
// parse.
func (a *Agent) logClient(ap netip.AddrPort) string {
	switch {
	case !ap.IsValid():
		return "invalid"
	case a.mask.Load():
		return logmask.Addr(ap)
	}
	return ap.String()
}

// dialReason maps a dial error to an OPEN_ERR reason and a short message
// without addresses or secrets.
func dialReason(err error) (codec.Reason, string) {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return codec.ReasonDialTimeout, "dial timeout"
	}
	var dns *net.DNSError
	if errors.As(err, &dns) {
		if dns.IsNotFound {
			return codec.ReasonDialFailed, "no such host"
		}
		return codec.ReasonDialFailed, "name resolution failed"
	}
	var se *os.SyscallError
	if errors.As(err, &se) {
		return codec.ReasonDialFailed, se.Err.Error()
	}
	return codec.ReasonDialFailed, "dial failed"
}

// deliver sends n bytes the reader read from the target into fb as DATA
// and takes them from the stream's credit (the tunnel-level credit was
// reserved before the read). It reports false (and recycles fb) when the
// stream ended meanwhile. With later, the caller flushes the session's
// sender (sender.enqueueData).
func (st *stream) deliver(n int, fb *frameBuf, later bool) bool {
	off, end := prepareData(fb, st.cid, n)
	st.mu.Lock()
	if st.closed {
		st.mu.Unlock()
		putFrameBuf(fb)
		st.sess.refund(n)
		return false
	}
	st.fc.Send.Take(n)
	st.sess.snd.enqueueData(fb, off, end, later)
	st.mu.Unlock()
	st.conn.bytesA2C.add(n)
	return true
}

// targetEOF half-closes towards the hub after the target's EOF; hub→target
// goes on. The stream ends here if the hub's FIN was already written.
func (st *stream) targetEOF() {
	st.mu.Lock()
	if st.closed {
		st.mu.Unlock()
		return
	}
	if !st.fc.SendFin() {
		st.mu.Unlock()
		return
	}
	st.sess.sendEmpty(codec.FrameFin, st.cid)
	var t *net.TCPConn
	if st.finWritten {
		t = st.endLocked()
	}
	st.mu.Unlock()
	if t != nil {
		_ = t.Close()
		st.debugDone()
	}
}

// iovec is a writev vector for targetWriteLoop, pooled so a loop that
// starts and stops with every burst allocates nothing.
type iovec struct {
	arr [maxIOV][]byte
	nb  net.Buffers
}

var iovPool = sync.Pool{New: func() any { return new(iovec) }}

// targetWriteLoop writes queued hub→target bytes, returns credit with
// WINDOW, and after the hub's FIN shuts the target's write side. It runs
// only while the queue holds bytes (or a FIN waits) and exits when it is
// empty, so an idle stream has no writer.
func (st *stream) targetWriteLoop() {
	v := iovPool.Get().(*iovec)
	defer func() {
		clear(v.arr[:])
		v.nb = nil
		iovPool.Put(v)
	}()
	for {
		st.mu.Lock()
		if st.closed {
			st.writing = false
			st.q.Reset()
			st.mu.Unlock()
			return
		}
		if st.q.Empty() {
			st.writing = false
			st.q.Reset() // drop the slot array too: idle streams hold nothing
			var t *net.TCPConn
			if st.fc.FinRecv() && !st.finWritten {
				st.finWritten = true
				if st.fc.FinSent() {
					t = st.endLocked()
				} else {
					_ = st.target.CloseWrite()
				}
			}
			st.mu.Unlock()
			if t != nil {
				_ = t.Close()
				st.debugDone()
			}
			return
		}
		v.nb = st.q.Peek(v.arr[:0], maxIOV)
		st.mu.Unlock()

		var n int64
		var err error
		if len(v.nb) == 1 {
			// Plain write: no iovec array cached in the fd of a stream
			// that only ever sees small requests.
			k, e := st.target.Write(v.nb[0])
			n, err = int64(k), e
		} else {
			n, err = v.nb.WriteTo(st.target)
		}

		st.mu.Lock()
		st.q.Discard(int(n))
		st.wroteLocked(int(n))
		st.mu.Unlock()
		if err != nil {
			st.abort(codec.ReasonTargetReset, true, shortErr(err))
		}
	}
}

func (st *stream) debugDone() {
	if debugOn(st.sess.log) {
		st.sess.log.Debug("stream done", "cid", st.cid, "connector", st.conn.name)
	}
}

// shortErr returns the innermost message of a socket error ("connection
// reset by peer"), without addresses.
func shortErr(err error) string {
	var se *os.SyscallError
	if errors.As(err, &se) {
		return se.Err.Error()
	}
	if errors.Is(err, net.ErrClosed) {
		return "closed"
	}
	return "i/o error"
}

func debugOn(l *slog.Logger) bool { return l.Enabled(context.Background(), slog.LevelDebug) }
