package hub

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nowconnect/nowconnect/codec"
	"github.com/nowconnect/nowconnect/engine"
	"github.com/nowconnect/nowconnect/internal/flow"
)

// Tunnel errors; each names why an agent's tunnel was closed.
var (
	ErrHandshakeTimeout = errors.New("tunnel: no HELLO in time")
	ErrPingTimeout      = errors.New("tunnel: agent silent past ping timeout")
	ErrBadVersion       = errors.New("tunnel: unsupported protocol version")
	ErrAgentMismatch    = errors.New("tunnel: HELLO agent id differs from token subject")
	ErrNoConnectors     = errors.New("tunnel: no permitted connectors")
	ErrUnexpected       = errors.New("tunnel: unexpected frame")
)

// errRetired: the agent sent GOAWAY (it opened a replacement tunnel, see
// codec): the tunnel gets no new streams and closes once it carries none.
var errRetired = errors.New("tunnel: retired by the agent (GOAWAY)")

// Liveness. A tunnel that owes an answer (an OPEN, a PING) and has sent
// nothing at all for probeAfter gets a probe PING; one silent for
// suspectAfter is suspect: it keeps its streams, but new ones go to other
// tunnels while any can serve the connector. A frozen agent (SIGSTOP) is
// thus avoided within about suspectAfter and closed after the ping
// timeout; its clients' OPENs time out after the open timeout.
const (
	probeAfter   = 500 * time.Millisecond
	suspectAfter = 1500 * time.Millisecond
)

// streamScan is how often a tunnel walks its streams (idle timeout, the
// inbound queue gauge): the walk costs O(streams), so it runs once a second
// rather than on every engine tick (see tickFor).
const streamScan = time.Second

// tunnel is one agent's WebSocket: the carrier of its lane. Everything but
// the fields marked shared is owned by its loop.
type tunnel struct {
	lane // the streams it carries (loop, flow state, bookkeeping)

	// set at construction
	h       *Hub
	claims  Claims
	version int // protocol version settled by the upgrade
	opened  time.Time

	// set at OnOpen / HELLO, then read-only
	ws         *engine.WSConn
	connectors []string
	instance   uint64

	// owned by the loop
	helloDone bool
	lastRecv  time.Time
	lastPing  time.Time
	askSince  time.Time // first OPEN/PING sent since lastRecv; zero when none
	probed    time.Time
	lastScan  time.Time
	barReason error // why the tunnel was barred (HA); it closes once idle
	barredAt  time.Time
	hdr       [codec.HeaderLen]byte
	ctl       [64 + codec.MaxReasonLen]byte
}

func newTunnel(h *Hub, claims Claims, version int) *tunnel {
	t := &tunnel{h: h, claims: claims, version: version, opened: time.Now()}
	t.streams = make(map[uint32]laneStream)
	t.out = t
	return t
}

// OnOpen runs on the loop once the upgrade is written.
func (t *tunnel) OnOpen(w *engine.WSConn) {
	t.ws = w
	t.loop = w.Loop()
	t.lastRecv = time.Now()
	t.h.router.opened(t)
	t.loop.AddTicker(t)
}

// Tick enforces the handshake deadline, the ping and open timeouts, sends
// pings and probes, and walks the streams once per streamScan.
func (t *tunnel) Tick(now time.Time) bool {
	if t.closed {
		return false
	}
	switch {
	case !t.helloDone && now.Sub(t.opened) > t.h.cfg.HandshakeTimeout:
		t.ws.Close(ErrHandshakeTimeout)
		return false
	case now.Sub(t.lastRecv) > t.h.cfg.PingTimeout && !t.ws.Pending():
		// Pending: the agent's frames wait in the socket because this hub
		// did not run (SIGSTOP, a paused VM); the next read takes them.
		t.ws.Close(ErrPingTimeout)
		return false
	case !t.helloDone:
		return true
	}
	if now.Sub(t.lastPing) >= t.h.cfg.PingInterval {
		t.ping(now)
	}
	if !t.askSince.IsZero() {
		silent := now.Sub(t.askSince)
		if silent > probeAfter && t.probed.Before(t.askSince) {
			t.probed = now
			t.ping(now)
		}
		if silent > suspectAfter && !t.suspect.Load() {
			t.suspect.Store(true)
			t.h.log.Warn("agent_unresponsive", "agent_id", t.agentID, "silent", silent.Round(time.Millisecond).String(),
				"streams", len(t.streams))
		}
	}
	t.expireOpens(t.h, now)
	t.retireIfDone(now)
	if t.closed || now.Sub(t.lastScan) < streamScan {
		return !t.closed
	}
	t.lastScan = now
	t.scan(now)
	return !t.closed
}

