package mesh

import (
	"encoding/binary"
	"net"
	"sync"
	"time"

	"github.com/gobwas/ws"

	"github.com/nowconnect/nowconnect/codec"
	"github.com/nowconnect/nowconnect/internal/bufpool"
	"github.com/nowconnect/nowconnect/internal/iov"
)

// The send side of a link: two lanes and one writer goroutine.
//
//   - The control lane holds non-DATA frames (SendControl; M_PONG and WebSocket pongs
//     from the reader): at most SendQueueDepth of them, beyond that SendControl
//     returns ErrBackpressure (counted reason="queue_full").
//   - The DATA lane holds M_DATA (SendData), charged the size class of its buffer
//     against a budget of twice the larger link window (ours or the peer's) plus one
//     whole message: beyond that SendData returns ErrBackpressure (counted
//     reason="inflight"). The hub's flow control keeps a link's DATA payload within
//     the peer's link window, and a buffer is less than twice its message, so a
//     flow-controlled link never reaches the budget, whatever its frame sizes; it
//     bounds the memory of a link whose peer ignores flow control.
//   - linkWriteLoop writes, in each batch, every queued control frame first and then
//     DATA (at most maxBatchData bytes, so a control frame waits behind at most that
//     much), with one writev on a TCP socket or through a coalescing buffer on TLS.
//   - On a TCP socket (no TLS), a sender that finds nobody writing and at most
//     directMax of DATA queued writes the batch itself, with one non-blocking
//     writev, instead of waking linkWriteLoop: a request crossing the mesh then
//     costs no goroutine wake-up on the sending hub.
//     What the socket does not take at once is handed to linkWriteLoop, which
//     finishes the batch with blocking writes; the sender never waits. One writer
//     at a time owns the socket and the batch (busy).
//
// Order within a stream: a receiver drops a frame whose seq is not above the last of
// its CID (dedup), so the frames of one CID must leave in the order they were sent. A
// control frame for a CID that has M_DATA queued (a FIN after the last bytes, a
// WINDOW of a stream that also sends) therefore joins the DATA lane behind it;
// control frames of other streams, link-level M_WINDOWs and pongs overtake all DATA.
type sender struct {
	// set at construction
	l      *Link
	mask   bool      // this hub dialed: client frames are masked
	depth  int       // SendQueueDepth
	budget int       // dataBudget of the link windows (set once M_HELLO is read)
	tcp    bool      // conn is a *net.TCPConn: writev
	direct *iov.Conn // non-blocking writes from the sender's goroutine (TCP, Linux); nil: none
	wake   chan struct{}
	exited chan struct{} // closed by linkWriteLoop

	mu sync.Mutex
	// guarded by mu
	started  bool // linkWriteLoop runs
	closed   bool
	busy     bool // a writer (linkWriteLoop or a direct sender) owns the socket and the batch
	handoff  bool // a direct sender left the batch partly written: linkWriteLoop finishes it
	cause    *linkError
	ctrl     []outItem
	data     []outItem
	dataHead int      // data[:dataHead] have been taken
	ctrlN    int      // control frames queued, in both lanes
	charge   int      // buffer bytes of DATA queued or being written
	dataLen  int      // message bytes of DATA queued or being written
	pending  cidTable // cid → M_DATA frames queued and not yet taken

	// owned by the busy writer
	batch []outItem
	iov   [][]byte
	nb    net.Buffers // kept here so that WriteTo does not allocate
	stage []byte      // coalescing buffer for sockets without writev (TLS)
}

// outItem is one queued message: buf.B[:n].
type outItem struct {
	buf  *msgBuf
	n    int32
	data bool   // M_DATA (charged)
	cid  uint32 // M_DATA: its CID
}

const (
	// maxBatchData bounds the DATA bytes of one batch: how long a control frame
	// queued meanwhile may wait.
	maxBatchData = 256 << 10
	// maxBatchItems bounds the messages of one batch (and one writev).
	maxBatchItems = iov.MaxVec
	// stageLen is the coalescing buffer: small messages share TLS records.
	stageLen = 64 << 10
	// directWrite is the message size written as it is rather than staged.
	directWrite = 16 << 10
	// directMax is the most DATA a sender writes itself (writeDirect): requests and
	// responses go at once, while a bulk stream's batches go to linkWriteLoop, so that
	// reading its source and writing the link run on two cores.
	directMax = 16 << 10
)

