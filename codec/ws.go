package codec

import (
	"encoding/binary"
	"errors"

	"github.com/gobwas/ws"
)

// WebSocket frame headers (RFC 6455 §5.2), parsed and encoded without
// allocation. gobwas/ws's ReadHeader allocates; these functions are
// byte-identical to ws.WriteHeader / ws.ReadHeader over the same ws.Header.
//
//	 0                   1                   2                   3
//	+-+-+-+-+-------+-+-------------+-------------------------------+
//	|F|R|R|R| opcode|M| Payload len |    Extended payload length    |
//	|I|S|S|S|  (4)  |A|     (7)     |             (16/64)           |
//	|N|V|V|V|       |S|             |   (if payload len==126/127)   |
//	+-+-+-+-+-------+-+-------------+-------------------------------+
//	|     Masking-key (0 or 4 bytes, present when MASK is set)      |
//	+---------------------------------------------------------------+

// MaxWSHeaderLen is the longest WebSocket frame header.
const MaxWSHeaderLen = 14

// WebSocket header errors.
var (
	// ErrShortHeader means more bytes are needed; it is not a protocol error.
	ErrShortHeader = errors.New("codec: short websocket header")
	// ErrWSProtocol is a header that breaks RFC 6455 (reserved bits, bad
	// control frame, bad length encoding).
	ErrWSProtocol = errors.New("codec: websocket protocol error")
)

// ParseWSHeader parses the frame header at the start of b and returns it
// with its length in bytes. It returns ErrShortHeader when b holds only part
// of a header.
func ParseWSHeader(b []byte) (h ws.Header, n int, err error) {
	if len(b) < 2 {
		return h, 0, ErrShortHeader
	}
	h.Fin = b[0]&0x80 != 0
	h.Rsv = (b[0] & 0x70) >> 4
	h.OpCode = ws.OpCode(b[0] & 0x0f)
	h.Masked = b[1]&0x80 != 0
	n = 2
	switch l := b[1] & 0x7f; l {
	case 126:
		if len(b) < 4 {
			return h, 0, ErrShortHeader
		}
		h.Length = int64(binary.BigEndian.Uint16(b[2:4]))
		if h.Length < 126 {
			return h, 0, ErrWSProtocol
		}
		n = 4
	case 127:
		if len(b) < 10 {
			return h, 0, ErrShortHeader
		}
		u := binary.BigEndian.Uint64(b[2:10])
		if u>>63 != 0 || u < 1<<16 {
			return h, 0, ErrWSProtocol
		}
		h.Length = int64(u)
		n = 10
	default:
		h.Length = int64(l)
	}
	if h.Masked {
		if len(b) < n+4 {
			return h, 0, ErrShortHeader
		}
		copy(h.Mask[:], b[n:n+4])
		n += 4
	}
	if h.Rsv != 0 {
		return h, n, ErrWSProtocol
	}
	if h.OpCode.IsControl() && (!h.Fin || h.Length > 125) {
		return h, n, ErrWSProtocol
	}
	if h.OpCode.IsReserved() {
		return h, n, ErrWSProtocol
	}
	return h, n, nil
}

// WSHeaderLen returns the encoded length of h.
func WSHeaderLen(h ws.Header) int {
	n := 2
	switch {
	case h.Length > 0xffff:
		n = 10
	case h.Length > 125:
		n = 4
	}
	if h.Masked {
		n += 4
	}
	return n
}

// PutWSHeader encodes h into b, which must hold WSHeaderLen(h) bytes
// (MaxWSHeaderLen always suffices), and returns the bytes written.
func PutWSHeader(b []byte, h ws.Header) int {
	b0 := byte(h.OpCode&0x0f) | h.Rsv<<4
	if h.Fin {
		b0 |= 0x80
	}
	b[0] = b0
	var mask byte
	if h.Masked {
		mask = 0x80
	}
	n := 2
	switch {
	case h.Length > 0xffff:
		b[1] = mask | 127
		binary.BigEndian.PutUint64(b[2:10], uint64(h.Length))
		n = 10
	case h.Length > 125:
		b[1] = mask | 126
		binary.BigEndian.PutUint16(b[2:4], uint16(h.Length))
		n = 4
	default:
		b[1] = mask | byte(h.Length)
	}
	if h.Masked {
		copy(b[n:n+4], h.Mask[:])
		n += 4
	}
	return n
}

// AppendWSHeader appends the encoding of h to dst.
func AppendWSHeader(dst []byte, h ws.Header) []byte {
	var b [MaxWSHeaderLen]byte
	n := PutWSHeader(b[:], h)
	return append(dst, b[:n]...)
}

// BinaryHeader is the header of an unmasked, unfragmented binary message
// of n bytes (what a server sends).
func BinaryHeader(n int) ws.Header {
	return ws.Header{Fin: true, OpCode: ws.OpBinary, Length: int64(n)}
}
