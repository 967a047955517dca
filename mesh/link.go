package mesh

import (
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"

	"github.com/nowconnect/nowconnect/codec"
	"github.com/nowconnect/nowconnect/internal/inq"
)

// A Link is one hub-to-hub WebSocket carrying mesh frames (codec/mesh.go). Its
// states, from handshake to done (any state may go to closing):
//
//	handshake ──► registered ──► up ──► closing ──► done
//
// In detail:
//
//   - handshake: the dialer sends M_HELLO at once; the acceptor reads it, applies the
//     duplicate rule (Manager.register) and only then answers with its own M_HELLO,
//     or closes the link with reason "duplicate" (or "self", "auth"). The dialer reads
//     the acceptor's M_HELLO and applies the rule too. Holding back the acceptor's
//     M_HELLO lets the hub that decides (the acceptor) refuse a losing link before its
//     peer ever sees it up, so that LinkUp fires for the surviving link only.
//   - registered: the manager's link to the peer; the writer runs, sends are accepted.
//   - up: Handler.LinkUp has returned (it is called right after registering, or once
//     the link this one replaces is done); Manager.Link and Links return it from now
//     on, so the hub never finds a link it has not been told about.
//   - closing: the first cause is recorded, sends fail with ErrLinkDown, the writer
//     flushes a WebSocket close frame when the cause has one and closes the socket.
//   - done: the reader and the writer have exited, Handler.LinkDown has been called
//     (only for a link that was up), Done is closed.
//
// Goroutines: linkReadLoop (handshake, then every frame, then LinkDown) and, from
// registered on, linkWriteLoop (link_send.go). Both are owned by the Manager. A plain
// TCP link may be read on an event loop of the hub instead (ReadOn, link_readon.go):
// linkReadLoop then waits for that reading to end and does the rest as before.
type Link struct {
	// set at construction
	m        *Manager
	conn     net.Conn
	dialed   bool
	target   *dialTarget       // the target this hub dialed, nil for an accepted link
	remote   string            // the socket's remote address, for logs
	authPeer string            // accepted links: the replica the mesh token names, "" without one
	peerCert *x509.Certificate // accepted over mTLS: the peer's verified certificate, nil otherwise
	done     chan struct{}

	// set by the handshake, read-only once registered
	peer  string
	hello codec.MeshHello
	lm    *linkMetrics
	log   *slog.Logger

	// guarded by Manager.mu
	registered bool // register made it the peer's link (it may have been replaced since)

	// owned by linkReadLoop, or by the reading that ReadOn started once it took over
	rd        wsReader
	dedup     dedup
	upAt      time.Time
	readStart ReadStart // set by ReadOn in LinkUp; serve hands the reading over to it

	snd sender // link_send.go

	// shared
	state    atomic.Int32  // a linkState
	rtt      atomic.Int64  // smoothed round trip in ns, 0 before the first M_PONG
	lastRead atomic.Int64  // monoNow of the last bytes read on an event loop (ReadOn)
	closing  chan struct{} // closed once close recorded the cause
}

type linkState int32

const (
	linkHandshake linkState = iota
	linkRegistered
	linkUp
	linkClosing
	linkDone
)

// Timeouts of the link protocol that are not configurable.
const (
	// closeGrace bounds the flush of a WebSocket close frame.
	closeGrace = time.Second
	// rttMax bounds a plausible round trip: a PONG echoing anything older is ignored.
	rttMax = time.Minute
)

func newLink(m *Manager, conn net.Conn, dialed bool, target *dialTarget) *Link {
	l := &Link{
		m:       m,
		conn:    conn,
		dialed:  dialed,
		target:  target,
		remote:  conn.RemoteAddr().String(),
		done:    make(chan struct{}),
		closing: make(chan struct{}),
		log:     m.log,
		dedup:   newDedup(m.cfg.DedupCIDs),
	}
	l.rd = wsReader{conn: conn, buf: make([]byte, 2*maxMsgLen), masked: !dialed}
	l.snd.init(l)
	return l
}

// Peer returns the peer's replica id (from its M_HELLO). Safe from any goroutine once
// LinkUp has been called.
func (l *Link) Peer() string { return l.peer }