func (s *sender) init(l *Link) {
	cfg := &l.m.cfg
	s.l = l
	s.mask = l.dialed
	s.depth = cfg.SendQueueDepth
	s.budget = dataBudget(cfg.LinkWindow, 0)
	var tc *net.TCPConn
	tc, s.tcp = l.conn.(*net.TCPConn)
	if s.tcp {
		s.direct = iov.NewConn(tc)
	}
	s.wake = make(chan struct{}, 1)
	s.exited = make(chan struct{})
}

// dataBudget is the DATA lane's budget for link windows ours and peer's: twice
// the larger (a buffer's size class is less than twice its message) plus one whole
// message.
func dataBudget(ours, peer int) int { return 2*max(ours, peer) + bufpool.Max }

func (s *sender) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// SendControl queues a whole non-DATA stream frame (M_OPEN, M_OPEN_ACK, M_OPEN_ERR,
// M_FIN, M_RST, M_WINDOW, also on CID 0), copied. It never waits: it fails with
// ErrLinkDown once the link is closing, with ErrBackpressure when SendQueueDepth
// control frames are queued (counted reason="queue_full"; the caller resets the
// stream), and with ErrBadFrame for a frame that ParseMeshFrame refuses or of another
// type. Safe from any goroutine.
func (l *Link) SendControl(frame []byte) error {
	h, _, err := codec.ParseMeshFrame(frame)
	if err != nil {
		return ErrBadFrame
	}
	if h.Type.Link() || h.Type == codec.MeshFrameData {
		return ErrBadFrame
	}
	if err := l.snd.enqueueCtrlMsg(ws.OpBinary, frame, h.Type, h.CID); err != nil {
		return err
	}
	l.m.met.frame(dirOut, h.Type)
	return nil
}

// SendData queues one M_DATA: header (AppendMeshHeader's output for M_DATA) and
// payload (1..MaxPayload bytes) are copied once, into a pooled buffer. It never
// waits: it fails with ErrLinkDown once the link is closing, with ErrBackpressure when
// the queued DATA would exceed LinkWindow plus one frame (counted reason="inflight"),
// and with ErrBadFrame for a header that is not an M_DATA header or a payload out of
// bounds. It does not allocate. Safe from any goroutine.
func (l *Link) SendData(header, payload []byte) error {
	cid, ok := dataHeader(header)
	if !ok || len(payload) == 0 || len(payload) > codec.MaxPayload {
		return ErrBadFrame
	}
	s := &l.snd
	b, n := buildMsg(ws.OpBinary, s.mask, header, payload)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		putBuf(b)
		return ErrLinkDown
	}
	if s.charge+len(b.B) > s.budget {
		s.mu.Unlock()
		putBuf(b)
		l.lm.dropInflight.Inc()
		return ErrBackpressure
	}
	s.data = append(s.data, outItem{buf: b, n: int32(n), data: true, cid: cid})
	c, _ := s.pending.get(cid)
	s.pending.put(cid, c+1)
	s.charge += len(b.B)
	s.dataLen += n
	s.gaugesLocked()
	s.flushLocked()
	l.m.met.frame(dirOut, codec.MeshFrameData)
	return nil
}

// dataHeader checks that h is a whole M_DATA stream header and returns its CID.
func dataHeader(h []byte) (uint32, bool) {
	if len(h) < codec.MeshHeaderMin || h[0] != byte(codec.MeshFrameData) {
		return 0, false
	}
	const agentAt = 1 + 4 + 8 + 8
	a := int(h[agentAt])
	if len(h) < agentAt+1+a+1 || len(h) != agentAt+2+a+int(h[agentAt+1+a]) {
		return 0, false
	}
	cid := binary.BigEndian.Uint32(h[1:])
	return cid, cid != 0
}

