package agent

import (
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net"
	"sync"

	"github.com/gobwas/ws"

	"github.com/nowconnect/nowconnect/codec"
	"github.com/nowconnect/nowconnect/internal/iov"
)

// Sizes of the data path.
const (
	// hdrRoom is reserved at the front of every frame buffer: the masked
	// WebSocket header and the tunnel header are encoded backwards into it,
	// so header and payload go out as one slice.
	hdrRoom = codec.MaxWSHeaderLen + codec.HeaderLen
	// readChunk is the most a stream reads from its target per DATA frame.
	readChunk = 64 << 10
	// queueChunk is the buffer size of the per-stream hub→target queue.
	queueChunk = 16 << 10
	// maxMsgLen is the longest WebSocket message the hub may send.
	maxMsgLen = codec.MaxWSHeaderLen + codec.MaxFrameLen
	// readBufLen is the tunnel read buffer: room for two whole messages, so
	// a partial message is compacted at most once per message.
	readBufLen = 2 * maxMsgLen
	// maxCtrlBytes bounds the control frames waiting for the tunnel writer
	// (WINDOW, RST, PONG...). DATA is bounded by the credit windows; control
	// frames only grow without bound if the hub floods us while not
	// reading, and then the tunnel is closed.
	maxCtrlBytes = 1 << 20
	// maxBatch bounds the frames written in one writev.
	maxBatch = 512
	// stageLen is the coalescing buffer of a tunnel without writev (wss://):
	// a batch is copied into it and written in Writes of up to this size,
	// so small frames share TLS records instead of one record and one
	// syscall each.
	stageLen = 64 << 10
	// maxTLSRecord is the largest TLS record payload: a slice this long is
	// written as it is rather than copied into the stage.
	maxTLSRecord = 16 << 10
	// directMax is the most queued bytes the goroutine that queued them
	// writes itself (sender.flushLocked): a response or a WINDOW goes out
	// at once, while bulk DATA goes to tunnelWriteLoop, so that reading the
	// target and writing the tunnel run on two cores.
	directMax = 16 << 10
)

// frameBuf is a pooled buffer holding one outgoing DATA frame: header room
// then up to readChunk payload bytes.
type frameBuf struct {
	b [hdrRoom + readChunk]byte
}

// Sender errors.
var (
	errSenderClosed = errors.New("agent: tunnel closed")
	errCtrlFull     = errors.New("agent: control frames backed up")
)

var framePool = sync.Pool{New: func() any { return new(frameBuf) }}

func getFrameBuf() *frameBuf   { return framePool.Get().(*frameBuf) }
func putFrameBuf(fb *frameBuf) { framePool.Put(fb) }

// newMask returns a random WebSocket masking key. math/rand/v2's top-level
// source is a per-thread ChaCha8 stream: unpredictable, lock-free, 0-alloc.
func newMask() (m [4]byte) {
	binary.LittleEndian.PutUint32(m[:], rand.Uint32())
	return m
}

// prepareData encodes the tunnel and masked WebSocket headers of a DATA
// frame whose n payload bytes sit at fb.b[hdrRoom:], masks the frame in
// place and returns the bounds of the whole message in fb.b.
func prepareData(fb *frameBuf, cid uint32, n int) (off, end int) {
	end = hdrRoom + n
	start := hdrRoom - codec.HeaderLen
	codec.PutHeader(fb.b[start:hdrRoom], codec.FrameData, cid)
	h := ws.Header{Fin: true, OpCode: ws.OpBinary, Masked: true, Mask: newMask(), Length: int64(end - start)}
	off = start - codec.WSHeaderLen(h)
	codec.PutWSHeader(fb.b[off:start], h)
	ws.Cipher(fb.b[start:end], h.Mask, 0)
	return off, end
}

// outItem is one queued message: fb.b[off:end] for DATA, or ctrl[off:end]
// of the batch's control arena when fb is nil.
type outItem struct {
	fb       *frameBuf
	off, end int32
}