// PeerHello returns the peer's M_HELLO: its version, windows and mode. Safe from any
// goroutine once LinkUp has been called.
func (l *Link) PeerHello() codec.MeshHello { return l.hello }

// Dialed reports whether this hub dialed the link: then it opens odd CIDs and the
// peer even ones (codec/mesh.go). Safe from any goroutine.
func (l *Link) Dialed() bool { return l.dialed }

// RTT returns the smoothed round trip of the link's M_PINGs, 0 before the first
// M_PONG. Safe from any goroutine.
func (l *Link) RTT() time.Duration { return time.Duration(l.rtt.Load()) }

// Done is closed once the link is down: its goroutines have exited and LinkDown has
// been called if LinkUp was.
func (l *Link) Done() <-chan struct{} { return l.done }

// Close closes the link with err as its cause (nil: closed by this hub), after
// flushing a WebSocket close frame (at most a second); LinkDown follows. Safe from
// any goroutine, idempotent.
func (l *Link) Close(err error) {
	detail := "closed by this hub"
	if err != nil {
		detail = "closed by this hub: " + err.Error()
	}
	l.close(&linkError{reason: reasonClosed, code: ws.StatusNormalClosure, err: err, detail: detail})
}

// Close reasons: the enum that close frames, logs (reason=…) and LinkDown errors
// share.
const (
	reasonDuplicate   = "duplicate"    // the other link to the peer survives
	reasonSelf        = "self"         // the peer is this hub (its replica id is ours)
	reasonAuth        = "auth"         // the mesh token names another replica than M_HELLO
	reasonShutdown    = "shutdown"     // Manager.Close
	reasonClosed      = "closed"       // Link.Close
	reasonPingTimeout = "ping_timeout" // nothing received for PingTimeout
	reasonProtocol    = "protocol"     // a malformed or unexpected message
	reasonVersion     = "version"      // no common mesh protocol version
	reasonHandshake   = "handshake"    // no valid M_HELLO in time
	reasonPeerClosed  = "peer_closed"  // the peer sent a close frame
	reasonIOError     = "io_error"     // a read or write failed
)

// linkError is why a link closed. It wraps ErrLinkDown and the sentinel of its
// reason, so LinkDown's err answers errors.Is for both.
type linkError struct {
	reason string
	code   ws.StatusCode // the close frame to send; 0: close the socket without one
	err    error         // the sentinel (or the caller's error for Link.Close)
	detail string
	// text, when set, is the close frame's reason text (see closeText)
	text string
	// peerCode and peerReason are those of the peer's close frame (reasonPeerClosed);
	// peerReplica is the replica id a "duplicate" refusal names
	peerCode    ws.StatusCode
	peerReason  string
	peerReplica string
}

func (e *linkError) Error() string { return "mesh link " + e.reason + ": " + e.detail }

func (e *linkError) Unwrap() []error {
	if e.err == nil {
		return []error{ErrLinkDown}
	}
	return []error{ErrLinkDown, e.err}
}

// counts reports whether the cause is counted in nowconnect_mesh_link_errors_total.
func (e *linkError) counts() bool {
	switch e.reason {
	case reasonDuplicate, reasonSelf, reasonShutdown, reasonClosed:
		return false
	case reasonPeerClosed:
		return e.peerCode != ws.StatusNormalClosure && e.peerCode != ws.StatusGoingAway
	}
	return true
}

func protocolError(code ws.StatusCode, detail string) *linkError {
	return &linkError{reason: reasonProtocol, code: code, err: ErrProtocol, detail: detail}
}

// linkReadLoop runs the handshake, then every message until the link ends,
// then the teardown and LinkDown.
func (l *Link) linkReadLoop() {
	err := l.handshake()
	if err == nil {
		err = l.serve()
	}
	l.finish(err)
}