// enqueueCtrlMsg queues a control message of opcode op with payload p; t and cid
// name the mesh frame (t 0 for a WebSocket control message).
func (s *sender) enqueueCtrlMsg(op ws.OpCode, p []byte, t codec.MeshFrameType, cid uint32) error {
	b, n := buildMsg(op, s.mask, p, nil)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		putBuf(b)
		return ErrLinkDown
	}
	if s.ctrlN >= s.depth {
		s.mu.Unlock()
		putBuf(b)
		// Count what costs a stream; a skipped M_PING or pong costs nothing.
		if lm := s.l.lm; lm != nil && op == ws.OpBinary && !t.Link() {
			lm.dropQueueFull.Inc()
		}
		return ErrBackpressure
	}
	it := outItem{buf: b, n: int32(n)}
	if q, _ := s.pending.get(cid); cid != 0 && q > 0 {
		s.data = append(s.data, it)
	} else {
		s.ctrl = append(s.ctrl, it)
	}
	s.ctrlN++
	s.gaugesLocked()
	s.flushLocked()
	return nil
}

// flushLocked gets what was just queued written, and unlocks mu: written now by
// this goroutine when nobody else is writing and the socket allows it (writeDirect),
// else by linkWriteLoop.
func (s *sender) flushLocked() {
	direct := s.direct != nil && s.started && !s.busy && s.dataLen <= directMax
	if direct {
		s.busy = true
	}
	s.mu.Unlock()
	if direct {
		s.writeDirect()
		return
	}
	s.signal()
}

// writeDirect writes the next batch with one non-blocking writev, as the busy
// writer. What the socket does not take is handed to linkWriteLoop.
func (s *sender) writeDirect() {
	closed := s.take(false)
	if closed || len(s.batch) == 0 {
		s.written()
		s.release()
		return
	}
	s.fillIov()
	n, err := s.direct.Writev(s.iov)
	if err != nil {
		s.written()
		s.release()
		s.l.close(&linkError{reason: reasonIOError, err: ErrLinkIO, detail: "write: " + err.Error()})
		return
	}
	if s.consume(n) {
		s.mu.Lock()
		s.handoff = true
		s.deadlineLocked()
		s.mu.Unlock()
		s.signal()
		return
	}
	s.written()
	s.release()
}

// release gives up the socket; linkWriteLoop is woken if anything is queued
// (senders that found it busy left their frames to it) or the sender closed.
func (s *sender) release() {
	s.mu.Lock()
	s.busy = false
	more := s.closed || len(s.ctrl) > 0 || s.dataHead < len(s.data)
	s.mu.Unlock()
	if more {
		s.signal()
	}
}

// acquire makes linkWriteLoop the busy writer, taking over a batch a direct sender
// handed to it; it reports false while a direct sender writes (it signals when done).
func (s *sender) acquire() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.busy && s.handoff:
		s.handoff = false
		return true
	case s.busy:
		return false
	}
	s.busy = true
	return true
}

// fillIov points s.iov at the messages of s.batch.
func (s *sender) fillIov() {
	s.iov = s.iov[:0]
	for _, it := range s.batch {
		s.iov = append(s.iov, it.buf.B[:it.n])
	}
}

// consume drops the first n written bytes from s.iov and reports whether any are
// left.
func (s *sender) consume(n int) bool {
	i := 0
	for ; i < len(s.iov) && n >= len(s.iov[i]); i++ {
		n -= len(s.iov[i])
	}
	if i < len(s.iov) {
		s.iov[i] = s.iov[i][n:]
	}
	rest := s.iov[i:]
	clear(s.iov[:i])
	s.iov = append(s.iov[:0], rest...)
	return len(s.iov) > 0
}

func (s *sender) gaugesLocked() {
	if lm := s.l.lm; lm != nil {
		lm.queueSize.Set(float64(len(s.ctrl) + len(s.data) - s.dataHead))
		lm.inflight.Set(float64(s.dataLen))
	}
}

