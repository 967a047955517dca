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
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"

	"github.com/nowconnect/nowconnect/codec"
	"github.com/nowconnect/nowconnect/internal/flow"
	"github.com/nowconnect/nowconnect/internal/inq"
)

// closeCause says why a tunnel closed.
type closeCause struct {
	msg    string
	code   ws.StatusCode // WebSocket close status to send; 0: send none (the connection failed)
	reason codec.Reason  // for metrics; ReasonNone: derived from code
}

func protoErr(format string, args ...any) closeCause {
	return closeCause{msg: fmt.Sprintf(format, args...), code: ws.StatusProtocolError, reason: codec.ReasonProtocol}
}

// session is one tunnel: a WebSocket to one hub URL from dial to close.
//
// Lock order: stream.mu, then session.fcMu or session.mu (never both);
// Agent.slotMu is never held with any of them.
type session struct {
	// set at construction
	a        *Agent
	index    int // which of the agent's tunnels
	urlIdx   int // which of the hub URLs
	version  int // protocol settled by the upgrade
	conn     net.Conn
	br       *bufio.Reader   // bytes the hub sent right after the handshake, or nil
	deadline time.Time       // for HELLO_ACK
	set      *connSet        // the connectors announced in HELLO
	succeeds *session        // a replacement (reload.go): the session it retires once up; nil otherwise
	settled  chan struct{}   // replacements: closed once HELLO_ACK was handled or the session ended
	gone     chan struct{}   // cap 1: a stream was forgotten (drainRetired waits on it)
	rbuf     []byte          // the tunnel read buffer, the tunnelLoop's
	parent   context.Context // Run's context
	ctx      context.Context // done when the session closes
	cancel   context.CancelFunc
	log      *slog.Logger // carries url and tunnel
	start    time.Time
	snd      sender
	wg       sync.WaitGroup // every goroutine of the session and its streams

	// set by the reader at HELLO_ACK, before any stream exists; read-only after
	peer     flow.Limits // what the hub grants agent→hub DATA
	local    flow.Limits // what we grant hub→agent DATA
	readMin  int         // read a target only with at least this much credit
	tunnelFC bool        // a tunnel-level window is in force (protocol 2)
	ackedAt  time.Time

	// owned by the reader
	acked bool

	ackedFlag atomic.Bool  // acked, for pingLoop
	lastRecv  atomic.Int64 // when bytes last arrived, ns since start
	minRTT    atomic.Int64 // recent minimum ping RTT (ns), for window growth

	fcMu sync.Mutex
	// guarded by fcMu
	fc      flow.Tunnel // tunnel-level credit and window, RTT
	waiters []*stream   // streams waiting for tunnel-level credit

	mu sync.Mutex
	// guarded by mu
	closed  bool
	cause   closeCause
	streams map[uint32]*stream // live streams by CID
	head    *stream            // every stream of the session (also detached ones)
	recent  flow.Recent        // streams that ended lately (late frames are ignored)
	snap    []*stream          // scratch for closeStreams

	// guarded by Agent.slotMu (reload.go)
	promoted bool // a replacement that took over its slot
	retired  bool // GOAWAY sent: the hub closes it once idle, and its tunnelLoop ends with it
	ended    bool // serve returned
}

// dialSession dials url i as tunnel idx and returns the session, ready to
// serve, or nil and, when the hub refused the upgrade with 401 or 403, the
// token it refused. rbuf becomes its read buffer; succeeds is the session
// a replacement retires once up (nil for a plain attempt). Called by
// tunnelLoop and rotateLoop.
func (a *Agent) dialSession(ctx context.Context, i, idx int, rbuf []byte, succeeds *session) (*session, string) {
	log := a.log.With("url", a.logURLs[i], "tunnel", idx)
	log.Info("connecting to cloud")
	start := time.Now()
	tok := a.token(log)
	hdr := http.Header{
		"Authorization":     {"Bearer " + tok},
		"Nowconnect-Tunnel": {strconv.Itoa(idx)},
	}
	var refusal string // the hub's reason, from the body of a refusal
	d := ws.Dialer{
		Header:    ws.HandshakeHeaderHTTP(hdr),
		TLSConfig: a.cfg.TLSConfig,
		Timeout:   a.cfg.HandshakeTimeout,
		OnStatusError: func(_ int, _ []byte, resp io.Reader) {
			refusal = refusalReason(resp)
		},
	}
	if a.cfg.MaxProtocol >= codec.Version {
		d.Protocols = []string{codec.Subprotocol}
	}
	conn, br, hs, err := d.Dial(ctx, a.urls[i])
	if err != nil {
		if ctx.Err() != nil {
			return nil, ""
		}
		msg := err.Error()
		if a.urls[i] != a.logURLs[i] {
			msg = strings.ReplaceAll(msg, a.urls[i], a.logURLs[i])
		}
		var se ws.StatusError
		if !errors.As(err, &se) {
			log.Warn("tunnel dial failed", "agent_id", a.cfg.AgentID, "error", msg)
			return nil, ""
		}
		authz := se == http.StatusUnauthorized || se == http.StatusForbidden
		if refusal == "" && authz {
			refusal = "token refused"
		}
		log.Warn("tunnel refused by hub", "agent_id", a.cfg.AgentID, "status", int(se), "reason", refusal)
		if authz {
			return nil, tok
		}
		return nil, ""
	}
	s := &session{
		a:        a,
		index:    idx,
		urlIdx:   i,
		version:  codec.Version1,
		conn:     conn,
		br:       br,
		deadline: start.Add(a.cfg.HandshakeTimeout),
		set:      a.conns.Load(),
		succeeds: succeeds,
		rbuf:     rbuf,
		gone:     make(chan struct{}, 1),
		parent:   ctx,
		log:      log,
		start:    start,
		streams:  make(map[uint32]*stream),
	}
	if succeeds != nil {
		s.settled = make(chan struct{})
	}
	if hs.Protocol == codec.Subprotocol {
		s.version = codec.Version
	}
	s.ctx, s.cancel = context.WithCancel(ctx)
	s.snd.init(conn)
	return s, ""
}

