// Package codec holds every wire format of NowConnect: the tunnel protocol
// spoken between a hub and an agent, and the WebSocket frame headers that
// carry it. It performs no I/O and starts no goroutines: functions append
// into or parse from caller-owned buffers and return sentinel errors.
//
// # The tunnel protocol
//
// An agent dials the hub's control port and upgrades to a WebSocket on
// /tunnel with a JWT bearer token. Every tunnel frame then travels as exactly
// one binary WebSocket message (FIN set, no fragmentation, no extensions), so
// the WebSocket length delimits the frame. A frame is
//
//	+--------+------------------+----------------------------+
//	| type:1 | cid:4 big-endian | payload (type-specific)    |
//	+--------+------------------+----------------------------+
//
// The flow:
//
//	agent                                   hub
//	  |---- HELLO (cid 0) ------------------->|  version, window, agent id, connectors
//	  |<--- HELLO_ACK (cid 0) ----------------|  version, window
//	  |                                       |  a client connects to a listener
//	  |<--- OPEN (cid N) ---------------------|  connector, client address
//	  |<--- DATA (cid N) ---------------------|  pipelined: up to the agent's window
//	  |---- OPEN_ACK / OPEN_ERR (cid N) ----->|  target dialed, or failed with a reason
//	  |<--> DATA, WINDOW (cid N) ------------>|  both directions, credit-controlled
//	  |<--> FIN (cid N) --------------------->|  one direction ends; the other goes on
//	  |<--> RST (cid N) --------------------->|  abort with a reason
//	  |<--> PING / PONG (cid 0) ------------->|  liveness and RTT
//	  |---- GOAWAY (cid 0) ------------------>|  version 2: retire this tunnel
//
// CIDs are chosen by the hub, are never 0 for a stream, and are not reused
// while the stream lives. Flow control is per stream and per direction: each
// side announces in HELLO / HELLO_ACK the window it grants for every stream,
// a sender never has more unacknowledged DATA bytes for a CID than that
// window, and the receiver returns credit with WINDOW once the bytes have left
// its buffers (written to the socket). A stream ends when FIN has been sent
// and received in both directions, or on RST. Frames for CIDs that ended a
// moment ago are ignored; frames for unknown CIDs are answered with RST
// (except RST itself). The rules live in package internal/flow, which every
// side applies.
//
// # Version negotiation
//
// The agent offers the WebSocket subprotocol Subprotocol ("nowconnect.v2")
// in its upgrade request. A hub that speaks version 2 selects it in its 101
// answer, and both sides then use the version 2 layouts of HELLO and
// HELLO_ACK (whose version byte must say 2). Without it (an older hub, or an
// older agent that offers nothing) both sides speak version 1: fixed
// windows, no tunnel-level window. The version byte of HELLO must match what
// the upgrade settled; anything else is a protocol error.
//
// # Version 2: auto-tuned windows and a tunnel-level window
//
// Each side announces, per direction it receives: the window every stream
// starts with, the most a stream's window may grow to, and a tunnel-level
// window that bounds the unacknowledged DATA bytes of all streams together.
// The receiver grows a stream's window while the sender is limited by
// credit (internal/flow); growth reaches the sender as larger WINDOW
// increments, never above the announced maximum. WINDOW with CID 0 returns
// tunnel-level credit. A sender needs both stream and tunnel credit to send
// DATA, and every DATA byte counts at the tunnel level, also for a CID that
// has just ended.
//
// # Retiring a tunnel (version 2)
//
// The hub learns an agent's connectors only from HELLO. An agent whose
// connector set changed (a reload) opens a replacement tunnel with a new
// HELLO, and once its HELLO_ACK arrived sends GOAWAY on the old one: the
// hub gives the old tunnel no new streams and closes it once it carries
// none (reason superseded); its streams finish undisturbed. An agent sends
// GOAWAY only on a tunnel that settled version 2; a hub that receives it on
// version 1 treats it as a protocol error.
//
// # Version history
//
//	1: initial protocol.
//	2: HELLO / HELLO_ACK carry the maximum stream window and the tunnel
//	   window (and HELLO an instance id per agent process); WINDOW on CID 0
//	   is tunnel-level credit; negotiated with the WebSocket subprotocol
//	   "nowconnect.v2".
//	   GOAWAY was added later within version 2 (it needs no negotiation:
//	   only agents send it, only to hubs that settled 2). A version-2 hub
//	   built before it reads GOAWAY as an unknown frame type and closes the
//	   tunnel as a protocol error, streams included.
package codec

