package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"

	"github.com/nowconnect/nowconnect/codec"
)

// recentCIDs is how many quietly ended CIDs a session remembers: streams
// that finished with both FINs, and OPENs answered with OPEN_ERR. Frames the
// hub sent before it learnt the end (WINDOW returning credit for our last
// DATA, DATA pipelined behind an OPEN whose dial failed) are then ignored
// rather than answered with RST(unknown_cid), which could abort the hub's
// side of a stream that is still delivering its last bytes.
const recentCIDs = 1024

// closeCause says why a tunnel closed.
type closeCause struct {
	msg  string
	code ws.StatusCode // WebSocket close status to send; 0: send none (the connection failed)
}

func protoErr(format string, args ...any) closeCause {
	return closeCause{msg: fmt.Sprintf(format, args...), code: ws.StatusProtocolError}
}

// session is one tunnel: a WebSocket to one hub URL from dial to close.
type session struct {
	// set at construction
	a      *Agent
	conn   net.Conn
	parent context.Context // Run's context
	ctx    context.Context // done when the session closes
	cancel context.CancelFunc
	log    *slog.Logger // carries url
	start  time.Time
	snd    sender
	wg     sync.WaitGroup // every goroutine of the session and its streams

	// set by the reader at HELLO_ACK, before any stream exists; read-only after
	hubWindow int // W_hub: credit per stream for agent→hub DATA
	readMin   int // read a target only with at least this much credit
	ackedAt   time.Time

	// owned by the reader (Run's goroutine)
	acked bool

	ackedFlag atomic.Bool  // acked, for pingLoop
	lastRecv  atomic.Int64 // when bytes last arrived, ns since start

	mu sync.Mutex
	// guarded by mu
	closed     bool
	cause      closeCause
	streams    map[uint32]*stream // live streams by CID
	head       *stream            // every stream of the session (also detached ones)
	recent     [recentCIDs]uint32 // quietly ended CIDs, a ring
	recentNext int
	snap       []*stream // scratch for closeStreams
}

// runSession dials url i, serves the tunnel until it drops and returns how
// long it was up (0 if HELLO_ACK never arrived). Called by Run only.
func (a *Agent) runSession(ctx context.Context, i int) time.Duration {
	log := a.log.With("url", a.logURLs[i])
	log.Info("connecting to cloud")
	start := time.Now()
	d := ws.Dialer{
		Header:    ws.HandshakeHeaderHTTP(http.Header{"Authorization": {"Bearer " + a.cfg.Token}}),
		TLSConfig: a.cfg.TLSConfig,
		Timeout:   a.cfg.HandshakeTimeout,
	}
	conn, br, _, err := d.Dial(ctx, a.urls[i])
	if err != nil {
		if ctx.Err() != nil {
			return 0
		}
		msg := err.Error()
		if a.urls[i] != a.logURLs[i] {
			msg = strings.ReplaceAll(msg, a.urls[i], a.logURLs[i])
		}
		var se ws.StatusError
		if errors.As(err, &se) {
			hint := ""
			if se == http.StatusUnauthorized || se == http.StatusForbidden {
				hint = "token refused"
			}
			log.Warn("tunnel refused by hub", "agent_id", a.cfg.AgentID, "status", int(se), "hint", hint)
		} else {
			log.Warn("tunnel dial failed", "agent_id", a.cfg.AgentID, "error", msg)
		}
		return 0
	}
	s := &session{
		a:       a,
		conn:    conn,
		parent:  ctx,
		log:     log,
		start:   start,
		streams: make(map[uint32]*stream),
	}
	s.ctx, s.cancel = context.WithCancel(ctx)
	s.snd.init(conn)
	return s.serve(br, start.Add(a.cfg.HandshakeTimeout))
}