// ping sends a PING carrying its send time.
func (t *tunnel) ping(now time.Time) {
	t.lastPing = now
	t.asked(now)
	t.write(codec.AppendPing(t.ctl[:0], codec.FramePing, uint64(now.UnixNano())), nil)
}

// asked records that the agent owes an answer (an OPEN or a PING).
func (t *tunnel) asked(now time.Time) {
	if t.askSince.IsZero() {
		t.askSince = now
	}
}

// OnMessage dispatches one tunnel frame from the agent.
func (t *tunnel) OnMessage(_ *engine.WSConn, p []byte) error {
	now := time.Now()
	t.lastRecv = now
	t.askSince = time.Time{}
	if t.suspect.Load() {
		t.suspect.Store(false)
		t.h.log.Info("agent_responsive", "agent_id", t.agentID)
	}
	fh, payload, err := codec.ParseFrame(p)
	if err != nil {
		return fmt.Errorf("tunnel: frame: %w", err)
	}
	if !t.helloDone {
		if fh.Type != codec.FrameHello {
			return fmt.Errorf("%w: %s before HELLO", ErrUnexpected, fh.Type)
		}
		return t.hello(payload)
	}
	switch fh.Type {
	case codec.FramePing:
		t.write(codec.AppendHeader(t.ctl[:0], codec.FramePong, 0), payload)
		return nil
	case codec.FramePong:
		if v, err := codec.ParsePing(payload); err == nil {
			rtt := now.Sub(time.Unix(0, int64(v)))
			t.fc.RTT.Sample(rtt)
			t.h.met.pingRTT.Update(rtt.Seconds())
		}
		return nil
	case codec.FrameHello, codec.FrameHelloAck, codec.FrameOpen:
		return fmt.Errorf("%w: %s", ErrUnexpected, fh.Type)
	case codec.FrameGoAway:
		if t.version < codec.Version {
			return fmt.Errorf("%w: GOAWAY in protocol %d", ErrUnexpected, t.version)
		}
		t.h.met.goAways.Inc()
		t.h.log.Info("agent_goaway", "agent_id", t.agentID, "streams", len(t.streams))
		t.bar(errRetired)
		return nil
	case codec.FrameData:
		// Every DATA byte counts at the tunnel level, also for a CID
		// that has just ended (released below).
		if err := t.fc.Recv.Receive(len(payload)); err != nil {
			return fmt.Errorf("tunnel: %w", err)
		}
	case codec.FrameWindow:
		if fh.CID == 0 {
			return t.tunnelWindow(payload)
		}
	}
	s := t.streams[fh.CID]
	if s == nil {
		if fh.Type == codec.FrameData {
			t.released(len(payload), now)
		}
		if t.fc.Recent.Unknown(fh.CID, fh.Type) == flow.Reset {
			t.h.met.unknownCID.Inc()
			t.sendRst(fh.CID, codec.ReasonUnknownCID)
		}
		return nil
	}
	s.onFrame(fh.Type, payload, now)
	return nil
}

