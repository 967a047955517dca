package codec

// # The mesh protocol
//
// (This section lives here rather than in the package comment, which
// tunnel.go holds: go/doc joins package comments in file-name order, so a
// second one here would come first.)
//
// Hubs of one HA deployment talk over hub-to-hub links: one WebSocket on
// /mesh per pair of hubs. Every mesh frame travels as exactly one binary
// WebSocket message (FIN set, no fragmentation, no extensions), so the
// WebSocket length delimits the frame, as on the tunnel. A frame is a type
// byte and the fields of its type; link-level frames have no more, stream
// frames start with a stream header:
//
//	link frame:   +--------+--------------------------------------------------+
//	              | type:1 | payload (M_HELLO, M_PING, M_PONG)                |
//	              +--------+--------------------------------------------------+
//	stream frame: +--------+-------+-------+---------+-----------+---------------+---------+
//	              | type:1 | cid:4 | seq:8 | epoch:8 | agent:str | connector:str | payload |
//	              +--------+-------+-------+---------+-----------+---------------+---------+
//
// Integers are big-endian; a str is a length byte and that many bytes. The
// type bytes are the tunnel's with 0x40 set (M_DATA 0x46 is DATA 0x06), so a
// frame sent to the wrong endpoint is an unknown type, never a valid frame.
//
// The flow between origin hub B (where the client arrived) and owner hub A
// (where the agent's tunnel ends):
//
//	hub B (origin)                                 hub A (owner)
//	  |<--> M_HELLO ------------------------------------>|  first, from both ends (the dialer's first):
//	  |                                                  |  version, replica id, windows, mode
//	  |                                                  |  a client connects to B; A owns the agent
//	  |---- M_OPEN (cid N, seq 1, epoch E) ------------->|  agent, connector, client address
//	  |---- M_DATA (cid N) ----------------------------->|  pipelined: up to A's stream and link windows
//	  |<--- M_OPEN_ACK / M_OPEN_ERR (cid N) -------------|  the agent's answer to A's tunnel OPEN
//	  |<--> M_DATA, M_WINDOW (cid N) ------------------->|  both directions, credit-controlled
//	  |<--> M_FIN (cid N) ------------------------------>|  one direction ends; the other goes on
//	  |<--> M_RST (cid N) ------------------------------>|  abort with a reason (stale_epoch, not_owner…)
//	  |<--> M_WINDOW (cid 0) --------------------------->|  link-level credit
//	  |<--> M_PING / M_PONG ---------------------------->|  liveness and RTT
//
// M_HELLO is the first frame each end sends. The dialer sends it at once;
// the acceptor reads it, applies the duplicate-link rule and answers with
// its own only if it keeps the link (a refused link is closed without one).
// It carries the sender's replica id (both ends then know the pair and keep
// the link dialed by the lower replica id when two links cross),
// its mode (active: it forwards streams; shadow: it runs the link and
// measures RTT but opens no stream), and the windows it grants for the DATA
// it receives. A link speaks the lower of the two versions; a hub closes a
// link whose peer speaks no version it knows.
//
// Stream frames (all types but M_HELLO, M_PING and M_PONG):
//
//   - cid names the stream on this link and is never 0, except on a
//     link-level M_WINDOW. The hub that opens a stream picks its CID: odd
//     CIDs are opened by the hub that dialed the link, even CIDs by the hub
//     that accepted it, so both ends open streams without colliding. A CID
//     is not reused while its stream lives; since receivers keep a CID's
//     last seq for a while after its end (a bounded LRU), openers count
//     their CIDs up and wrap only after 2^31. The codec checks cid ≠ 0 only.
//   - seq numbers the frames of a CID in one direction: the sender gives
//     every stream frame of a CID the next number, 1, 2, 3…; M_OPEN is the
//     opener's first frame and always carries seq 1. A receiver drops (and
//     counts) a frame whose seq is not greater than the last it accepted for
//     that CID; that dedup is the receiver's job, not the codec's. seq 0 is
//     never sent on a stream.
//   - epoch is the agent's ownership epoch, read by B from the registry and
//     carried by every frame of the stream in both directions. A checks it
//     against the epoch under which it owns the agent and answers a stale one
//     with M_RST(stale_epoch); B then forgets its cached owner. Registry
//     epochs start at 1, so 0 is never sent on a stream.
//   - agent and connector name the agent (its agent_id) and the connector
//     the stream reaches, 1..255 bytes each, on every frame, so that A can
//     route and fence any frame without per-CID state. Only the link-level
//     M_WINDOW has them empty.
//
// Forwarding is one hop: a hub serves an M_OPEN with a local agent or
// refuses it (not_owner); it never sends it on to a third hub.
//
// # Mesh flow control
//
// As on the tunnel (version 2, package internal/flow): each end announces in
// M_HELLO the window every stream starts with for the DATA it receives, the
// most a stream's window may grow to, and a link window (the link's
// per_link_max_inflight_bytes) that bounds the unacknowledged DATA bytes of
// all streams of the link together. A sender needs both stream and link
// credit to send M_DATA; the receiver returns stream credit with M_WINDOW on
// the CID and link credit with M_WINDOW on CID 0 once the bytes have left its
// buffers. Every DATA byte counts at the link level, also for a CID that has
// just ended.
//
// # Bounds
//
// A whole frame is at most MaxMeshFrameLen bytes: the longest stream header
// (MeshHeaderMax) and MaxPayload. M_DATA carries 1..MaxPayload bytes, the
// message of M_OPEN_ERR and M_RST at most MaxReasonLen bytes, windows and
// increments are 1..MaxWindow.
//
// # Mesh version history
//
//	1: initial protocol. A later version keeps the version 1 fields of
//	   M_HELLO where they are and only appends fields, so that every hub can
//	   read the version its peer speaks.

