package agent

import (
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net"
	"sync"

	"github.com/gobwas/ws"

	"github.com/nowconnect/nowconnect/codec"
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
type sender struct {
	// set at construction
	conn     net.Conn
	wake     chan struct{} // cap 1: work is pending
	coalesce bool          // conn is not a *net.TCPConn (TLS): no writev

	mu sync.Mutex
	// guarded by mu
	closed bool
	items  []outItem
	ctrl   []byte

	// owned by tunnelWriteLoop: the batch being written
	wItems []outItem
	wCtrl  []byte
	iov    [][]byte
	nb     net.Buffers // kept here so WriteTo does not allocate
	stage  []byte      // coalescing buffer when coalesce, stageLen, allocated on first use
}

func (w *sender) init(conn net.Conn) {
	w.conn = conn
	w.wake = make(chan struct{}, 1)
	_, tcp := conn.(*net.TCPConn)
	w.coalesce = !tcp
}

func (w *sender) signal() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// enqueueData queues a DATA message prepared by prepareData; the sender
// owns fb from now on. It reports false (and recycles fb) once the tunnel is
// closed. Safe from any goroutine.
func (w *sender) enqueueData(fb *frameBuf, off, end int) bool {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		putFrameBuf(fb)
		return false
	}
	w.items = append(w.items, outItem{fb: fb, off: int32(off), end: int32(end)})
	w.mu.Unlock()
	w.signal()
	return true
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
	w.mu.Unlock()
	w.signal()
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
}

// takeBatch swaps the pending messages into the writer's batch. Called by
// tunnelWriteLoop only.
func (w *sender) takeBatch() bool {
	w.mu.Lock()
	w.items, w.wItems = w.wItems[:0], w.items
	w.ctrl, w.wCtrl = w.wCtrl[:0], w.ctrl
	w.mu.Unlock()
	return len(w.wItems) > 0
}

// writeBatch writes the batch taken by takeBatch (at most maxBatch messages
// per writev; adjacent control frames are merged into one slice) and
// recycles its buffers. Called by tunnelWriteLoop only.
func (w *sender) writeBatch() error {
	var err error
	items := w.wItems
	for len(items) > 0 && err == nil {
		k := min(len(items), maxBatch)
		iov := w.iov[:0]
		for _, it := range items[:k] {
			if it.fb != nil {
				iov = append(iov, it.fb.b[it.off:it.end])
				continue
			}
			iov = append(iov, w.wCtrl[it.off:it.end])
		}
		iov = mergeAdjacent(iov)
		w.iov = iov
		if w.coalesce {
			err = w.writeStaged(iov)
		} else {
			w.nb = iov
			_, err = w.nb.WriteTo(w.conn)
		}
		for _, it := range items[:k] {
			if it.fb != nil {
				putFrameBuf(it.fb)
			}
		}
		clear(w.iov[:cap(w.iov)])
		items = items[k:]
	}
	for _, it := range items {
		if it.fb != nil {
			putFrameBuf(it.fb)
		}
	}
	clear(w.wItems)
	w.wItems = w.wItems[:0]
	w.wCtrl = w.wCtrl[:0]
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
}

func (w *sender) isClosed() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.closed
}

// tunnelWriteLoop writes queued messages to the hub until the sender is
// shut and drained (or a write fails), then closes the connection.
func (s *session) tunnelWriteLoop() {
	w := &s.snd
	defer s.conn.Close()
	for {
		<-w.wake
		for w.takeBatch() {
			if err := w.writeBatch(); err != nil {
				s.close(closeCause{msg: "write: " + err.Error()})
				w.discard()
				return
			}
		}
		if w.isClosed() {
			return
		}
	}
}