// maxRefusalLen bounds the part of a refusal's body that is read and
// logged.
const maxRefusalLen = 256

// refusalReason returns the start of the body of the hub's non-101 answer
// (resp: the whole response from its status line), printable ASCII only:
// the hub's short reason ("unauthorized: expired"). It reads at most
// maxRefusalLen bytes of body, within the handshake's deadline; "" if the
// response does not parse or has no body.
func refusalReason(resp io.Reader) string {
	r, err := http.ReadResponse(bufio.NewReader(resp), nil)
	if err != nil {
		return ""
	}
	defer r.Body.Close()
	var buf [maxRefusalLen]byte
	n, _ := io.ReadFull(r.Body, buf[:])
	out := buf[:0]
	for _, c := range buf[:n] {
		switch {
		case c >= 0x20 && c < 0x7f:
			out = append(out, c)
		case c == '\n' || c == '\r' || c == '\t':
			out = append(out, ' ')
		}
	}
	return strings.Join(strings.Fields(string(out)), " ")
}

// serve runs the tunnel on the caller's goroutine until it closes, then
// closes every stream and waits for all the session's goroutines. It
// returns how long the tunnel was up (0 if HELLO_ACK never arrived).
func (s *session) serve() time.Duration {
	a := s.a
	s.wg.Go(s.tunnelWriteLoop)
	s.wg.Go(s.pingLoop)
	h := codec.Hello{
		Version:    uint8(s.version),
		Window:     uint32(a.limits.Stream),
		AgentID:    a.cfg.AgentID,
		Connectors: s.set.names,
	}
	if s.version >= codec.Version {
		h.MaxWindow, h.TunnelWindow, h.Instance = uint32(a.limits.MaxStream), uint32(a.limits.Tunnel), a.instance
	}
	hello, err := codec.AppendHello(nil, h)
	if err == nil {
		_ = s.conn.SetReadDeadline(s.deadline)
		s.send(hello)
		err = s.tunnelReadLoop(s.br)
		s.close(readCause(err, s.acked))
		if a.isRetired(s) {
			s.drainRetired()
		}
	} else {
		s.close(closeCause{msg: "encode HELLO: " + err.Error(), code: ws.StatusInternalServerError})
	}
	if s.acked {
		a.up.Add(-1)
	} else if s.settled != nil {
		close(s.settled) // a replacement that never came up
	}
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
	if a.isRetired(s) {
		// The hub closed it once idle, as GOAWAY asked: its replacement serves.
		cause.reason, cause.msg, level = codec.ReasonSuperseded, "retired: "+cause.msg, slog.LevelInfo
	}
	a.m.tunnelClose(cause.metricReason())
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
		return closeCause{msg: "hub closed the connection", reason: codec.ReasonPeerClosed}
	case !acked && errors.Is(err, os.ErrDeadlineExceeded):
		return closeCause{msg: "handshake: no HELLO_ACK in time", reason: codec.ReasonHandshake}
	default:
		return closeCause{msg: "read: " + err.Error(), reason: codec.ReasonIOError}
	}
}

func (c closeCause) Error() string { return c.msg }