import (
	"encoding/binary"
	"errors"
)

// MeshVersion is the mesh protocol version this build speaks.
const MeshVersion = 1

// MeshFrameType identifies a mesh frame. The layout of each type is given
// in its comment; "header" is the stream header cid:4 seq:8 epoch:8
// agent:str connector:str (see the top of mesh.go). In short:
//
//	type        byte  fields after the type byte
//	M_HELLO     0x41  version:1 replica:str window:4 maxWindow:4 linkWindow:4 flags:1
//	M_OPEN      0x43  header client:str (0..255)
//	M_OPEN_ACK  0x44  header
//	M_OPEN_ERR  0x45  header reason:1 message:rest (≤ MaxReasonLen)
//	M_DATA      0x46  header bytes (1..MaxPayload)
//	M_FIN       0x47  header
//	M_RST       0x48  header reason:1 message:rest (≤ MaxReasonLen)
//	M_WINDOW    0x49  header increment:4 (1..MaxWindow); cid 0: link credit
//	M_PING      0x4a  opaque:8
//	M_PONG      0x4b  opaque:8
type MeshFrameType uint8

// Mesh frame types.
const (
	// MeshFrameHello, M_HELLO (link, both ends, first frame): version:1
	// replica:str window:4 maxWindow:4 linkWindow:4 flags:1. replica is the
	// sender's replica_id (1..255 bytes); window and maxWindow the window
	// every stream starts with and may grow to, linkWindow the window of
	// the whole link, all granted for the DATA the sender receives
	// (1 ≤ window ≤ maxWindow ≤ linkWindow ≤ MaxWindow). flags bit 0 set
	// means mode active (the sender forwards), clear means shadow. Version
	// 1 has the other flag bits clear and nothing after flags.
	MeshFrameHello MeshFrameType = 0x41
	// MeshFrameOpen, M_OPEN (opener): header client:str. client is the
	// client's address (0..255 bytes); seq is 1.
	MeshFrameOpen MeshFrameType = 0x43
	// MeshFrameOpenAck, M_OPEN_ACK (owner): header. The agent reached the
	// target.
	MeshFrameOpenAck MeshFrameType = 0x44
	// MeshFrameOpenErr, M_OPEN_ERR (owner): header reason:1 message:rest
	// (≤ MaxReasonLen). The stream was refused or its dial failed; reason
	// is a Reason, shared with the tunnel.
	MeshFrameOpenErr MeshFrameType = 0x45
	// MeshFrameData, M_DATA (both): header, then the stream's bytes,
	// 1..MaxPayload.
	MeshFrameData MeshFrameType = 0x46
	// MeshFrameFin, M_FIN (both): header. The sender sends no more DATA on
	// this CID.
	MeshFrameFin MeshFrameType = 0x47
	// MeshFrameRst, M_RST (both): header reason:1 message:rest
	// (≤ MaxReasonLen). The stream is gone in both directions.
	MeshFrameRst MeshFrameType = 0x48
	// MeshFrameWindow, M_WINDOW (both): header increment:4 (1..MaxWindow).
	// More credit for the CID; on CID 0, more link-level credit, and then
	// seq and epoch are 0 and agent and connector empty.
	MeshFrameWindow MeshFrameType = 0x49
	// MeshFramePing, M_PING (link, both): opaque:8. Answered with M_PONG.
	MeshFramePing MeshFrameType = 0x4a
	// MeshFramePong, M_PONG (link, both): opaque:8 echoed from the M_PING.
	MeshFramePong MeshFrameType = 0x4b
)

