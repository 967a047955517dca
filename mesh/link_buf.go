package mesh

import (
	"encoding/binary"
	"math/rand/v2"

	"github.com/gobwas/ws"

	"github.com/nowconnect/nowconnect/codec"
	"github.com/nowconnect/nowconnect/internal/bufpool"
)

// Buffers of the send path. Every outgoing WebSocket message (header, mesh frame,
// masked when this hub dialed the link) is built once in a pooled buffer of the
// smallest size class that holds it (internal/bufpool), queued, written, and put
// back. The classes double from 128 bytes to the longest message, so a queued
// message holds less than twice its length; the link's DATA budget is charged the
// class size (see sender), which bounds the memory a blocked link holds whatever
// the frame sizes.

// maxMsgLen is the longest WebSocket message of the mesh: a header and a whole frame.
const maxMsgLen = codec.MaxWSHeaderLen + codec.MaxMeshFrameLen

// The longest message fits the largest pooled buffer (compile-time check).
var _ [bufpool.Max - maxMsgLen]struct{}

// msgBuf is one pooled message buffer (len(b.B) is its size class).
type msgBuf = bufpool.Buf

// getBuf returns a buffer of at least n ≤ maxMsgLen bytes.
func getBuf(n int) *msgBuf { return bufpool.Get(n) }

func putBuf(b *msgBuf) { bufpool.Put(b) }

// newMask returns a random masking key (RFC 6455 §5.3: unpredictable per frame).
// math/rand/v2's top-level source is a per-thread ChaCha8 stream, lock-free and
// allocation-free.
func newMask() (m [4]byte) {
	binary.LittleEndian.PutUint32(m[:], rand.Uint32())
	return m
}

// wsHeader returns the header of a message of n payload bytes with opcode op, masked
// when mask is set (a client's frames).
func wsHeader(op ws.OpCode, n int, mask bool) ws.Header {
	h := ws.Header{Fin: true, OpCode: op, Length: int64(n)}
	if mask {
		h.Masked, h.Mask = true, newMask()
	}
	return h
}

// buildMsg encodes a whole message of opcode op whose payload is the concatenation
// of parts (at most two: a frame, or a header and a payload) into a pooled buffer
// and returns it with the message length.
func buildMsg(op ws.OpCode, mask bool, p1, p2 []byte) (*msgBuf, int) {
	n := len(p1) + len(p2)
	h := wsHeader(op, n, mask)
	hl := codec.WSHeaderLen(h)
	b := getBuf(hl + n)
	codec.PutWSHeader(b.B, h)
	copy(b.B[hl:], p1)
	copy(b.B[hl+len(p1):], p2)
	if mask {
		ws.Cipher(b.B[hl:hl+n], h.Mask, 0)
	}
	return b, hl + n
}