// start starts linkWriteLoop unless the link is already closing.
func (s *sender) start() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.started = true
	s.l.m.wg.Go(s.linkWriteLoop)
	return true
}

// shut records the cause and closes the queue; it reports whether this call did it.
// With a close code the writer flushes a close frame and closes the socket; without
// one (or before the writer runs) the socket closes now.
func (s *sender) shut(e *linkError) bool {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return false
	}
	s.closed, s.cause = true, e
	graceful := s.started && e.code != 0
	if graceful {
		// Bound a write in progress too: a dead peer must not hold the close.
		_ = s.l.conn.SetWriteDeadline(time.Now().Add(closeGrace))
	}
	s.mu.Unlock()
	if !graceful {
		_ = s.l.conn.Close()
	}
	s.signal()
	return true
}

// wait waits for linkWriteLoop to exit, if it ran, and returns what is still queued
// to the pools.
func (s *sender) wait() {
	s.mu.Lock()
	started := s.started
	s.mu.Unlock()
	if started {
		<-s.exited
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, it := range s.ctrl {
		putBuf(it.buf)
	}
	for _, it := range s.data[s.dataHead:] {
		putBuf(it.buf)
	}
	clear(s.ctrl)
	clear(s.data)
	s.ctrl, s.data, s.dataHead, s.ctrlN, s.charge, s.dataLen = nil, nil, 0, 0, 0, 0
	s.gaugesLocked()
}

// take moves the next batch into s.batch: every control frame, then DATA-lane
// messages up to maxBatchData bytes. It reports whether the sender is closed. With
// block, the batch is to be written with blocking writes: their deadline is set.
func (s *sender) take(block bool) (closed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.batch = append(s.batch, s.ctrl...)
	s.ctrlN -= len(s.ctrl)
	clear(s.ctrl)
	s.ctrl = s.ctrl[:0]
	bytes := 0
	for s.dataHead < len(s.data) && bytes < maxBatchData && len(s.batch) < maxBatchItems {
		it := s.data[s.dataHead]
		s.data[s.dataHead] = outItem{}
		s.dataHead++
		s.batch = append(s.batch, it)
		bytes += int(it.n)
		if !it.data {
			s.ctrlN--
			continue
		}
		if c, _ := s.pending.get(it.cid); c > 1 {
			s.pending.put(it.cid, c-1)
		} else {
			s.pending.del(it.cid)
		}
	}
	switch {
	case s.dataHead == len(s.data):
		s.data, s.dataHead = s.data[:0], 0
	case s.dataHead >= 1024 && 2*s.dataHead >= len(s.data):
		n := copy(s.data, s.data[s.dataHead:])
		clear(s.data[n:])
		s.data, s.dataHead = s.data[:n], 0
	}
	s.gaugesLocked()
	if block && len(s.batch) > 0 {
		s.deadlineLocked()
	}
	return s.closed
}

// deadlineLocked bounds the blocking writes of a batch by WriteTimeout. Under mu,
// so that shut's shorter deadline is never overwritten.
func (s *sender) deadlineLocked() {
	if !s.closed {
		_ = s.l.conn.SetWriteDeadline(time.Now().Add(s.l.m.cfg.WriteTimeout))
	}
}

// written releases a written (or failed) batch: buffers back to the pools, the DATA
// budget returned.
func (s *sender) written() {
	charge, n := 0, 0
	for i, it := range s.batch {
		if it.data {
			charge += len(it.buf.B)
			n += int(it.n)
		}
		putBuf(it.buf)
		s.batch[i] = outItem{}
	}
	s.batch = s.batch[:0]
	if charge == 0 {
		return
	}
	s.mu.Lock()
	s.charge -= charge
	s.dataLen -= n
	s.gaugesLocked()
	s.mu.Unlock()
}

// linkWriteLoop sends an M_PING every PingInterval and writes
// batches until the link closes, then flushes the close frame (if the cause has one)
// and closes the socket.
func (s *sender) linkWriteLoop() {
	defer close(s.exited)
	l := s.l
	cfg := &l.m.cfg
	tick := time.NewTicker(cfg.PingInterval)
	defer tick.Stop()
	s.ping() // the first RTT sample without waiting a whole interval
	for {
		select {
		case <-s.wake:
		case <-tick.C:
			s.ping()
		}
		if !s.acquire() {
			continue // a direct sender writes; it signals when it is done
		}
		if len(s.batch) > 0 { // handed over partly written: s.iov holds the rest
			s.nb = s.iov
			_, err := s.nb.WriteTo(l.conn)
			s.nb = nil
			s.written()
			if err != nil {
				l.close(&linkError{reason: reasonIOError, err: ErrLinkIO, detail: "write: " + err.Error()})
			}
		}
		for {
			closed := s.take(true)
			if len(s.batch) == 0 {
				s.mu.Lock()
				s.busy = false
				s.mu.Unlock()
				if closed {
					s.finish()
					return
				}
				break
			}
			if closed {
				s.written() // drop what was queued: the link is going away
				continue
			}
			err := s.write()
			s.written()
			if err != nil {
				l.close(&linkError{reason: reasonIOError, err: ErrLinkIO, detail: "write: " + err.Error()})
			}
		}
	}
}

// ping queues an M_PING carrying the send time.
func (s *sender) ping() {
	var f [codec.MeshPingLen]byte
	f[0] = byte(codec.MeshFramePing)
	binary.BigEndian.PutUint64(f[1:], uint64(s.l.m.monoNow()))
	if s.enqueueCtrlMsg(ws.OpBinary, f[:], codec.MeshFramePing, 0) == nil {
		s.l.m.met.frame(dirOut, codec.MeshFramePing)
	}
}

// finish flushes the close frame of the cause, if any, and closes the socket.
func (s *sender) finish() {
	l := s.l
	s.mu.Lock()
	e := s.cause
	s.mu.Unlock()
	if e != nil && e.code != 0 {
		writeClose(l.conn, s.mask, e)
	}
	_ = l.conn.Close()
}

// writeClose writes the WebSocket close frame of e to conn, bounded by closeGrace.
func writeClose(conn net.Conn, mask bool, e *linkError) {
	text := closeText(e)
	var p [125]byte
	binary.BigEndian.PutUint16(p[:], uint16(e.code))
	n := 2 + copy(p[2:], text)
	b, mn := buildMsg(ws.OpClose, mask, p[:n], nil)
	_ = conn.SetWriteDeadline(time.Now().Add(closeGrace))
	_, _ = conn.Write(b.B[:mn])
	putBuf(b)
}

// running reports whether linkWriteLoop was started.
func (s *sender) running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.started
}