var meshTypeNames = [...]string{
	MeshFrameHello & 0x0f: "M_HELLO", MeshFrameOpen & 0x0f: "M_OPEN", MeshFrameOpenAck & 0x0f: "M_OPEN_ACK",
	MeshFrameOpenErr & 0x0f: "M_OPEN_ERR", MeshFrameData & 0x0f: "M_DATA", MeshFrameFin & 0x0f: "M_FIN",
	MeshFrameRst & 0x0f: "M_RST", MeshFrameWindow & 0x0f: "M_WINDOW", MeshFramePing & 0x0f: "M_PING",
	MeshFramePong & 0x0f: "M_PONG",
}

// Valid reports whether t is a known mesh frame type.
func (t MeshFrameType) Valid() bool {
	return t >= MeshFrameHello && t <= MeshFramePong && t != MeshFrameHello+1
}

func (t MeshFrameType) String() string {
	if t.Valid() {
		return meshTypeNames[t&0x0f]
	}
	return "UNKNOWN"
}

// Link reports whether t is a link-level frame without stream header.
func (t MeshFrameType) Link() bool {
	return t == MeshFrameHello || t == MeshFramePing || t == MeshFramePong
}

const (
	// meshFixedLen is the stream header without its two strings.
	meshFixedLen = 1 + 4 + 8 + 8
	// MeshHeaderMin is the shortest stream header (both strings empty,
	// only on a link-level M_WINDOW).
	MeshHeaderMin = meshFixedLen + 2
	// MeshHeaderMax is the longest stream header (two 255-byte strings).
	MeshHeaderMax = meshFixedLen + 2*(1+255)
	// MaxMeshFrameLen bounds a whole mesh frame: the longest header and
	// MaxPayload. It is the read limit of a /mesh WebSocket message.
	MaxMeshFrameLen = MeshHeaderMax + MaxPayload
	// MeshPingLen is the length of M_PING and M_PONG.
	MeshPingLen = 1 + 8
	// meshHelloTail is what follows the replica in M_HELLO version 1:
	// window, maxWindow, linkWindow, flags.
	meshHelloTail = 4 + 4 + 4 + 1
)

// meshFlagActive is bit 0 of M_HELLO's flags: the sender is in mode active.
const meshFlagActive = 0x01

// Mesh sentinel errors, next to the tunnel's (ErrShortFrame,
// ErrFrameTooLarge, ErrUnknownType, ErrBadPayload, ErrBadCID,
// ErrStringTooLong, ErrBadWindow), which mesh frames reuse.
var (
	// ErrBadHeader is a stream header whose fields break the rules: an
	// empty agent or connector, seq or epoch 0 on a stream, an M_OPEN whose
	// seq is not 1, or a link-level M_WINDOW with anything but zeros and
	// empty strings.
	ErrBadHeader = errors.New("codec: malformed mesh stream header")
	// ErrWrongType is a frame type passed to an Append function that does
	// not encode it.
	ErrWrongType = errors.New("codec: frame type not allowed here")
)