// metricReason names the cause for nowconnect_agent_tunnel_closes_total.
func (c closeCause) metricReason() codec.Reason {
	switch {
	case c.reason != codec.ReasonNone:
		return c.reason
	case c.code == ws.StatusProtocolError, c.code == ws.StatusUnsupportedData, c.code == ws.StatusMessageTooBig:
		return codec.ReasonProtocol
	case c.code == 0:
		return codec.ReasonIOError
	}
	return codec.ReasonPeerClosed
}

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

func (s *session) sendPing(t codec.FrameType, opaque uint64) {
	var b [codec.HeaderLen + 8]byte
	s.send(codec.AppendPing(b[:0], t, opaque))
}

// rtt returns the recent minimum round trip, 0 before the first PONG.
func (s *session) rtt() time.Duration { return time.Duration(s.minRTT.Load()) }

// releaseTunnel returns tunnel-level credit for n hub→agent bytes that left
// the agent's buffers (written to a target, or dropped with a stream). Safe
// from any goroutine; callers may hold a stream's mu.
func (s *session) releaseTunnel(n int) {
	if !s.tunnelFC || n <= 0 {
		return
	}
	s.fcMu.Lock()
	inc := s.fc.Recv.Release(n, time.Now(), s.fc.RTT.Min())
	s.fcMu.Unlock()
	if inc > 0 {
		s.sendWindow(0, inc)
	}
}

// reserveLocked takes up to n bytes of tunnel-level credit for one read of
// st's target. Below least it takes nothing, queues st to be woken by the
// next tunnel-level WINDOW and returns 0. Called with st.mu held.
func (s *session) reserveLocked(st *stream, n, least int) int {
	if !s.tunnelFC {
		return n
	}
	s.fcMu.Lock()
	defer s.fcMu.Unlock()
	avail := s.fc.Send.Avail()
	if avail < least {
		if !st.tunnelWait {
			st.tunnelWait = true
			s.waiters = append(s.waiters, st)
		}
		return 0
	}
	n = min(n, avail)
	s.fc.Send.Take(n)
	return n
}

// refund gives back tunnel-level credit reserved for a read that took less.
func (s *session) refund(n int) {
	if !s.tunnelFC || n <= 0 {
		return
	}
	s.fcMu.Lock()
	s.fc.Send.Refund(n)
	s.fcMu.Unlock()
}

// tunnelWindow applies a tunnel-level WINDOW and wakes the streams that
// waited for it. Called by the reader.
func (s *session) tunnelWindow(p []byte) error {
	inc, err := codec.ParseWindow(p)
	if err != nil {
		return protoErr("tunnel WINDOW: %v", err)
	}
	if !s.tunnelFC {
		return protoErr("tunnel-level WINDOW in protocol %d", s.version)
	}
	s.fcMu.Lock()
	err = s.fc.Send.Grant(inc)
	waiters := s.waiters
	s.waiters = nil
	s.fcMu.Unlock()
	if err != nil {
		return protoErr("tunnel WINDOW: %v", err)
	}
	for i, st := range waiters {
		waiters[i] = nil
		st.mu.Lock()
		st.tunnelWait = false
		st.creditLocked()
		st.mu.Unlock()
	}
	return nil
}

// pingLoop sends PING every PingInterval, closes the tunnel when nothing
// was received for PingTimeout, and closes it when Run's context ends.
func (s *session) pingLoop() {
	cfg := &s.a.cfg
	t := time.NewTicker(max(time.Millisecond, min(cfg.PingInterval, cfg.PingTimeout/4)))
	defer t.Stop()
	last := time.Now()
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
			if idle, silent := s.silentFor(now); silent {
				s.close(closeCause{msg: fmt.Sprintf("ping timeout: nothing received for %s", idle.Round(time.Millisecond)),
					code: ws.StatusGoingAway})
				return
			}
			if now.Sub(last) >= cfg.PingInterval {
				last = now
				s.sendPing(codec.FramePing, uint64(now.Sub(s.start)))
			}
		}
	}
}

// silentFor returns how long nothing was read from the hub, and whether
// that is past PingTimeout with nothing waiting in the socket either: bytes
// waiting mean the hub spoke while this agent did not run (SIGSTOP, a paused
// VM) and its reader has not caught up, which is not silence (internal/inq).
func (s *session) silentFor(now time.Time) (time.Duration, bool) {
	idle := now.Sub(s.start) - time.Duration(s.lastRecv.Load())
	return idle, idle > s.a.cfg.PingTimeout && !inq.Pending(s.conn)
}