// handshake exchanges M_HELLOs, registers the link with the manager (the duplicate
// rule), starts the writer and calls LinkUp.
func (l *Link) handshake() error {
	cfg := &l.m.cfg
	deadline := time.Now().Add(cfg.HandshakeTimeout)
	_ = l.conn.SetDeadline(deadline)
	if l.dialed {
		if err := l.writeHello(); err != nil {
			return err
		}
	}
	if err := l.readHello(); err != nil {
		return err
	}
	old, prev, err := l.m.register(l)
	if err != nil {
		return err
	}
	if old != nil {
		old.close(&linkError{reason: reasonDuplicate, code: ws.StatusNormalClosure, err: ErrDuplicateLink,
			detail: "replaced by a link dialed by " + l.dialerID(), text: reasonDuplicate + " " + l.m.cfg.ReplicaID})
	}
	if !l.dialed {
		if err := l.writeHello(); err != nil {
			return err
		}
	}
	_ = l.conn.SetDeadline(time.Time{})
	if !l.snd.start() {
		return l.cause()
	}
	if prev != nil {
		// LinkDown of the previous link (the one replaced, or one still closing)
		// before LinkUp of this one: the hub sees one link per peer at a time.
		select {
		case <-prev.done:
		case <-l.m.ctx.Done():
			return &linkError{reason: reasonShutdown, code: ws.StatusGoingAway, err: ErrShutdown, detail: "manager closed"}
		}
	}
	if linkState(l.state.Load()) != linkRegistered {
		return l.cause()
	}
	l.upAt = time.Now()
	l.m.linkUp(l)
	return nil
}

// dialerID names the hub that dialed the link.
func (l *Link) dialerID() string {
	if l.dialed {
		return l.m.cfg.ReplicaID
	}
	return l.peer
}

// writeHello writes this hub's M_HELLO directly (the writer is not running yet).
func (l *Link) writeHello() error {
	cfg := &l.m.cfg
	h := codec.MeshHello{
		Version:    codec.MeshVersion,
		Replica:    cfg.ReplicaID,
		Window:     uint32(cfg.Window),
		MaxWindow:  uint32(cfg.MaxWindow),
		LinkWindow: uint32(cfg.LinkWindow),
		Active:     cfg.Active != nil && cfg.Active(),
	}
	var fb [codec.MeshHeaderMax]byte
	f, err := codec.AppendMeshHello(fb[:0], h)
	if err != nil {
		return &linkError{reason: reasonHandshake, err: ErrHandshake, detail: "encode M_HELLO: " + err.Error()}
	}
	b, n := buildMsg(ws.OpBinary, l.dialed, f, nil)
	_, err = l.conn.Write(b.B[:n])
	putBuf(b)
	if err != nil {
		return &linkError{reason: reasonHandshake, err: ErrHandshake, detail: "write M_HELLO: " + err.Error()}
	}
	l.m.met.frame(dirOut, codec.MeshFrameHello)
	return nil
}

// readHello reads and checks the peer's M_HELLO.
func (l *Link) readHello() error {
	op, p, err := l.rd.next()
	if err != nil {
		return handshakeReadError(err)
	}
	switch op {
	case ws.OpClose:
		return peerCloseError(p)
	case ws.OpBinary:
	default:
		return protocolError(ws.StatusProtocolError, "expected M_HELLO, got a "+opName(op)+" message")
	}
	h, payload, err := codec.ParseMeshFrame(p)
	if err == nil && h.Type != codec.MeshFrameHello {
		err = fmt.Errorf("%s instead", h.Type)
	}
	if err != nil {
		return protocolError(ws.StatusProtocolError, "expected M_HELLO: "+err.Error())
	}
	hello, err := codec.ParseMeshHello(payload)
	if err != nil {
		return protocolError(ws.StatusProtocolError, "M_HELLO: "+err.Error())
	}
	l.m.met.frame(dirIn, codec.MeshFrameHello)
	// Both ends speak the lower version; this build knows 1, the lowest there is.
	if v := min(hello.Version, codec.MeshVersion); v != 1 {
		return &linkError{reason: reasonVersion, code: ws.StatusProtocolError, err: ErrHandshake,
			detail: fmt.Sprintf("no common mesh version (peer %d, this hub %d)", hello.Version, codec.MeshVersion)}
	}
	if err := CheckReplicaID(hello.Replica); err != nil {
		return protocolError(ws.StatusPolicyViolation, "M_HELLO replica id: "+err.Error())
	}
	if hello.Replica == l.m.cfg.ReplicaID {
		return &linkError{reason: reasonSelf, code: ws.StatusPolicyViolation, err: ErrSelfLink,
			detail: "the peer's replica id " + hello.Replica + " is this hub's"}
	}
	if l.authPeer != "" && l.authPeer != hello.Replica {
		return &linkError{reason: reasonAuth, code: ws.StatusPolicyViolation, err: ErrMeshAuth,
			detail: "the mesh token names " + l.authPeer + ", M_HELLO " + hello.Replica}
	}
	if l.peerCert != nil && l.authPeer == "" {
		if err := l.m.checkPeerCert(l.peerCert, hello.Replica); err != nil {
			return &linkError{reason: reasonAuth, code: ws.StatusPolicyViolation, err: ErrMeshAuth, detail: err.Error()}
		}
	}
	l.peer, l.hello = hello.Replica, hello
	l.snd.budget = dataBudget(l.m.cfg.LinkWindow, int(hello.LinkWindow)) // the writer is not running yet
	l.lm = l.m.met.forLink(hello.Replica)
	l.log = l.m.log.With("peer", hello.Replica, "dialed", l.dialed, "remote", l.remote)
	return nil
}