// MeshHello is the content of M_HELLO.
type MeshHello struct {
	Version    uint8  // ≥ 1; MeshVersion when sent by this build
	Replica    string // the sender's replica_id, 1..255 bytes
	Window     uint32 // per-stream window at stream start
	MaxWindow  uint32 // the most a stream's window grows to, ≥ Window
	LinkWindow uint32 // link-level window, ≥ MaxWindow
	Active     bool   // mode active (forwards) rather than shadow
}

// checkMeshWindows checks the windows of M_HELLO: those of a version 2
// tunnel HELLO, with a link window that is required.
func checkMeshWindows(window, maxWindow, link uint32) error {
	if err := checkWindow(window); err != nil {
		return err
	}
	if err := checkWindow(link); err != nil {
		return err
	}
	return checkV2Windows(window, maxWindow, link)
}

// AppendMeshHello appends a whole M_HELLO frame to dst in the layout of
// MeshVersion, which h.Version must name. On error dst is returned as it
// was.
func AppendMeshHello(dst []byte, h MeshHello) ([]byte, error) {
	if h.Version != MeshVersion || len(h.Replica) == 0 {
		return dst, ErrBadPayload
	}
	if err := checkMeshWindows(h.Window, h.MaxWindow, h.LinkWindow); err != nil {
		return dst, err
	}
	orig := len(dst)
	dst = append(dst, byte(MeshFrameHello), h.Version)
	var err error
	if dst, err = appendStr(dst, h.Replica); err != nil {
		return dst[:orig], err
	}
	dst = binary.BigEndian.AppendUint32(dst, h.Window)
	dst = binary.BigEndian.AppendUint32(dst, h.MaxWindow)
	dst = binary.BigEndian.AppendUint32(dst, h.LinkWindow)
	var flags byte
	if h.Active {
		flags |= meshFlagActive
	}
	return append(dst, flags), nil
}

// parseMeshHello checks the payload of M_HELLO (after the type byte)
// without allocating; replica aliases p.
func parseMeshHello(p []byte) (h MeshHello, replica []byte, err error) {
	if len(p) < 1 || p[0] == 0 {
		return h, nil, ErrBadPayload
	}
	h.Version = p[0]
	replica, rest, err := readStr(p[1:])
	if err != nil || len(replica) == 0 || len(rest) < meshHelloTail {
		return h, nil, ErrBadPayload
	}
	h.Window = binary.BigEndian.Uint32(rest)
	h.MaxWindow = binary.BigEndian.Uint32(rest[4:])
	h.LinkWindow = binary.BigEndian.Uint32(rest[8:])
	flags := rest[12]
	h.Active = flags&meshFlagActive != 0
	// Version 1 is exactly this; a later version may set more flags and
	// append fields, which this build does not read.
	if h.Version == 1 && (len(rest) != meshHelloTail || flags&^meshFlagActive != 0) {
		return h, nil, ErrBadPayload
	}
	return h, replica, checkMeshWindows(h.Window, h.MaxWindow, h.LinkWindow)
}

// ParseMeshHello parses the payload of M_HELLO, as ParseMeshFrame returns
// it. It reads the version 1 fields of any version. It allocates the replica
// string, which is fine once per link.
func ParseMeshHello(p []byte) (MeshHello, error) {
	h, replica, err := parseMeshHello(p)
	if err != nil {
		return MeshHello{}, err
	}
	h.Replica = string(replica)
	return h, nil
}

// AppendMeshPing appends a whole M_PING or M_PONG frame to dst.
func AppendMeshPing(dst []byte, t MeshFrameType, opaque uint64) ([]byte, error) {
	if t != MeshFramePing && t != MeshFramePong {
		return dst, ErrWrongType
	}
	dst = append(dst, byte(t))
	return binary.BigEndian.AppendUint64(dst, opaque), nil
}

// MeshHeader is a parsed mesh frame header. Only Type is set for link
// frames. Agent and Connector alias the parsed frame.
type MeshHeader struct {
	Type      MeshFrameType
	CID       uint32
	Seq       uint64
	Epoch     uint64
	Agent     []byte
	Connector []byte
}