import (
	"encoding/binary"
	"errors"
	"slices"
)

// Protocol versions this build speaks (see Version negotiation).
const (
	// Version is the newest version, offered and preferred.
	Version = 2
	// Version1 is the initial protocol, still spoken with older peers.
	Version1 = 1
)

// Subprotocol is the WebSocket subprotocol that selects Version on the
// upgrade of /tunnel.
const Subprotocol = "nowconnect.v2"

// FrameType identifies a tunnel frame.
type FrameType uint8

// Tunnel frame types. The payload layout of each is given in its comment;
// strings are a length byte followed by that many bytes.
const (
	// FrameHello (agent→hub, cid 0): version:1 window:4 agentID:str
	// nconn:1 nconn×connector:str, and from version 2 on maxWindow:4
	// tunnelWindow:4 instance:8. window is the credit the agent grants the
	// hub for every stream (hub→agent DATA bytes in flight), maxWindow the
	// most a stream's window grows to, tunnelWindow the credit for all
	// streams together (0: none), instance a random id of the agent process
	// (its tunnels share it).
	FrameHello FrameType = 0x01
	// FrameHelloAck (hub→agent, cid 0): version:1 window:4, and from
	// version 2 on maxWindow:4 tunnelWindow:4: the hub's grants for
	// agent→hub DATA, as in HELLO.
	FrameHelloAck FrameType = 0x02
	// FrameOpen (hub→agent): connector:str clientAddr:str.
	FrameOpen FrameType = 0x03
	// FrameOpenAck (agent→hub): empty. The target is connected.
	FrameOpenAck FrameType = 0x04
	// FrameOpenErr (agent→hub): reason:1 message:rest (≤ MaxReasonLen).
	FrameOpenErr FrameType = 0x05
	// FrameData (both): the stream's bytes, 1..MaxPayload.
	FrameData FrameType = 0x06
	// FrameFin (both): empty. The sender sends no more DATA on this CID.
	FrameFin FrameType = 0x07
	// FrameRst (both): reason:1 message:rest (≤ MaxReasonLen). The stream
	// is gone in both directions.
	FrameRst FrameType = 0x08
	// FrameWindow (both): increment:4 (> 0). More credit for the CID; on
	// CID 0 (version 2), more tunnel-level credit.
	FrameWindow FrameType = 0x09
	// FramePing (both, cid 0): opaque:8. Answered with PONG.
	FramePing FrameType = 0x0a
	// FramePong (both, cid 0): opaque:8 echoed from the PING.
	FramePong FrameType = 0x0b
	// FrameGoAway (agent→hub, cid 0, version 2): empty. Give this tunnel
	// no new streams and close it once it carries none.
	FrameGoAway FrameType = 0x0c
)

var frameTypeNames = [...]string{
	FrameHello: "HELLO", FrameHelloAck: "HELLO_ACK", FrameOpen: "OPEN",
	FrameOpenAck: "OPEN_ACK", FrameOpenErr: "OPEN_ERR", FrameData: "DATA",
	FrameFin: "FIN", FrameRst: "RST", FrameWindow: "WINDOW",
	FramePing: "PING", FramePong: "PONG", FrameGoAway: "GOAWAY",
}

func (t FrameType) String() string {
	if int(t) < len(frameTypeNames) && frameTypeNames[t] != "" {
		return frameTypeNames[t]
	}
	return "UNKNOWN"
}

// Valid reports whether t is a known frame type.
func (t FrameType) Valid() bool { return t >= FrameHello && t <= FrameGoAway }