// sender is the tunnel's writer side. Any goroutine enqueues whole messages;
// tunnelWriteLoop swaps the pending batch out and writes it with one writev
// (net.Buffers). Control frames are masked into a byte arena; DATA frames
// stay in their pooled buffers, which go back to the pool once written.
//
// On a TCP tunnel (no TLS), the goroutine that queues a message and finds
// nobody writing and at most directMax bytes queued writes the batch itself,
// with one writev that does not wait (iov.Conn), instead of waking
// tunnelWriteLoop: a response then costs the agent no goroutine wake-up.
// What the socket does not take at once is handed to tunnelWriteLoop, which
// finishes it with blocking writes; the queuing goroutine never waits. One
// writer at a time (busy) owns the socket and the batch, so messages leave
// in the order they were queued.
type sender struct {
	// set at construction
	conn     net.Conn
	wake     chan struct{} // cap 1: work is pending
	coalesce bool          // conn is not a *net.TCPConn (TLS): no writev
	direct   *iov.Conn     // non-blocking writes by the queuing goroutine; nil: none (TLS, not Linux)

	mu sync.Mutex
	// guarded by mu
	closed  bool
	busy    bool // a writer (tunnelWriteLoop or a queuing goroutine) owns the socket and the batch
	handoff bool // a direct write left the batch partly written: tunnelWriteLoop finishes it
	items   []outItem
	ctrl    []byte
	pend    int // bytes of items

	// owned by the busy writer: the batch being written
	wItems []outItem
	wCtrl  []byte
	rest   [][]byte // handed over: what a direct write left of the batch
	iov    [][]byte
	nb     net.Buffers // kept here so WriteTo does not allocate
	stage  []byte      // coalescing buffer when coalesce, stageLen, allocated on first use
}

func (w *sender) init(conn net.Conn) {
	w.conn = conn
	w.wake = make(chan struct{}, 1)
	tc, tcp := conn.(*net.TCPConn)
	w.coalesce = !tcp
	if tcp {
		w.direct = iov.NewConn(tc)
	}
}

func (w *sender) signal() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// enqueueData queues a DATA message prepared by prepareData; the sender
// owns fb from now on. It reports false (and recycles fb) once the tunnel is
// closed. With later, the caller calls flush once it has queued what it
// has at hand (a target poller's pass), so those messages share one write.
// Safe from any goroutine.
func (w *sender) enqueueData(fb *frameBuf, off, end int, later bool) bool {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		putFrameBuf(fb)
		return false
	}
	w.items = append(w.items, outItem{fb: fb, off: int32(off), end: int32(end)})
	w.pend += end - off
	if later {
		w.mu.Unlock()
		return true
	}
	w.flushLocked()
	return true
}

// flush gets what enqueueData queued with later written.
func (w *sender) flush() {
	w.mu.Lock()
	w.flushLocked()
}

// enqueueFrame queues a whole tunnel frame f (copied) as one masked binary
// message. It fails when the tunnel is closed or the control arena is full
// (the caller then closes the tunnel). Safe from any goroutine.
func (w *sender) enqueueFrame(f []byte) error {
	return w.enqueueWS(ws.OpBinary, f)
}

// enqueueWS queues one masked WebSocket message with opcode op and payload
// p (copied).
func (w *sender) enqueueWS(op ws.OpCode, p []byte) error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return errSenderClosed
	}
	if len(w.ctrl)+len(p) > maxCtrlBytes {
		w.mu.Unlock()
		return errCtrlFull
	}
	w.appendLocked(op, p)
	w.flushLocked()
	return nil
}

// appendLocked masks one message into the control arena and queues it.
func (w *sender) appendLocked(op ws.OpCode, p []byte) {
	h := ws.Header{Fin: true, OpCode: op, Masked: true, Mask: newMask(), Length: int64(len(p))}
	off := len(w.ctrl)
	w.ctrl = codec.AppendWSHeader(w.ctrl, h)
	start := len(w.ctrl)
	w.ctrl = append(w.ctrl, p...)
	ws.Cipher(w.ctrl[start:], h.Mask, 0)
	w.items = append(w.items, outItem{off: int32(off), end: int32(len(w.ctrl))})
	w.pend += len(w.ctrl) - off
}