func handshakeReadError(err error) error {
	var le *linkError
	if errors.As(err, &le) {
		return le
	}
	return &linkError{reason: reasonHandshake, err: ErrHandshake, detail: "no M_HELLO: " + err.Error()}
}

// peerCloseError is the cause for the peer's close frame payload p.
func peerCloseError(p []byte) *linkError {
	e := &linkError{reason: reasonPeerClosed, err: ErrPeerClosed, code: ws.StatusNormalClosure}
	if len(p) >= 2 {
		e.peerCode = ws.StatusCode(binary.BigEndian.Uint16(p))
		e.peerReason = string(p[2:])
	} else {
		e.peerCode = ws.StatusNoStatusRcvd
	}
	e.detail = fmt.Sprintf("peer closed the link (%d %s)", e.peerCode, e.peerReason)
	token, rest, _ := strings.Cut(e.peerReason, " ")
	token, _, _ = strings.Cut(token, ":")
	switch token {
	case reasonSelf:
		e.err = ErrSelfLink
	case reasonDuplicate:
		e.err = ErrDuplicateLink
		if CheckReplicaID(rest) == nil {
			e.peerReplica = rest
		}
	}
	return e
}

func opName(op ws.OpCode) string {
	switch op {
	case ws.OpText:
		return "text"
	case ws.OpBinary:
		return "binary"
	case ws.OpPing:
		return "ping"
	case ws.OpPong:
		return "pong"
	case ws.OpClose:
		return "close"
	case ws.OpContinuation:
		return "continuation"
	}
	return "reserved"
}

// serve reads messages until the link fails. Every read is bounded by PingTimeout:
// a peer that sends nothing for that long (not even the M_PING it sends every
// PingInterval) is dead.
func (l *Link) serve() error {
	l.rd.timeout = l.m.cfg.PingTimeout
	for {
		if l.readStart != nil && l.rd.drained() {
			start := l.readStart
			l.readStart = nil
			if err, moved := l.readElsewhere(start); moved {
				return err
			}
		}
		op, p, err := l.rd.next()
		if err != nil {
			return l.readError(err)
		}
		if err := l.handle(op, p); err != nil {
			return err
		}
	}
}

// handle handles one WebSocket message of the peer.
func (l *Link) handle(op ws.OpCode, p []byte) error {
	switch op {
	case ws.OpBinary:
		return l.handleFrame(p)
	case ws.OpPing:
		_ = l.snd.enqueueCtrlMsg(ws.OpPong, p, 0, 0)
	case ws.OpClose:
		return peerCloseError(p)
	}
	return nil
}

