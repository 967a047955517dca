package engine

import (
	"context"
	"errors"
	"fmt"

	"github.com/gobwas/ws"
	"github.com/panjf2000/gnet/v2"

	"github.com/nowconnect/nowconnect/codec"
	"github.com/nowconnect/nowconnect/internal/inq"
)

// WSHandler receives the messages of a server-side WebSocket connection.
// Every method runs on the connection's loop.
type WSHandler interface {
	OnOpen(w *WSConn)
	// OnMessage gets one binary message, unmasked in place; p is valid only
	// during the call. A non-nil error closes the connection.
	OnMessage(w *WSConn, p []byte) error
	// OnClose runs once, whatever closed the connection.
	OnClose(w *WSConn, err error)
}

// WebSocket errors that close a connection.
var (
	ErrWSUnmasked   = errors.New("websocket: client frame not masked")
	ErrWSFragmented = errors.New("websocket: fragmented or text message")
	ErrWSTooLarge   = errors.New("websocket: message too large")
	ErrWSClosed     = errors.New("websocket: closed by peer")
	// ErrWSClosedLocally is the reason of a connection closed by this side
	// without one of its own (the engine stopping).
	ErrWSClosedLocally = errors.New("websocket: closed locally")
)

// WSConn is a server-side WebSocket connection on the control port. Each
// binary message carries one tunnel or mesh frame, so messages are bounded
// by codec.MaxFrameLen.
type WSConn struct {
	// set at construction
	c    gnet.Conn
	loop *Loop
	h    WSHandler

	// owned by the loop
	hdr    [codec.MaxWSHeaderLen + codec.HeaderLen + 16]byte
	closed bool
	err    error
	// batch gathers small messages written during one pass of the loop;
	// one write sends them all when the loop runs its queued tasks.
	batch     []byte
	flushWait bool // a flush is queued on the loop
}

// Batching bounds: messages up to smallMsg bytes are gathered, and the
// batch is written at once when it reaches maxBatch.
const (
	smallMsg = 4 << 10
	maxBatch = 64 << 10
)

// Conn returns the underlying connection.
func (w *WSConn) Conn() gnet.Conn { return w.c }

// Loop returns the connection's loop.
func (w *WSConn) Loop() *Loop { return w.loop }

// Closed reports whether the connection is closed or closing.
func (w *WSConn) Closed() bool { return w.closed }

// OutboundBuffered returns the bytes gnet holds for this connection.
func (w *WSConn) OutboundBuffered() int { return w.c.OutboundBuffered() }

// Pending reports whether received bytes wait in the socket, not yet read
// by gnet (internal/inq). A liveness check asks it before calling the peer
// silent. gnet's own buffer does not count: an incomplete frame may sit
// there for good when the peer died in the middle of it. Call on the loop.
func (w *WSConn) Pending() bool { return inq.PendingFD(w.c.Fd()) > 0 }

// OnTraffic parses every complete frame in gnet's buffer.
func (w *WSConn) OnTraffic(c gnet.Conn) gnet.Action {
	buf, _ := c.Peek(-1)
	used := 0
	for !w.closed {
		b := buf[used:]
		h, n, err := codec.ParseWSHeader(b)
		if err == codec.ErrShortHeader {
			break
		}
		if err != nil {
			w.fail(err)
			break
		}
		if !h.Masked {
			w.fail(ErrWSUnmasked)
			break
		}
		if h.Length > codec.MaxFrameLen {
			w.fail(fmt.Errorf("%w: %d bytes", ErrWSTooLarge, h.Length))
			break
		}
		end := n + int(h.Length)
		if len(b) < end {
			break
		}
		p := b[n:end]
		ws.Cipher(p, h.Mask, 0)
		used += end
		switch h.OpCode {
		case ws.OpBinary:
			if !h.Fin {
				w.fail(ErrWSFragmented)
				break
			}
			if err := w.h.OnMessage(w, p); err != nil {
				w.fail(err)
			}
		case ws.OpPing:
			w.writeControl(ws.OpPong, p)
		case ws.OpPong:
		case ws.OpClose:
			w.writeControl(ws.OpClose, nil)
			w.fail(ErrWSClosed)
		default:
			w.fail(ErrWSFragmented)
		}
	}
	if w.closed {
		return gnet.Close
	}
	// Never Discard(0): gnet treats n <= 0 as "discard everything", which
	// would drop the partial frame waiting for its remaining bytes.
	if used > 0 {
		_, _ = c.Discard(used)
	}
	return gnet.None
}