// write writes s.batch: one writev on TCP, coalesced writes otherwise.
func (s *sender) write() error {
	if s.tcp {
		s.fillIov()
		s.nb = s.iov
		_, err := s.nb.WriteTo(s.l.conn)
		s.nb = nil
		return err
	}
	if s.stage == nil {
		s.stage = make([]byte, 0, stageLen)
	}
	st := s.stage[:0]
	for _, it := range s.batch {
		msg := it.buf.B[:it.n]
		if len(st)+len(msg) > cap(st) || len(msg) >= directWrite {
			if len(st) > 0 {
				if _, err := s.l.conn.Write(st); err != nil {
					return err
				}
				st = st[:0]
			}
			if len(msg) >= directWrite {
				if _, err := s.l.conn.Write(msg); err != nil {
					return err
				}
				continue
			}
		}
		st = append(st, msg...)
	}
	if len(st) > 0 {
		_, err := s.l.conn.Write(st)
		return err
	}
	return nil
}

// closeText is the reason text of the close frame for e (at most 123 bytes): the
// reason token first, which the peer reads back (peerCloseError), then the detail.
func closeText(e *linkError) string {
	if e.text != "" {
		return e.text
	}
	t := e.reason
	switch e.reason {
	case reasonDuplicate, reasonSelf, reasonShutdown, reasonClosed, reasonPeerClosed:
	default:
		t += ": " + e.detail
	}
	if len(t) > 123 {
		t = t[:123]
	}
	return t
}