// tunnelWindow applies tunnel-level credit and wakes the streams waiting
// for it.
func (t *tunnel) tunnelWindow(p []byte) error {
	inc, err := codec.ParseWindow(p)
	if err != nil {
		return fmt.Errorf("tunnel: WINDOW: %w", err)
	}
	if t.version < codec.Version {
		return fmt.Errorf("%w: tunnel-level WINDOW in protocol %d", ErrUnexpected, t.version)
	}
	if err := t.fc.Send.Grant(inc); err != nil {
		return fmt.Errorf("tunnel: %w", err)
	}
	t.wakeWaiting()
	return nil
}

func (t *tunnel) hello(p []byte) error {
	hello, err := codec.ParseHello(p)
	if err != nil {
		return fmt.Errorf("tunnel: HELLO: %w", err)
	}
	if int(hello.Version) != t.version {
		return fmt.Errorf("%w: HELLO says %d, the upgrade settled %d", ErrBadVersion, hello.Version, t.version)
	}
	if hello.AgentID != t.claims.AgentID {
		return ErrAgentMismatch
	}
	var conns []string
	for _, c := range hello.Connectors {
		if t.claims.Connectors != nil && !slices.Contains(t.claims.Connectors, c) {
			t.h.log.Warn("connector_not_permitted", "agent_id", hello.AgentID, "connector", c)
			continue
		}
		conns = append(conns, c)
	}
	if len(conns) == 0 {
		return ErrNoConnectors
	}
	ack := codec.HelloAck{Version: uint8(t.version), Window: uint32(t.h.cfg.Window)}
	peer, local := flow.Fixed(int(hello.Window)), flow.Fixed(t.h.cfg.Window)
	if t.version >= codec.Version {
		peer = flow.Limits{Stream: int(hello.Window), MaxStream: int(hello.MaxWindow), Tunnel: int(hello.TunnelWindow)}
		local = t.h.limits
		ack.MaxWindow, ack.TunnelWindow = uint32(local.MaxStream), uint32(local.Tunnel)
	}
	if err := peer.Validate(); err != nil {
		return fmt.Errorf("tunnel: HELLO: %w", err)
	}
	t.fc = flow.NewTunnel(peer, local)
	t.agentID = hello.AgentID
	t.instance = hello.Instance
	t.connectors = conns
	t.parkBelow = min(t.h.cfg.ReadBufferBytes, max(peer.Stream/4, 1))
	t.resumeFrom = max(t.parkBelow, peer.Stream/2)
	t.qmax = make(map[string]*atomic.Int64, len(conns))
	for _, c := range conns {
		t.qmax[c] = new(atomic.Int64)
	}
	t.helloDone = true
	t.write(codec.AppendHelloAck(t.ctl[:0], ack), nil)
	if t.closed {
		return nil
	}
	t.ping(time.Now()) // a first RTT sample for window growth
	if o := t.h.owners; o != nil {
		if err := o.joined(t); err != nil {
			return err
		}
	}
	t.h.router.add(t)
	for _, c := range conns {
		t.h.met.connector(c).agents.Set(float64(t.h.router.agents(c)))
	}
	t.h.log.Info("agent_connected", "agent_id", t.agentID, "connectors", conns,
		"remote", t.ws.Conn().RemoteAddr().String(), "protocol", t.version, "window", peer.Stream,
		"max_window", peer.MaxStream, "tunnel_window", peer.Tunnel)
	return nil
}

// retireIfDone closes a barred tunnel once it may: one the agent retired
// (GOAWAY) when it carries no stream, however long that takes (its streams
// are never cut); one barred by HA as maybeRetire says (or after the grace
// period). Called on the loop.
func (t *tunnel) retireIfDone(now time.Time) {
	if !errors.Is(t.barReason, errRetired) {
		t.maybeRetire(now)
		return
	}
	if len(t.streams) == 0 && !t.closed {
		t.ws.Close(errRetired)
	}
}