// tunnelReadLoop reads WebSocket messages from the hub and dispatches the
// tunnel frames until an error. It runs on Run's goroutine. br holds bytes
// the hub sent right after the handshake, if any.
func (s *session) tunnelReadLoop(br *bufio.Reader) error {
	buf := s.rbuf
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
		s.sendPing(codec.FramePong, opaque)
	case codec.FramePong:
		s.pong(p)
	case codec.FrameHello:
		return protoErr("HELLO from hub")
	case codec.FrameGoAway:
		return protoErr("GOAWAY from hub")
	case codec.FrameOpen:
		s.handleOpen(h.CID, p)
	case codec.FrameData:
		// Every DATA byte counts at the tunnel level, also for a CID that
		// has just ended (released at once below).
		if s.tunnelFC {
			s.fcMu.Lock()
			err := s.fc.Recv.Receive(len(p))
			s.fcMu.Unlock()
			if err != nil {
				return protoErr("tunnel: %v", err)
			}
		}
		if st := s.lookup(h.CID); st != nil {
			st.fromHub(p)
		} else {
			s.releaseTunnel(len(p))
			s.unknownCID(h.CID, h.Type)
		}
	case codec.FrameFin:
		if st := s.lookup(h.CID); st != nil {
			st.finFromHub()
		} else {
			s.unknownCID(h.CID, h.Type)
		}
	case codec.FrameWindow:
		if h.CID == 0 {
			return s.tunnelWindow(p)
		}
		n, err := codec.ParseWindow(p)
		switch st := s.lookup(h.CID); {
		case st == nil:
			s.unknownCID(h.CID, h.Type)
		case err != nil:
			st.abort(codec.ReasonProtocol, true, "bad WINDOW")
		default:
			st.addCredit(n)
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
			s.unknownCID(h.CID, h.Type)
		}
	}
	return nil
}

// pong takes an RTT sample from our PING's send time.
func (s *session) pong(p []byte) {
	v, err := codec.ParsePing(p)
	if err != nil {
		return
	}
	rtt := time.Since(s.start) - time.Duration(v)
	if rtt <= 0 || rtt > time.Hour {
		return // not one of ours
	}
	s.fcMu.Lock()
	s.fc.RTT.Sample(rtt)
	m := s.fc.RTT.Min()
	s.fcMu.Unlock()
	s.minRTT.Store(int64(m))
	s.a.m.rtt(rtt)
}

func (s *session) handleHelloAck(p []byte) error {
	if s.acked {
		return protoErr("duplicate HELLO_ACK")
	}
	ack, err := codec.ParseHelloAck(p)
	if err != nil {
		return protoErr("HELLO_ACK: %v", err)
	}
	if int(ack.Version) != s.version {
		return protoErr("hub speaks protocol version %d, the upgrade settled %d", ack.Version, s.version)
	}
	s.peer, s.local = flow.Fixed(int(ack.Window)), flow.Fixed(s.a.limits.Stream)
	if s.version >= codec.Version {
		s.peer = flow.Limits{Stream: int(ack.Window), MaxStream: int(ack.MaxWindow), Tunnel: int(ack.TunnelWindow)}
		s.local = s.a.limits
	}
	if err := s.peer.Validate(); err != nil {
		return protoErr("HELLO_ACK: %v", err)
	}
	if err := s.conn.SetReadDeadline(time.Time{}); err != nil {
		return closeCause{msg: "clear read deadline: " + err.Error()}
	}
	if err := s.a.joinSlot(s); err != nil {
		return err
	}
	s.fcMu.Lock()
	s.fc = flow.NewTunnel(s.peer, s.local)
	s.fcMu.Unlock()
	s.tunnelFC = s.peer.Tunnel > 0 || s.local.Tunnel > 0
	s.readMin = min(16<<10, max(1, s.peer.Stream/4))
	s.acked = true
	s.ackedAt = time.Now()
	s.ackedFlag.Store(true)
	s.lastRecv.Store(int64(time.Since(s.start)))
	// acked from here on: serve counts the tunnel down again when it ends
	s.a.connects.Add(1)
	s.a.up.Add(1)
	s.sendPing(codec.FramePing, uint64(time.Since(s.start))) // a first RTT sample for window growth
	s.log.Info("connection open", "agent_id", s.a.cfg.AgentID, "protocol", s.version,
		"hub_window", s.peer.Stream, "hub_max_window", s.peer.MaxStream, "hub_tunnel_window", s.peer.Tunnel)
	return nil
}

// lookup returns the live stream of cid, or nil.
func (s *session) lookup(cid uint32) *stream {
	s.mu.Lock()
	st := s.streams[cid]
	s.mu.Unlock()
	return st
}

// unknownCID applies the late-frame rule (internal/flow) to a frame for a
// CID without a live stream: ignored if the CID ended lately, else RST.
func (s *session) unknownCID(cid uint32, t codec.FrameType) {
	s.mu.Lock()
	v := s.recent.Unknown(cid, t)
	s.mu.Unlock()
	if v == flow.Reset {
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