// flushLocked gets what was just queued written, and unlocks mu: now, by
// this goroutine, when nobody is writing and little is queued (writeDirect),
// else by tunnelWriteLoop.
func (w *sender) flushLocked() {
	if len(w.items) == 0 && !w.closed {
		w.mu.Unlock()
		return
	}
	if w.direct == nil || w.busy || w.closed || w.pend > directMax || len(w.items) > maxBatch {
		w.mu.Unlock()
		w.signal()
		return
	}
	w.busy = true
	w.swapLocked()
	w.mu.Unlock()
	w.writeDirect()
}

// swapLocked moves the pending messages into the busy writer's batch.
func (w *sender) swapLocked() {
	w.items, w.wItems = w.wItems[:0], w.items
	w.ctrl, w.wCtrl = w.wCtrl[:0], w.ctrl
	w.pend = 0
}

// writeDirect writes the batch with one writev that does not wait, as the
// busy writer. What the socket does not take (all of it after an error,
// which tunnelWriteLoop's blocking write then meets and reports) is handed
// to tunnelWriteLoop.
func (w *sender) writeDirect() {
	vec := w.batchIov(w.wItems)
	n, err := w.direct.Writev(vec)
	if err == nil {
		vec = consume(vec, n)
	}
	if len(vec) == 0 {
		w.recycle(w.wItems)
		w.mu.Lock()
		w.busy = false
		more := len(w.items) > 0 || w.closed
		w.mu.Unlock()
		if more {
			w.signal() // queued while this goroutine wrote, or shut meanwhile
		}
		return
	}
	w.rest = vec
	w.mu.Lock()
	w.handoff = true
	w.mu.Unlock()
	w.signal()
}

// consume drops the first n written bytes from vec and returns the rest.
func consume(vec [][]byte, n int) [][]byte {
	for len(vec) > 0 && n >= len(vec[0]) {
		n -= len(vec[0])
		vec = vec[1:]
	}
	if len(vec) > 0 {
		vec[0] = vec[0][n:]
	}
	return vec
}

// acquire makes tunnelWriteLoop the busy writer, taking over a batch a
// direct write handed to it; it reports false while a direct write runs
// (that writer signals when it is done).
func (w *sender) acquire() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.busy && w.handoff:
		w.handoff = false
		return true
	case w.busy:
		return false
	}
	w.busy = true
	return true
}

// takeBatch swaps the pending messages into the writer's batch and reports
// whether there were any. With none, the writer gives up the socket, unless
// the sender is shut: then it keeps it (nobody else may write any more) and
// done is true. Called by tunnelWriteLoop, as the busy writer, only.
func (w *sender) takeBatch() (more, done bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.swapLocked()
	if len(w.wItems) > 0 {
		return true, false
	}
	if !w.closed {
		w.busy = false
	}
	return false, w.closed
}

// batchIov points w.iov at the messages of items (adjacent control frames
// merged into one slice) and returns it.
func (w *sender) batchIov(items []outItem) [][]byte {
	vec := w.iov[:0]
	for _, it := range items {
		if it.fb != nil {
			vec = append(vec, it.fb.b[it.off:it.end])
			continue
		}
		vec = append(vec, w.wCtrl[it.off:it.end])
	}
	w.iov = mergeAdjacent(vec)
	return w.iov
}

// recycle returns the DATA buffers of items to the pool and empties the
// batch.
func (w *sender) recycle(items []outItem) {
	for _, it := range items {
		if it.fb != nil {
			putFrameBuf(it.fb)
		}
	}
	clear(w.iov[:cap(w.iov)])
	clear(w.wItems)
	w.wItems = w.wItems[:0]
	w.wCtrl = w.wCtrl[:0]
}

// writeBatch writes the batch taken by takeBatch (at most maxBatch messages
// per writev; adjacent control frames are merged into one slice) and
// recycles its buffers. Called by tunnelWriteLoop only.
func (w *sender) writeBatch() error {
	var err error
	items := w.wItems
	for len(items) > 0 && err == nil {
		k := min(len(items), maxBatch)
		iov := w.batchIov(items[:k])
		if w.coalesce {
			err = w.writeStaged(iov)
		} else {
			w.nb = iov
			_, err = w.nb.WriteTo(w.conn)
		}
		items = items[k:]
	}
	w.recycle(w.wItems)
	return err
}