// closeReason names why a tunnel closed, for logs and metrics.
func closeReason(err error) codec.Reason {
	switch {
	case errors.Is(err, ErrHandshakeTimeout):
		return codec.ReasonHandshake
	case errors.Is(err, ErrPingTimeout):
		return codec.ReasonPingTimeout
	case errors.Is(err, errShutdown), errors.Is(err, engine.ErrWSClosedLocally):
		return codec.ReasonShutdown
	case errors.Is(err, io.EOF), errors.Is(err, engine.ErrWSClosed):
		return codec.ReasonPeerClosed
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ETIMEDOUT):
		return codec.ReasonIOError
	case errors.Is(err, errNotOwner), errors.Is(err, errConflict):
		return codec.ReasonNotOwner
	case errors.Is(err, errSuperseded), errors.Is(err, errRetired):
		return codec.ReasonSuperseded
	}
	return codec.ReasonProtocol
}

// OnClose tears down every stream of the tunnel.
func (t *tunnel) OnClose(_ *engine.WSConn, err error) {
	if t.closed {
		return
	}
	t.closed = true
	t.suspect.Store(false)
	r := closeReason(err)
	t.h.met.tunnelClose(r)
	t.h.router.remove(t)
	if o := t.h.owners; o != nil && t.helloDone {
		o.left(t)
	}
	if t.helloDone {
		for _, c := range t.connectors {
			t.h.met.connector(c).agents.Set(float64(t.h.router.agents(c)))
		}
		t.h.log.Info("agent_disconnected", "agent_id", t.agentID, "connectors", t.connectors,
			"streams", len(t.streams), "reason", r.String(), "detail", err.Error())
	} else {
		t.h.log.Warn("tunnel_refused", "remote", t.ws.Conn().RemoteAddr().String(), "reason", r.String(), "detail", err.Error())
	}
	t.closeStreams()
}

// closeAsync closes the tunnel from any goroutine; the channel is closed
// once it is.
func (t *tunnel) closeAsync(err error) <-chan struct{} {
	done := make(chan struct{})
	if t.loop == nil {
		close(done)
		return done
	}
	if t.loop.Execute(func() {
		if !t.closed {
			t.ws.Close(err)
		}
		close(done)
	}) != nil {
		close(done)
	}
	return done
}

// write sends one frame: a (header or whole control frame) followed by b.
// A failed write closes the tunnel synchronously (OnClose runs inside), so
// callers re-check their state afterwards.
func (t *tunnel) write(a, b []byte) {
	if t.closed {
		return
	}
	if err := t.ws.WriteMessage(a, b); err != nil {
		t.ws.Close(err)
	}
}

// sendOpen sends OPEN for a stream just registered; the agent now owes an
// answer (liveness).
func (t *tunnel) sendOpen(st laneStream) {
	s := st.base()
	b, err := codec.AppendOpen(t.ctl[:0], s.cid, s.lis.Connector, s.client.String())
	if err != nil {
		st.kill(codec.ReasonProtocol, false, true)
		return
	}
	t.asked(s.openAt)
	t.write(b, nil)
}

// sendData sends p as DATA frames of at most MaxFramePayload bytes.
func (t *tunnel) sendData(cid uint32, p []byte) {
	for len(p) > 0 && !t.closed {
		n := min(len(p), t.h.cfg.MaxFramePayload)
		codec.PutHeader(t.hdr[:], codec.FrameData, cid)
		t.write(t.hdr[:], p[:n])
		p = p[n:]
	}
}

func (t *tunnel) sendEmpty(ft codec.FrameType, cid uint32) {
	codec.PutHeader(t.hdr[:], ft, cid)
	t.write(t.hdr[:], nil)
}

func (t *tunnel) sendWindow(cid uint32, n int) {
	t.write(codec.AppendWindow(t.ctl[:0], cid, uint32(n)), nil)
}

func (t *tunnel) sendRst(cid uint32, r codec.Reason) {
	t.write(codec.AppendReason(t.ctl[:0], codec.FrameRst, cid, r, ""), nil)
}
