package hub

import (
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/nowconnect/nowconnect/codec"
	"github.com/nowconnect/nowconnect/engine"
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

// streamScan is how often a tunnel walks its streams (idle timeout, the
// inbound queue gauge): the walk costs O(streams), so it runs once a second
// rather than on every engine tick (see tickFor).
const streamScan = time.Second

// tunnel is one agent's WebSocket. Everything but the fields marked shared
// is owned by its loop.
type tunnel struct {
	// set at construction
	h      *Hub
	claims Claims
	opened time.Time

	// set at OnOpen / HELLO, then read-only
	ws         *engine.WSConn
	loop       *engine.Loop
	agentID    string
	connectors []string
	window     int // credit the agent grants per stream (hub→agent DATA)
	// qmax holds, per connector, the largest agent→client queue of this
	// tunnel's streams in buffers: written by the loop, read by scrapes.
	qmax map[string]*atomic.Int64

	// shared
	active atomic.Int32 // streams picked for this tunnel and not yet ended

	// owned by the loop
	helloDone bool
	closed    bool
	streams   map[uint32]*stream
	nextCID   uint32
	lastRecv  time.Time
	lastPing  time.Time
	lastScan  time.Time
	hdr       [codec.HeaderLen]byte
	ctl       [64 + codec.MaxReasonLen]byte
}

func newTunnel(h *Hub, claims Claims) *tunnel {
	return &tunnel{h: h, claims: claims, opened: time.Now(), streams: make(map[uint32]*stream)}
}

// OnOpen runs on the loop once the upgrade is written.
func (t *tunnel) OnOpen(w *engine.WSConn) {
	t.ws = w
	t.loop = w.Loop()
	t.lastRecv = time.Now()
	t.loop.AddTicker(t)
}

// Tick enforces the handshake deadline and the ping timeout, and pings.
func (t *tunnel) Tick(now time.Time) bool {
	if t.closed {
		return false
	}
	switch {
	case !t.helloDone && now.Sub(t.opened) > t.h.cfg.HandshakeTimeout:
		t.ws.Close(ErrHandshakeTimeout)
		return false
	case now.Sub(t.lastRecv) > t.h.cfg.PingTimeout:
		t.ws.Close(ErrPingTimeout)
		return false
	case t.helloDone && now.Sub(t.lastPing) >= t.h.cfg.PingInterval:
		t.lastPing = now
		t.write(codec.AppendPing(t.ctl[:0], codec.FramePing, uint64(now.UnixNano())), nil)
	}
	if now.Sub(t.lastScan) < streamScan {
		return !t.closed
	}
	t.lastScan = now
	for _, q := range t.qmax {
		q.Store(0)
	}
	for _, s := range t.streams {
		s.tick(now)
		if q := t.qmax[s.lis.Connector]; q != nil && int64(s.out.Frames()) > q.Load() {
			q.Store(int64(s.out.Frames()))
		}
	}
	return !t.closed
}

// OnMessage dispatches one tunnel frame from the agent.
func (t *tunnel) OnMessage(_ *engine.WSConn, p []byte) error {
	t.lastRecv = time.Now()
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
			t.h.met.pingRTT.Update(time.Since(time.Unix(0, int64(v))).Seconds())
		}
		return nil
	case codec.FrameHello, codec.FrameHelloAck, codec.FrameOpen:
		return fmt.Errorf("%w: %s", ErrUnexpected, fh.Type)
	}
	s := t.streams[fh.CID]
	if s == nil {
		if fh.Type != codec.FrameRst {
			t.h.met.unknownCID.Inc()
			t.write(codec.AppendReason(t.ctl[:0], codec.FrameRst, fh.CID, codec.ReasonUnknownCID, ""), nil)
		}
		return nil
	}
	s.onFrame(fh.Type, payload)
	return nil
}

func (t *tunnel) hello(p []byte) error {
	hello, err := codec.ParseHello(p)
	if err != nil {
		return fmt.Errorf("tunnel: HELLO: %w", err)
	}
	if hello.Version != codec.Version {
		return fmt.Errorf("%w: %d", ErrBadVersion, hello.Version)
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
	t.agentID = hello.AgentID
	t.connectors = conns
	t.qmax = make(map[string]*atomic.Int64, len(conns))
	for _, c := range conns {
		t.qmax[c] = new(atomic.Int64)
	}
	t.window = int(hello.Window)
	t.helloDone = true
	t.lastPing = time.Now()
	t.write(codec.AppendHelloAck(t.ctl[:0], codec.Version, uint32(t.h.cfg.Window)), nil)
	if t.closed {
		return nil
	}
	t.h.router.add(t)
	for _, c := range conns {
		t.h.met.connector(c).agents.Set(float64(t.h.router.agents(c)))
	}
	t.h.log.Info("agent_connected", "agent_id", t.agentID, "connectors", conns,
		"remote", t.ws.Conn().RemoteAddr().String(), "window", t.window)
	return nil
}

// OnClose tears down every stream of the tunnel.
func (t *tunnel) OnClose(_ *engine.WSConn, err error) {
	if t.closed {
		return
	}
	t.closed = true
	if t.helloDone {
		t.h.router.remove(t)
		for _, c := range t.connectors {
			t.h.met.connector(c).agents.Set(float64(t.h.router.agents(c)))
		}
		t.h.log.Info("agent_disconnected", "agent_id", t.agentID, "connectors", t.connectors,
			"streams", len(t.streams), "reason", err.Error())
	} else {
		t.h.log.Warn("tunnel_refused", "remote", t.ws.Conn().RemoteAddr().String(), "reason", err.Error())
	}
	for _, s := range t.streams {
		s.kill(codec.ReasonAgentGone, false, true)
	}
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

// newCID returns an unused stream id.
func (t *tunnel) newCID() uint32 {
	for {
		t.nextCID++
		if t.nextCID == 0 {
			continue
		}
		if _, used := t.streams[t.nextCID]; !used {
			return t.nextCID
		}
	}
}

// sendData sends p as DATA frames of at most codec.MaxPayload bytes.
func (t *tunnel) sendData(cid uint32, p []byte) {
	for len(p) > 0 && !t.closed {
		n := min(len(p), codec.MaxPayload)
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