const (
	// HeaderLen is the length of a tunnel frame header.
	HeaderLen = 5
	// MaxPayload bounds a frame's payload (DATA payload included).
	MaxPayload = 64 << 10
	// MaxFrameLen bounds a whole tunnel frame.
	MaxFrameLen = HeaderLen + MaxPayload
	// MaxReasonLen bounds the message of OPEN_ERR and RST.
	MaxReasonLen = 200
	// MaxConnectors bounds the connectors of a HELLO.
	MaxConnectors = 64
	// MaxWindow bounds an announced window and a WINDOW increment.
	MaxWindow = 1 << 30
)

// Sentinel errors. Every malformed input maps to one of them.
var (
	ErrShortFrame    = errors.New("codec: short frame")
	ErrFrameTooLarge = errors.New("codec: frame too large")
	ErrUnknownType   = errors.New("codec: unknown frame type")
	ErrBadPayload    = errors.New("codec: malformed payload")
	ErrBadCID        = errors.New("codec: cid not allowed for frame type")
	ErrStringTooLong = errors.New("codec: string longer than 255 bytes")
	ErrBadWindow     = errors.New("codec: window out of range")
)

// Reason says why a stream or tunnel ended; logs and metrics share it.
type Reason uint8

// Close reasons carried by OPEN_ERR and RST.
const (
	ReasonNone             Reason = 0
	ReasonDialFailed       Reason = 1  // target refused or unreachable
	ReasonDialTimeout      Reason = 2  // target dial timed out
	ReasonUnknownConnector Reason = 3  // agent does not serve the connector
	ReasonProtocol         Reason = 4  // malformed or unexpected frame
	ReasonWindowExceeded   Reason = 5  // peer sent more than its credit
	ReasonClientReset      Reason = 6  // the client's connection failed
	ReasonTargetReset      Reason = 7  // the target's connection failed
	ReasonAgentGone        Reason = 8  // the tunnel carrying the stream dropped
	ReasonShutdown         Reason = 9  // the process is shutting down
	ReasonIdle             Reason = 10 // idle timeout
	ReasonUnknownCID       Reason = 11 // frame for a stream that does not exist
	ReasonNotAllowed       Reason = 12 // policy refused the stream
	ReasonOverload         Reason = 13 // a bounded resource is full
	ReasonOpenTimeout      Reason = 14 // OPEN got neither OPEN_ACK nor OPEN_ERR in time
	ReasonPingTimeout      Reason = 15 // the peer sent nothing for the ping timeout
	ReasonHandshake        Reason = 16 // the handshake failed or timed out
	ReasonPeerClosed       Reason = 17 // the peer closed the connection
	ReasonIOError          Reason = 18 // a read or write on the connection failed
	ReasonNotOwner         Reason = 19 // HA: another hub owns the agent
	ReasonStaleEpoch       Reason = 20 // HA: the frame carries an outdated ownership epoch
	ReasonSuperseded       Reason = 21 // a newer tunnel of the same agent took over
	ReasonMeshDown         Reason = 22 // HA: no mesh link to the hub that owns the agent
)

var reasonNames = [...]string{
	ReasonNone: "none", ReasonDialFailed: "dial_failed", ReasonDialTimeout: "dial_timeout",
	ReasonUnknownConnector: "unknown_connector", ReasonProtocol: "protocol",
	ReasonWindowExceeded: "window_exceeded", ReasonClientReset: "client_reset",
	ReasonTargetReset: "target_reset", ReasonAgentGone: "agent_gone",
	ReasonShutdown: "shutdown", ReasonIdle: "idle", ReasonUnknownCID: "unknown_cid",
	ReasonNotAllowed: "not_allowed", ReasonOverload: "overload",
	ReasonOpenTimeout: "open_timeout", ReasonPingTimeout: "ping_timeout",
	ReasonHandshake: "handshake", ReasonPeerClosed: "peer_closed", ReasonIOError: "io_error",
	ReasonNotOwner: "not_owner", ReasonStaleEpoch: "stale_epoch", ReasonSuperseded: "superseded",
	ReasonMeshDown: "mesh_down",
}