func (l *Link) readError(err error) error {
	var le *linkError
	switch {
	case errors.As(err, &le):
		return le
	case errors.Is(err, os.ErrDeadlineExceeded):
		return &linkError{reason: reasonPingTimeout, err: ErrPingTimeout,
			detail: fmt.Sprintf("nothing received for %v", l.m.cfg.PingTimeout)}
	case errors.Is(err, io.EOF):
		return &linkError{reason: reasonIOError, err: ErrPeerClosed, detail: "connection closed without a close frame"}
	}
	return &linkError{reason: reasonIOError, err: ErrLinkIO, detail: "read: " + err.Error()}
}

// handleFrame handles one mesh frame; on the hot path (stream frames) it does not
// allocate.
func (l *Link) handleFrame(p []byte) error {
	h, payload, err := codec.ParseMeshFrame(p)
	if err != nil {
		return protocolError(ws.StatusProtocolError, "malformed mesh frame: "+err.Error())
	}
	mm := l.m.met
	mm.frame(dirIn, h.Type)
	switch h.Type {
	case codec.MeshFrameHello:
		return protocolError(ws.StatusProtocolError, "M_HELLO after the handshake")
	case codec.MeshFramePing:
		var f [codec.MeshPingLen]byte
		f[0] = byte(codec.MeshFramePong)
		copy(f[1:], payload)
		if l.snd.enqueueCtrlMsg(ws.OpBinary, f[:], codec.MeshFramePong, 0) == nil {
			mm.frame(dirOut, codec.MeshFramePong)
		}
		return nil
	case codec.MeshFramePong:
		l.onPong(binary.BigEndian.Uint64(payload))
		return nil
	}
	if h.CID != 0 && !l.dedup.accept(h.CID, h.Seq) {
		mm.dedupDropped.Inc()
		return nil
	}
	l.m.cfg.Handler.Frame(l, h, payload)
	return nil
}

// onPong records the round trip of the M_PING sent at opaque (ns since the manager's
// start).
func (l *Link) onPong(opaque uint64) {
	rtt := time.Duration(l.m.monoNow() - int64(opaque))
	if rtt < 0 || rtt > rttMax {
		return
	}
	l.lm.rtt.Update(rtt.Seconds())
	old := l.rtt.Load()
	if old == 0 {
		l.rtt.Store(int64(rtt))
		return
	}
	l.rtt.Store(old + (int64(rtt)-old)/8) // like TCP's SRTT, gain 1/8
}

// close records the link's cause (the first one wins) and starts closing: sends fail
// from now on, the writer flushes the close frame if the cause has one, the socket
// closes, and the reader ends. Safe from any goroutine.
func (l *Link) close(e *linkError) {
	if !l.snd.shut(e) {
		return
	}
	close(l.closing)
	for {
		s := l.state.Load()
		if s >= int32(linkClosing) || l.state.CompareAndSwap(s, int32(linkClosing)) {
			break
		}
	}
	l.m.unregister(l)
}

// cause returns the recorded cause (after close).
func (l *Link) cause() *linkError {
	l.snd.mu.Lock()
	defer l.snd.mu.Unlock()
	return l.snd.cause
}

// finish runs on linkReadLoop once the link has ended with err: it closes the link,
// waits for the writer, returns the queued buffers and reports LinkDown.
func (l *Link) finish(err error) {
	le, ok := err.(*linkError)
	if !ok {
		le = &linkError{reason: reasonIOError, err: ErrLinkIO, detail: err.Error()}
	}
	if le.reason == reasonPeerClosed {
		le.code = ws.StatusNormalClosure // answer the peer's close frame
	}
	if !l.snd.running() && le.code != 0 {
		// Refused during the handshake: say why before closing (linkWriteLoop would
		// do it for a link that got that far).
		writeClose(l.conn, l.dialed, le)
	}
	l.close(le)
	l.snd.wait()
	_ = l.conn.Close()
	wasUp := !l.upAt.IsZero()
	l.state.Store(int32(linkDone))
	cause := l.cause()
	l.m.linkFinished(l, wasUp, cause)
	if wasUp {
		l.m.cfg.Handler.LinkDown(l, cause)
	}
	l.m.forget(l)
	close(l.done)
}