// OnClose tells the handler once.
func (w *WSConn) OnClose(_ gnet.Conn, err error) {
	if w.err == nil {
		w.err = err // gnet's: io.EOF when the peer closed, a socket error, or nil
	}
	if w.err == nil {
		w.err = ErrWSClosedLocally // gnet reports our own closes (engine stop) without an error
	}
	w.closed = true
	h := w.h
	w.h = nopWS{}
	h.OnClose(w, w.err)
}

func (w *WSConn) fail(err error) {
	if w.err == nil {
		w.err = err
	}
	w.closed = true
}

// Close closes the connection with err as the reason given to OnClose.
// Call on the loop, never from within this connection's OnTraffic (return
// an error from OnMessage there instead).
func (w *WSConn) Close(err error) {
	if w.closed {
		return
	}
	w.fail(err)
	_ = w.loop.el.Close(w.c)
}

// WriteMessage sends a and b as one binary message (a frame header and its
// payload); both are reusable on return. Small messages are gathered and
// written together after the loop's current pass of events (one syscall
// for many requests); a large one goes out at once, zero-copy, behind
// whatever was gathered before it. Call on the loop.
func (w *WSConn) WriteMessage(a, b []byte) error {
	if w.closed {
		return ErrWSClosed
	}
	size := len(a) + len(b)
	n := codec.PutWSHeader(w.hdr[:], codec.BinaryHeader(size))
	if size <= smallMsg {
		if w.batch == nil {
			w.batch = make([]byte, 0, maxBatch+smallMsg+codec.MaxWSHeaderLen)
		}
		w.batch = append(append(append(w.batch, w.hdr[:n]...), a...), b...)
		if len(w.batch) >= maxBatch {
			return w.flush()
		}
		if !w.flushWait {
			w.flushWait = true
			if err := w.loop.el.Execute(context.Background(), w); err != nil {
				return w.flush()
			}
		}
		return nil
	}
	iov := w.loop.Iov[:0]
	if len(w.batch) > 0 {
		iov = append(iov, w.batch)
	}
	iov = append(iov, w.hdr[:n], a)
	if len(b) > 0 {
		iov = append(iov, b)
	}
	_, err := w.c.Writev(iov)
	clear(iov)
	w.batch = w.batch[:0]
	return err
}

// Run writes the gathered small messages; it is the task WriteMessage
// queues on the loop (gnet.Runnable).
func (w *WSConn) Run(context.Context) error {
	w.flushWait = false
	if err := w.flush(); err != nil && !w.closed {
		w.Close(err)
	}
	return nil
}

func (w *WSConn) flush() error {
	if len(w.batch) == 0 || w.closed {
		w.batch = w.batch[:0]
		return nil
	}
	_, err := w.c.Write(w.batch)
	w.batch = w.batch[:0]
	return err
}

func (w *WSConn) writeControl(op ws.OpCode, p []byte) {
	if err := w.flush(); err != nil { // keep the order of messages
		return
	}
	if len(p) > 125 {
		p = p[:125]
	}
	n := codec.PutWSHeader(w.hdr[:], ws.Header{Fin: true, OpCode: op, Length: int64(len(p))})
	iov := w.loop.Iov[:0]
	iov = append(iov, w.hdr[:n], p)
	_, _ = w.c.Writev(iov)
	clear(iov)
}

type nopWS struct{}

func (nopWS) OnOpen(*WSConn)                  {}
func (nopWS) OnMessage(*WSConn, []byte) error { return nil }
func (nopWS) OnClose(*WSConn, error)          {}