// NumReasons bounds the Reason values with a name: metrics keep one series
// per known reason and count the rest as "unknown".
const NumReasons = int(ReasonMeshDown) + 1

// Known reports whether r has a name.
func (r Reason) Known() bool { return int(r) < len(reasonNames) && reasonNames[r] != "" }

func (r Reason) String() string {
	if int(r) < len(reasonNames) && reasonNames[r] != "" {
		return reasonNames[r]
	}
	return "unknown"
}

// Header is a parsed tunnel frame header.
type Header struct {
	Type FrameType
	CID  uint32
}

// AppendHeader appends a frame header to dst.
func AppendHeader(dst []byte, t FrameType, cid uint32) []byte {
	return append(dst, byte(t), byte(cid>>24), byte(cid>>16), byte(cid>>8), byte(cid))
}

// PutHeader writes a frame header into b, which must hold HeaderLen bytes.
func PutHeader(b []byte, t FrameType, cid uint32) {
	_ = b[HeaderLen-1]
	b[0] = byte(t)
	binary.BigEndian.PutUint32(b[1:], cid)
}

// ParseFrame splits a whole frame (one WebSocket message) into its header
// and payload. It checks the length bounds, the type, and that the CID is 0
// exactly for the connection-level types.
func ParseFrame(b []byte) (Header, []byte, error) {
	if len(b) < HeaderLen {
		return Header{}, nil, ErrShortFrame
	}
	if len(b) > MaxFrameLen {
		return Header{}, nil, ErrFrameTooLarge
	}
	h := Header{Type: FrameType(b[0]), CID: binary.BigEndian.Uint32(b[1:])}
	if !h.Type.Valid() {
		return h, nil, ErrUnknownType
	}
	connLevel := h.Type == FrameHello || h.Type == FrameHelloAck || h.Type == FramePing || h.Type == FramePong ||
		h.Type == FrameGoAway
	if connLevel != (h.CID == 0) && h.Type != FrameWindow { // WINDOW on CID 0 is tunnel-level
		return h, nil, ErrBadCID
	}
	p := b[HeaderLen:]
	switch h.Type {
	case FrameData:
		if len(p) == 0 {
			return h, nil, ErrBadPayload
		}
	case FrameOpenAck, FrameFin, FrameGoAway:
		if len(p) != 0 {
			return h, nil, ErrBadPayload
		}
	case FrameWindow:
		if len(p) != 4 {
			return h, nil, ErrBadPayload
		}
	case FramePing, FramePong:
		if len(p) != 8 {
			return h, nil, ErrBadPayload
		}
	case FrameOpenErr, FrameRst:
		if len(p) < 1 || len(p) > 1+MaxReasonLen {
			return h, nil, ErrBadPayload
		}
	}
	return h, p, nil
}

func appendStr(dst []byte, s string) ([]byte, error) {
	if len(s) > 255 {
		return dst, ErrStringTooLong
	}
	dst = append(dst, byte(len(s)))
	return append(dst, s...), nil
}

// readStr reads a length-prefixed string without copying.
func readStr(p []byte) (s []byte, rest []byte, err error) {
	if len(p) < 1 || len(p) < 1+int(p[0]) {
		return nil, nil, ErrBadPayload
	}
	n := int(p[0])
	return p[1 : 1+n], p[1+n:], nil
}

func checkWindow(w uint32) error {
	if w == 0 || w > MaxWindow {
		return ErrBadWindow
	}
	return nil
}

// Hello is the payload of HELLO. MaxWindow, TunnelWindow and Instance are
// sent from version 2 on.
type Hello struct {
	Version      uint8
	Window       uint32
	AgentID      string
	Connectors   []string
	MaxWindow    uint32 // version ≥ 2: ≥ Window
	TunnelWindow uint32 // version ≥ 2: 0 (none) or ≥ MaxWindow
	Instance     uint64 // version ≥ 2: the agent process
}

// checkV2Windows checks the version 2 window fields.
func checkV2Windows(window, maxWindow, tunnel uint32) error {
	if err := checkWindow(maxWindow); err != nil || maxWindow < window {
		return ErrBadWindow
	}
	if tunnel != 0 && (tunnel > MaxWindow || tunnel < maxWindow) {
		return ErrBadWindow
	}
	return nil
}