// serve runs the tunnel on the caller's goroutine until it closes, then
// closes every stream and waits for all the session's goroutines.
func (s *session) serve(br *bufio.Reader, deadline time.Time) time.Duration {
	a := s.a
	s.wg.Go(s.tunnelWriteLoop)
	s.wg.Go(s.pingLoop)
	hello, err := codec.AppendHello(nil, codec.Hello{
		Version:    codec.Version,
		Window:     uint32(a.window),
		AgentID:    a.cfg.AgentID,
		Connectors: a.names,
	})
	if err == nil {
		_ = s.conn.SetReadDeadline(deadline)
		s.send(hello)
		err = s.tunnelReadLoop(br)
		s.close(readCause(err, s.acked))
	} else {
		s.close(closeCause{msg: "encode HELLO: " + err.Error(), code: ws.StatusInternalServerError})
	}
	a.connected.Store(false)
	s.closeStreams()
	s.wg.Wait()
	s.mu.Lock()
	cause := s.cause
	s.mu.Unlock()
	var up time.Duration
	if s.acked {
		up = time.Since(s.ackedAt)
	}
	level := slog.LevelWarn
	if s.parent.Err() != nil {
		level = slog.LevelInfo
	}
	s.log.Log(context.Background(), level, "tunnel closed",
		"agent_id", a.cfg.AgentID, "reason", cause.msg, "up", up.Round(time.Millisecond).String())
	return up
}

// readCause turns the reader's error into a close cause.
func readCause(err error, acked bool) closeCause {
	var c closeCause
	switch {
	case errors.As(err, &c):
		return c
	case errors.Is(err, io.EOF):
		return closeCause{msg: "hub closed the connection"}
	case !acked && errors.Is(err, os.ErrDeadlineExceeded):
		return closeCause{msg: "handshake: no HELLO_ACK in time"}
	default:
		return closeCause{msg: "read: " + err.Error()}
	}
}

func (c closeCause) Error() string { return c.msg }

// close closes the tunnel once, recording the first cause. With a close
// status, frames already queued (a last FIN, say) and a WebSocket close
// frame are flushed first, bounded by a second; without one the connection
// closes at once. Safe from any goroutine.
func (s *session) close(c closeCause) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed, s.cause = true, c
	s.mu.Unlock()
	s.cancel()
	if c.code == 0 {
		_ = s.conn.Close()
		s.snd.shut(0, nil)
		return
	}
	var p [125]byte
	p[0], p[1] = byte(c.code>>8), byte(c.code)
	n := 2 + copy(p[2:], c.msg)
	_ = s.conn.SetWriteDeadline(time.Now().Add(time.Second))
	s.snd.shut(ws.OpClose, p[:n])
}

// send queues a control frame. If the control arena is full (the hub floods
// us while not reading), the tunnel is closed. Safe from any goroutine.
func (s *session) send(f []byte) {
	if err := s.snd.enqueueFrame(f); err == errCtrlFull {
		s.close(closeCause{msg: "control frames backed up: hub not reading"})
	}
}

func (s *session) sendEmpty(t codec.FrameType, cid uint32) {
	var b [codec.HeaderLen]byte
	s.send(codec.AppendEmpty(b[:0], t, cid))
}

func (s *session) sendReason(t codec.FrameType, cid uint32, r codec.Reason, msg string) {
	var b [codec.HeaderLen + 1 + codec.MaxReasonLen]byte
	s.send(codec.AppendReason(b[:0], t, cid, r, msg))
}

func (s *session) sendWindow(cid uint32, n int) {
	var b [codec.HeaderLen + 4]byte
	s.send(codec.AppendWindow(b[:0], cid, uint32(n)))
}