// writeStaged writes iov through the coalescing buffer: one Write per
// stageLen bytes instead of one per slice (net.Buffers falls back to a
// Write per slice on a conn without writev, and tls.Conn seals every Write
// into records of its own).
func (w *sender) writeStaged(iov [][]byte) error {
	if w.stage == nil {
		w.stage = make([]byte, 0, stageLen)
	}
	st := w.stage[:0]
	for _, b := range iov {
		if len(b) >= maxTLSRecord {
			// A whole frame fills records on its own: no copy.
			if len(st) > 0 {
				if _, err := w.conn.Write(st); err != nil {
					return err
				}
				st = st[:0]
			}
			if _, err := w.conn.Write(b); err != nil {
				return err
			}
			continue
		}
		for len(b) > 0 {
			n := copy(st[len(st):cap(st)], b)
			st = st[:len(st)+n]
			b = b[n:]
			if len(st) == cap(st) {
				if _, err := w.conn.Write(st); err != nil {
					return err
				}
				st = st[:0]
			}
		}
	}
	if len(st) > 0 {
		if _, err := w.conn.Write(st); err != nil {
			return err
		}
	}
	return nil
}

// mergeAdjacent joins slices that are contiguous in memory (control frames
// appended one after the other into the arena) so one writev carries fewer
// iovecs.
func mergeAdjacent(iov [][]byte) [][]byte {
	if len(iov) < 2 {
		return iov
	}
	out := iov[:1]
	for _, b := range iov[1:] {
		last := out[len(out)-1]
		if len(last) > 0 && len(b) > 0 && cap(last) > len(last) &&
			&last[:len(last)+1][len(last)] == &b[0] {
			out[len(out)-1] = last[:len(last)+len(b)]
			continue
		}
		out = append(out, b)
	}
	return out
}

// shut marks the sender closed: nothing more is queued. With a final
// message (a WebSocket close frame) the pending messages and it are still
// written by tunnelWriteLoop, which then closes the connection; without,
// pending messages are dropped. Safe from any goroutine; idempotent.
func (w *sender) shut(op ws.OpCode, final []byte) {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	if final == nil {
		w.discardLocked()
	} else {
		w.appendLocked(op, final)
	}
	w.closed = true
	w.mu.Unlock()
	w.signal()
}

// discard drops pending messages after a write error.
func (w *sender) discard() {
	w.mu.Lock()
	w.discardLocked()
	w.closed = true
	w.mu.Unlock()
}

func (w *sender) discardLocked() {
	for _, it := range w.items {
		if it.fb != nil {
			putFrameBuf(it.fb)
		}
	}
	clear(w.items)
	w.items = w.items[:0]
	w.ctrl = w.ctrl[:0]
	w.pend = 0
}

// tunnelWriteLoop writes queued messages to the hub until the sender is
// shut and drained (or a write fails), then closes the connection.
func (s *session) tunnelWriteLoop() {
	w := &s.snd
	defer s.conn.Close()
	fail := func(err error) {
		s.close(closeCause{msg: "write: " + err.Error()})
		w.discard()
	}
	for {
		<-w.wake
		if !w.acquire() {
			continue // a direct write runs; its writer signals when it is done
		}
		done, err := w.writePending()
		if err != nil {
			fail(err)
			return
		}
		if done {
			return
		}
	}
}

// writePending writes, as the busy writer, the rest a direct write handed
// over and then every queued batch, with blocking writes, and gives up the
// socket once nothing is queued. done reports a shut sender drained: the
// writer keeps the socket and closes it.
func (w *sender) writePending() (done bool, err error) {
	if w.rest != nil { // handed over part written
		w.nb, w.rest = w.rest, nil
		_, err = w.nb.WriteTo(w.conn)
		w.nb = nil
		w.recycle(w.wItems)
		if err != nil {
			return false, err
		}
	}
	for {
		more, done := w.takeBatch()
		if !more {
			return done, nil
		}
		if err := w.writeBatch(); err != nil {
			return false, err
		}
	}
}