// AppendHello appends a whole HELLO frame to dst, in the layout of
// h.Version.
func AppendHello(dst []byte, h Hello) ([]byte, error) {
	if len(h.Connectors) > MaxConnectors {
		return dst, ErrBadPayload
	}
	if err := checkWindow(h.Window); err != nil {
		return dst, err
	}
	if h.Version >= 2 {
		if err := checkV2Windows(h.Window, h.MaxWindow, h.TunnelWindow); err != nil {
			return dst, err
		}
	}
	if len(h.AgentID) == 0 || slices.Contains(h.Connectors, "") {
		return dst, ErrBadPayload // ParseHello rejects empty strings
	}
	orig := len(dst)
	dst = AppendHeader(dst, FrameHello, 0)
	dst = append(dst, h.Version)
	dst = binary.BigEndian.AppendUint32(dst, h.Window)
	var err error
	if dst, err = appendStr(dst, h.AgentID); err != nil {
		return dst[:orig], err
	}
	dst = append(dst, byte(len(h.Connectors)))
	for _, c := range h.Connectors {
		if dst, err = appendStr(dst, c); err != nil {
			return dst[:orig], err
		}
	}
	if h.Version >= 2 {
		dst = binary.BigEndian.AppendUint32(dst, h.MaxWindow)
		dst = binary.BigEndian.AppendUint32(dst, h.TunnelWindow)
		dst = binary.BigEndian.AppendUint64(dst, h.Instance)
	}
	return dst, nil
}

// ParseHello parses the payload of HELLO in the layout its version byte
// names. It allocates (strings), which is fine once per tunnel.
func ParseHello(p []byte) (Hello, error) {
	var h Hello
	if len(p) < 5 {
		return h, ErrBadPayload
	}
	h.Version = p[0]
	h.Window = binary.BigEndian.Uint32(p[1:5])
	if err := checkWindow(h.Window); err != nil {
		return h, err
	}
	id, rest, err := readStr(p[5:])
	if err != nil || len(id) == 0 || len(rest) < 1 {
		return h, ErrBadPayload
	}
	h.AgentID = string(id)
	n := int(rest[0])
	rest = rest[1:]
	if n > MaxConnectors {
		return h, ErrBadPayload
	}
	h.Connectors = make([]string, 0, n)
	for i := 0; i < n; i++ {
		var c []byte
		if c, rest, err = readStr(rest); err != nil || len(c) == 0 {
			return h, ErrBadPayload
		}
		h.Connectors = append(h.Connectors, string(c))
	}
	if h.Version >= 2 {
		if len(rest) != 16 {
			return h, ErrBadPayload
		}
		h.MaxWindow = binary.BigEndian.Uint32(rest)
		h.TunnelWindow = binary.BigEndian.Uint32(rest[4:])
		h.Instance = binary.BigEndian.Uint64(rest[8:])
		return h, checkV2Windows(h.Window, h.MaxWindow, h.TunnelWindow)
	}
	if len(rest) != 0 {
		return h, ErrBadPayload
	}
	return h, nil
}

// HelloAck is the payload of HELLO_ACK. MaxWindow and TunnelWindow are sent
// from version 2 on.
type HelloAck struct {
	Version      uint8
	Window       uint32
	MaxWindow    uint32 // version ≥ 2: ≥ Window
	TunnelWindow uint32 // version ≥ 2: 0 (none) or ≥ MaxWindow
}

// AppendHelloAck appends a whole HELLO_ACK frame to dst, in the layout of
// a.Version. The caller passes valid windows (the hub's own config).
func AppendHelloAck(dst []byte, a HelloAck) []byte {
	dst = AppendHeader(dst, FrameHelloAck, 0)
	dst = append(dst, a.Version)
	dst = binary.BigEndian.AppendUint32(dst, a.Window)
	if a.Version >= 2 {
		dst = binary.BigEndian.AppendUint32(dst, a.MaxWindow)
		dst = binary.BigEndian.AppendUint32(dst, a.TunnelWindow)
	}
	return dst
}