// pingLoop sends PING every PingInterval, closes the tunnel when nothing
// was received for PingTimeout, and closes it when Run's context ends.
func (s *session) pingLoop() {
	cfg := &s.a.cfg
	t := time.NewTicker(max(time.Millisecond, min(cfg.PingInterval, cfg.PingTimeout/4)))
	defer t.Stop()
	last := time.Now()
	var opaque uint64
	for {
		select {
		case <-s.ctx.Done():
			if s.parent.Err() != nil {
				s.close(closeCause{msg: "shutdown", code: ws.StatusGoingAway})
			}
			return
		case now := <-t.C:
			if !s.ackedFlag.Load() {
				continue // the handshake deadline applies
			}
			if idle := now.Sub(s.start) - time.Duration(s.lastRecv.Load()); idle > cfg.PingTimeout {
				s.close(closeCause{msg: fmt.Sprintf("ping timeout: nothing received for %s", idle.Round(time.Millisecond)),
					code: ws.StatusGoingAway})
				return
			}
			if now.Sub(last) >= cfg.PingInterval {
				last = now
				opaque++
				var b [codec.HeaderLen + 8]byte
				s.send(codec.AppendPing(b[:0], codec.FramePing, opaque))
			}
		}
	}
}

// tunnelReadLoop reads WebSocket messages from the hub and dispatches the
// tunnel frames until an error. It runs on Run's goroutine. br holds bytes
// the hub sent right after the handshake, if any.
func (s *session) tunnelReadLoop(br *bufio.Reader) error {
	buf := s.a.rbuf
	r, w := 0, 0
	if br != nil {
		if n := br.Buffered(); n > 0 {
			w, _ = br.Read(buf[:min(n, len(buf))])
		}
		ws.PutReader(br)
	}
	var rerr error
	for {
		for {
			h, hn, err := codec.ParseWSHeader(buf[r:w])
			if err == codec.ErrShortHeader {
				break
			}
			if err != nil {
				return protoErr("websocket header: %v", err)
			}
			if h.Masked {
				return protoErr("masked frame from hub")
			}
			if h.Length > codec.MaxFrameLen {
				return closeCause{msg: fmt.Sprintf("message of %d bytes exceeds %d", h.Length, codec.MaxFrameLen),
					code: ws.StatusMessageTooBig}
			}
			total := hn + int(h.Length)
			if w-r < total {
				break
			}
			p := buf[r+hn : r+total]
			r += total
			if err := s.handleWS(h, p); err != nil {
				return err
			}
		}
		if rerr != nil {
			return rerr
		}
		if r == w {
			r, w = 0, 0
		} else if len(buf)-r < maxMsgLen {
			w = copy(buf, buf[r:w])
			r = 0
		}
		n, err := s.conn.Read(buf[w:])
		if n > 0 {
			w += n
			s.lastRecv.Store(int64(time.Since(s.start)))
		}
		rerr = err
	}
}

// handleWS handles one WebSocket message.
func (s *session) handleWS(h ws.Header, p []byte) error {
	switch h.OpCode {
	case ws.OpBinary:
		if !h.Fin {
			return protoErr("fragmented message from hub")
		}
		return s.handleFrame(p)
	case ws.OpContinuation:
		return protoErr("fragmented message from hub")
	case ws.OpText:
		return closeCause{msg: "text message from hub", code: ws.StatusUnsupportedData}
	case ws.OpPing:
		if err := s.snd.enqueueWS(ws.OpPong, p); err == errCtrlFull {
			return closeCause{msg: "control frames backed up: hub not reading"}
		}
		return nil
	case ws.OpPong:
		return nil
	case ws.OpClose:
		code := ws.StatusNoStatusRcvd
		if len(p) >= 2 {
			code = ws.StatusCode(uint16(p[0])<<8 | uint16(p[1]))
		}
		return closeCause{msg: fmt.Sprintf("hub sent close %d", code), code: ws.StatusNormalClosure}
	default:
		return protoErr("websocket opcode %d", h.OpCode)
	}
}