// wsReader reads whole WebSocket messages of the mesh from conn into one buffer of
// two maximal messages, unmasking them in place: no allocation per message. Owned by
// linkReadLoop.
type wsReader struct {
	conn    net.Conn
	buf     []byte
	r, w    int
	err     error         // a read error kept until the bytes before it are used
	masked  bool          // messages must be masked (this hub accepted the link) or must not be
	timeout time.Duration // read deadline per read; 0: leave the deadline alone
}

// next returns the next message; the payload is valid until the next call.
// Fragmented, text, oversized and wrongly masked messages are protocol errors.
func (rd *wsReader) next() (ws.OpCode, []byte, error) {
	for {
		if avail := rd.buf[rd.r:rd.w]; len(avail) > 0 {
			op, p, n, need, err := rd.parse(avail)
			if err != nil {
				return 0, nil, err
			}
			if n > 0 {
				rd.r += n
				return op, p, nil
			}
			if len(rd.buf)-rd.r < need {
				rd.compact()
			}
		} else {
			rd.r, rd.w = 0, 0
		}
		if rd.err != nil {
			return 0, nil, rd.err
		}
		if rd.timeout > 0 {
			_ = rd.conn.SetReadDeadline(time.Now().Add(rd.timeout))
		}
		n, err := rd.conn.Read(rd.buf[rd.w:])
		if n == 0 && rd.timeout > 0 && errors.Is(err, os.ErrDeadlineExceeded) && inq.Pending(rd.conn) {
			// The deadline passed while this hub did not run (SIGSTOP,
			// a paused VM) and the peer's frames wait in the socket:
			// not silence. Read them under a fresh deadline.
			continue
		}
		rd.w += n
		rd.err = err
	}
}

// parse unmasks and returns the message at the front of avail and the n bytes it
// takes there. With n == 0, avail holds no whole message yet: the next one takes at
// least need bytes.
func (rd *wsReader) parse(avail []byte) (op ws.OpCode, p []byte, n, need int, err error) {
	h, hn, err := codec.ParseWSHeader(avail)
	switch {
	case errors.Is(err, codec.ErrShortHeader):
		return 0, nil, 0, codec.MaxWSHeaderLen, nil
	case err != nil:
		return 0, nil, 0, 0, protocolError(ws.StatusProtocolError, "bad WebSocket frame header")
	}
	if err := rd.check(h); err != nil {
		return 0, nil, 0, 0, err
	}
	total := hn + int(h.Length)
	if len(avail) < total {
		return 0, nil, 0, total, nil
	}
	p = avail[hn:total]
	if h.Masked {
		ws.Cipher(p, h.Mask, 0)
	}
	return h.OpCode, p, total, total, nil
}

// drained reports whether every byte read has been used and no read error waits.
func (rd *wsReader) drained() bool { return rd.r == rd.w && rd.err == nil }

func (rd *wsReader) compact() {
	n := copy(rd.buf, rd.buf[rd.r:rd.w])
	rd.r, rd.w = 0, n
}

// check applies the mesh's rules to a message header (RFC 6455 §5.1: a server closes
// on an unmasked frame, a client on a masked one).
func (rd *wsReader) check(h ws.Header) error {
	switch {
	case h.Masked != rd.masked && rd.masked:
		return protocolError(ws.StatusProtocolError, "unmasked frame from the dialing hub")
	case h.Masked != rd.masked:
		return protocolError(ws.StatusProtocolError, "masked frame from the accepting hub")
	case h.OpCode == ws.OpText:
		return protocolError(ws.StatusUnsupportedData, "text messages are not accepted on /mesh")
	case h.OpCode == ws.OpContinuation || !h.Fin:
		return protocolError(ws.StatusUnsupportedData, "fragmented messages are not accepted on /mesh")
	case h.Length > codec.MaxMeshFrameLen:
		return protocolError(ws.StatusMessageTooBig, fmt.Sprintf("message of %d bytes, at most %d", h.Length, codec.MaxMeshFrameLen))
	}
	return nil
}

// preload puts bytes already read from the socket (the dialer's read-ahead) in front
// of the reader.
func (rd *wsReader) preload(p []byte) {
	rd.w = copy(rd.buf, p)
}