// MeshHeaderLen returns the length of a stream header naming agent and
// connector: what AppendMeshHeader appends, and with the payload's length
// the length of the WebSocket message.
func MeshHeaderLen(agent, connector string) int {
	return MeshHeaderMin + len(agent) + len(connector)
}

// checkMeshHeader applies the header rules of ParseMeshFrame to the fields
// of a stream frame of type t.
func checkMeshHeader(t MeshFrameType, cid uint32, seq, epoch uint64, agentLen, connectorLen int) error {
	if cid == 0 {
		if t != MeshFrameWindow {
			return ErrBadCID
		}
		if seq != 0 || epoch != 0 || agentLen != 0 || connectorLen != 0 {
			return ErrBadHeader
		}
		return nil
	}
	if seq == 0 || epoch == 0 || agentLen == 0 || connectorLen == 0 || (t == MeshFrameOpen && seq != 1) {
		return ErrBadHeader
	}
	return nil
}

// AppendMeshHeader appends the stream header of a frame of type t to dst.
// For M_OPEN_ACK and M_FIN it is the whole frame; for the others the caller
// appends (or writes after it, for M_DATA with writev) the payload, or uses
// AppendMeshOpen, AppendMeshReason, AppendMeshData or AppendMeshWindow. A
// fixed buffer of MeshHeaderMax bytes holds any header:
//
//	var hdr [MeshHeaderMax]byte
//	h, err := AppendMeshHeader(hdr[:0], MeshFrameData, cid, seq, epoch, agent, connector)
//
// It checks what ParseMeshFrame checks of a header; on error dst is returned
// as it was.
func AppendMeshHeader(dst []byte, t MeshFrameType, cid uint32, seq, epoch uint64, agent, connector string) ([]byte, error) {
	if !t.Valid() || t.Link() {
		return dst, ErrWrongType
	}
	if len(agent) > 255 || len(connector) > 255 {
		return dst, ErrStringTooLong
	}
	if err := checkMeshHeader(t, cid, seq, epoch, len(agent), len(connector)); err != nil {
		return dst, err
	}
	dst = append(dst, byte(t), byte(cid>>24), byte(cid>>16), byte(cid>>8), byte(cid))
	dst = binary.BigEndian.AppendUint64(dst, seq)
	dst = binary.BigEndian.AppendUint64(dst, epoch)
	dst = append(dst, byte(len(agent)))
	dst = append(dst, agent...)
	dst = append(dst, byte(len(connector)))
	return append(dst, connector...), nil
}

// AppendMeshOpen appends a whole M_OPEN frame to dst; its seq is 1. client
// is the client's address, 0..255 bytes.
func AppendMeshOpen(dst []byte, cid uint32, epoch uint64, agent, connector, client string) ([]byte, error) {
	if len(client) > 255 {
		return dst, ErrStringTooLong
	}
	dst, err := AppendMeshHeader(dst, MeshFrameOpen, cid, 1, epoch, agent, connector)
	if err != nil {
		return dst, err
	}
	dst = append(dst, byte(len(client)))
	return append(dst, client...), nil
}

// AppendMeshReason appends a whole M_OPEN_ERR or M_RST frame to dst. The
// message is truncated to MaxReasonLen.
func AppendMeshReason(dst []byte, t MeshFrameType, cid uint32, seq, epoch uint64, agent, connector string, r Reason, msg string) ([]byte, error) {
	if t != MeshFrameOpenErr && t != MeshFrameRst {
		return dst, ErrWrongType
	}
	dst, err := AppendMeshHeader(dst, t, cid, seq, epoch, agent, connector)
	if err != nil {
		return dst, err
	}
	if len(msg) > MaxReasonLen {
		msg = msg[:MaxReasonLen]
	}
	dst = append(dst, byte(r))
	return append(dst, msg...), nil
}