// ParseHelloAck parses the payload of HELLO_ACK in the layout its version
// byte names.
func ParseHelloAck(p []byte) (HelloAck, error) {
	var a HelloAck
	if len(p) < 1 {
		return a, ErrBadPayload
	}
	a.Version = p[0]
	want := 5
	if a.Version >= 2 {
		want = 13
	}
	if len(p) != want {
		return a, ErrBadPayload
	}
	a.Window = binary.BigEndian.Uint32(p[1:])
	if err := checkWindow(a.Window); err != nil {
		return a, err
	}
	if a.Version >= 2 {
		a.MaxWindow = binary.BigEndian.Uint32(p[5:])
		a.TunnelWindow = binary.BigEndian.Uint32(p[9:])
		return a, checkV2Windows(a.Window, a.MaxWindow, a.TunnelWindow)
	}
	return a, nil
}

// AppendOpen appends a whole OPEN frame to dst.
func AppendOpen(dst []byte, cid uint32, connector, clientAddr string) ([]byte, error) {
	if len(connector) == 0 {
		return dst, ErrBadPayload // ParseOpen rejects an empty connector
	}
	orig := len(dst)
	dst = AppendHeader(dst, FrameOpen, cid)
	var err error
	if dst, err = appendStr(dst, connector); err != nil {
		return dst[:orig], err
	}
	if dst, err = appendStr(dst, clientAddr); err != nil {
		return dst[:orig], err
	}
	return dst, nil
}

// ParseOpen parses the payload of OPEN without copying: the returned slices
// alias p.
func ParseOpen(p []byte) (connector, clientAddr []byte, err error) {
	connector, rest, err := readStr(p)
	if err != nil || len(connector) == 0 {
		return nil, nil, ErrBadPayload
	}
	clientAddr, rest, err = readStr(rest)
	if err != nil || len(rest) != 0 {
		return nil, nil, ErrBadPayload
	}
	return connector, clientAddr, nil
}

// AppendReason appends a whole OPEN_ERR or RST frame to dst. The message is
// truncated to MaxReasonLen.
func AppendReason(dst []byte, t FrameType, cid uint32, r Reason, msg string) []byte {
	if len(msg) > MaxReasonLen {
		msg = msg[:MaxReasonLen]
	}
	dst = AppendHeader(dst, t, cid)
	dst = append(dst, byte(r))
	return append(dst, msg...)
}

// ParseReason parses the payload of OPEN_ERR or RST; msg aliases p.
func ParseReason(p []byte) (Reason, []byte, error) {
	if len(p) < 1 || len(p) > 1+MaxReasonLen {
		return 0, nil, ErrBadPayload
	}
	return Reason(p[0]), p[1:], nil
}

// AppendWindow appends a whole WINDOW frame to dst.
func AppendWindow(dst []byte, cid uint32, increment uint32) []byte {
	dst = AppendHeader(dst, FrameWindow, cid)
	return binary.BigEndian.AppendUint32(dst, increment)
}

// ParseWindow parses the payload of WINDOW.
func ParseWindow(p []byte) (uint32, error) {
	if len(p) != 4 {
		return 0, ErrBadPayload
	}
	w := binary.BigEndian.Uint32(p)
	return w, checkWindow(w)
}

// AppendPing appends a whole PING or PONG frame to dst.
func AppendPing(dst []byte, t FrameType, opaque uint64) []byte {
	dst = AppendHeader(dst, t, 0)
	return binary.BigEndian.AppendUint64(dst, opaque)
}

// ParsePing parses the payload of PING or PONG.
func ParsePing(p []byte) (uint64, error) {
	if len(p) != 8 {
		return 0, ErrBadPayload
	}
	return binary.BigEndian.Uint64(p), nil
}

// AppendEmpty appends a whole frame without payload (OPEN_ACK, FIN, and
// GOAWAY with cid 0).
func AppendEmpty(dst []byte, t FrameType, cid uint32) []byte {
	return AppendHeader(dst, t, cid)
}