// handleFrame dispatches one tunnel frame. A non-nil error closes the
// tunnel; stream-level problems are answered on the stream.
func (s *session) handleFrame(b []byte) error {
	h, p, err := codec.ParseFrame(b)
	if err != nil {
		return protoErr("frame %s cid %d: %v", h.Type, h.CID, err)
	}
	if !s.acked && h.Type != codec.FrameHelloAck && h.Type != codec.FramePing && h.Type != codec.FramePong {
		return protoErr("%s before HELLO_ACK", h.Type)
	}
	switch h.Type {
	case codec.FrameHelloAck:
		return s.handleHelloAck(p)
	case codec.FramePing:
		opaque, _ := codec.ParsePing(p)
		var b [codec.HeaderLen + 8]byte
		s.send(codec.AppendPing(b[:0], codec.FramePong, opaque))
	case codec.FramePong:
	case codec.FrameHello:
		return protoErr("HELLO from hub")
	case codec.FrameOpen:
		s.handleOpen(h.CID, p)
	case codec.FrameData:
		if st := s.lookup(h.CID); st != nil {
			st.fromHub(p)
		} else {
			s.unknownCID(h.CID)
		}
	case codec.FrameFin:
		if st := s.lookup(h.CID); st != nil {
			st.finFromHub()
		} else {
			s.unknownCID(h.CID)
		}
	case codec.FrameWindow:
		n, err := codec.ParseWindow(p)
		switch st := s.lookup(h.CID); {
		case st == nil:
			s.unknownCID(h.CID)
		case err != nil:
			st.abort(codec.ReasonProtocol, true, "bad WINDOW")
		default:
			st.addCredit(int(n))
		}
	case codec.FrameRst:
		if st := s.lookup(h.CID); st != nil {
			r, _, _ := codec.ParseReason(p)
			st.abort(r, false, "reset by hub")
		}
	case codec.FrameOpenAck, codec.FrameOpenErr:
		if st := s.lookup(h.CID); st != nil {
			st.abort(codec.ReasonProtocol, true, h.Type.String()+" from hub")
		} else {
			s.sendReason(codec.FrameRst, h.CID, codec.ReasonUnknownCID, "")
		}
	}
	return nil
}

func (s *session) handleHelloAck(p []byte) error {
	if s.acked {
		return protoErr("duplicate HELLO_ACK")
	}
	v, win, err := codec.ParseHelloAck(p)
	if err != nil {
		return protoErr("HELLO_ACK: %v", err)
	}
	if v != codec.Version {
		return protoErr("hub speaks protocol version %d, agent %d", v, codec.Version)
	}
	s.hubWindow = int(win)
	s.readMin = min(16<<10, max(1, s.hubWindow/4))
	s.acked = true
	s.ackedAt = time.Now()
	s.ackedFlag.Store(true)
	s.lastRecv.Store(int64(time.Since(s.start)))
	if err := s.conn.SetReadDeadline(time.Time{}); err != nil {
		return closeCause{msg: "clear read deadline: " + err.Error()}
	}
	s.a.connects.Add(1)
	s.a.connected.Store(true)
	s.log.Info("connection open", "agent_id", s.a.cfg.AgentID, "hub_window", s.hubWindow)
	return nil
}

// lookup returns the live stream of cid, or nil.
func (s *session) lookup(cid uint32) *stream {
	s.mu.Lock()
	st := s.streams[cid]
	s.mu.Unlock()
	return st
}

// unknownCID answers DATA, FIN or WINDOW for a CID without a stream: RST,
// unless the CID ended quietly a moment ago (see recentCIDs).
func (s *session) unknownCID(cid uint32) {
	s.mu.Lock()
	recent := slices.Contains(s.recent[:], cid)
	s.mu.Unlock()
	if !recent {
		s.sendReason(codec.FrameRst, cid, codec.ReasonUnknownCID, "")
	}
}

// closeStreams ends every stream of the closed tunnel (no RST: the tunnel
// is gone). Called by serve after the reader exited, so no stream is added.
func (s *session) closeStreams() {
	s.mu.Lock()
	snap := s.snap[:0]
	for st := s.head; st != nil; st = st.next {
		snap = append(snap, st)
	}
	s.mu.Unlock()
	for _, st := range snap {
		st.abort(codec.ReasonAgentGone, false, "tunnel closed")
	}
	clear(snap)
	s.snap = snap[:0]
}