// AppendMeshData appends a whole M_DATA frame to dst, copying data
// (1..MaxPayload bytes). To avoid the copy, append only the header with
// AppendMeshHeader and write data after it.
func AppendMeshData(dst []byte, cid uint32, seq, epoch uint64, agent, connector string, data []byte) ([]byte, error) {
	if len(data) == 0 {
		return dst, ErrBadPayload
	}
	if len(data) > MaxPayload {
		return dst, ErrFrameTooLarge
	}
	dst, err := AppendMeshHeader(dst, MeshFrameData, cid, seq, epoch, agent, connector)
	if err != nil {
		return dst, err
	}
	return append(dst, data...), nil
}

// AppendMeshWindow appends a whole M_WINDOW frame to dst: increment more
// credit for the stream cid, or for the link with
// AppendMeshWindow(dst, 0, 0, 0, "", "", increment).
func AppendMeshWindow(dst []byte, cid uint32, seq, epoch uint64, agent, connector string, increment uint32) ([]byte, error) {
	if err := checkWindow(increment); err != nil {
		return dst, err
	}
	dst, err := AppendMeshHeader(dst, MeshFrameWindow, cid, seq, epoch, agent, connector)
	if err != nil {
		return dst, err
	}
	return binary.BigEndian.AppendUint32(dst, increment), nil
}

// ParseMeshFrame splits a whole mesh frame (one WebSocket message) into its
// header and payload; the payload and the header's strings alias b. It
// checks the length bounds, the type, the CID rule (0 only on a link-level
// M_WINDOW), the header fields (see ErrBadHeader) and the payload of every
// type, so the payload parsers (ParseMeshHello, ParseMeshOpen, ParseReason,
// ParseWindow, ParsePing) cannot fail on what it accepted. For link frames
// the payload is what follows the type byte.
func ParseMeshFrame(b []byte) (MeshHeader, []byte, error) {
	if len(b) < 1 {
		return MeshHeader{}, nil, ErrShortFrame
	}
	if len(b) > MaxMeshFrameLen {
		return MeshHeader{}, nil, ErrFrameTooLarge
	}
	h := MeshHeader{Type: MeshFrameType(b[0])}
	switch h.Type {
	case MeshFrameHello:
		if _, _, err := parseMeshHello(b[1:]); err != nil {
			return h, nil, err
		}
		return h, b[1:], nil
	case MeshFramePing, MeshFramePong:
		if len(b) != MeshPingLen {
			return h, nil, ErrBadPayload
		}
		return h, b[1:], nil
	}
	if !h.Type.Valid() {
		return h, nil, ErrUnknownType
	}
	if len(b) < MeshHeaderMin {
		return h, nil, ErrShortFrame
	}
	h.CID = binary.BigEndian.Uint32(b[1:])
	h.Seq = binary.BigEndian.Uint64(b[5:])
	h.Epoch = binary.BigEndian.Uint64(b[13:])
	agent, rest, err := readStr(b[meshFixedLen:])
	if err != nil {
		return h, nil, ErrShortFrame
	}
	connector, p, err := readStr(rest)
	if err != nil {
		return h, nil, ErrShortFrame
	}
	h.Agent, h.Connector = agent, connector
	if err := checkMeshHeader(h.Type, h.CID, h.Seq, h.Epoch, len(agent), len(connector)); err != nil {
		return h, nil, err
	}
	switch h.Type {
	case MeshFrameOpen:
		if _, err := ParseMeshOpen(p); err != nil {
			return h, nil, err
		}
	case MeshFrameOpenAck, MeshFrameFin:
		if len(p) != 0 {
			return h, nil, ErrBadPayload
		}
	case MeshFrameOpenErr, MeshFrameRst:
		if _, _, err := ParseReason(p); err != nil {
			return h, nil, err
		}
	case MeshFrameData:
		if len(p) == 0 {
			return h, nil, ErrBadPayload
		}
		if len(p) > MaxPayload {
			return h, nil, ErrFrameTooLarge
		}
	case MeshFrameWindow:
		if _, err := ParseWindow(p); err != nil {
			return h, nil, err
		}
	}
	return h, p, nil
}

// ParseMeshOpen parses the payload of M_OPEN without copying: client
// aliases p and may be empty.
func ParseMeshOpen(p []byte) (client []byte, err error) {
	client, rest, err := readStr(p)
	if err != nil || len(rest) != 0 {
		return nil, ErrBadPayload
	}
	return client, nil
}
