package flow

import (
	"errors"
	"slices"

	"github.com/nowconnect/nowconnect/codec"
)

// RecentCIDs is how many ended CIDs a tunnel remembers (4 KiB, allocated on
// the first end). At 10,000 new streams a second that is 100 ms of history:
// several round trips of a WAN tunnel, which is as long as late frames take.
const RecentCIDs = 1024

// Recent remembers the CIDs of streams that ended lately, in a ring. Lookups
// scan it; they happen only for frames that find no live stream.
type Recent struct {
	ring []uint32
	next int
}

// Add remembers cid (0 is never a stream and is ignored).
func (r *Recent) Add(cid uint32) {
	if cid == 0 {
		return
	}
	if r.ring == nil {
		r.ring = make([]uint32, RecentCIDs)
	}
	r.ring[r.next] = cid
	r.next = (r.next + 1) % len(r.ring)
}

// Has reports whether cid ended lately.
func (r *Recent) Has(cid uint32) bool { return cid != 0 && slices.Contains(r.ring, cid) }

// ResetReason is the reason to reset a stream with when Data refused its
// bytes: window_exceeded for more than the credit, protocol for DATA out of
// order (before OPEN_ACK, after FIN) and anything else, nil included.
func ResetReason(err error) codec.Reason {
	if errors.Is(err, ErrWindowExceeded) {
		return codec.ReasonWindowExceeded
	}
	return codec.ReasonProtocol
}

// Verdict says what to do with a frame for a CID that has no live stream.
type Verdict uint8

const (
	// Ignore drops the frame silently.
	Ignore Verdict = iota
	// Reset answers RST(unknown_cid).
	Reset
)

// Unknown applies the late-frame rule (see the package comment) to a frame
// of type t for cid, which has no live stream: frames for a recently ended
// CID and RST are ignored, anything else is reset.
func (r *Recent) Unknown(cid uint32, t codec.FrameType) Verdict {
	if t == codec.FrameRst || r.Has(cid) {
		return Ignore
	}
	return Reset
}

// Tunnel is the tunnel-level flow state of one side: the tunnel window in
// both directions, the round-trip estimate that drives window growth, the
// limits both sides announced, and the recently ended CIDs.
type Tunnel struct {
	Send   Credit // tunnel-level credit for what we send (Unlimited without a peer tunnel window)
	Recv   Window // tunnel-level window for what we receive (disabled without ours)
	RTT    RTT
	Recent Recent

	peer, local Limits
}

// NewTunnel returns the tunnel-level state once HELLO/HELLO_ACK settled the
// limits: peer are those the peer announced, local ours.
func NewTunnel(peer, local Limits) Tunnel {
	t := Tunnel{peer: peer, local: local, Send: Unlimited()}
	if peer.Tunnel > 0 {
		t.Send = NewCredit(peer.Tunnel, peer.Tunnel)
	}
	if local.Tunnel > 0 {
		t.Recv = NewWindow(local.Tunnel, local.Tunnel)
	}
	return t
}

// Peer returns the limits the peer announced.
func (t *Tunnel) Peer() Limits { return t.peer }

// Local returns the limits we announced.
func (t *Tunnel) Local() Limits { return t.local }

// NewStream returns the flow state of a new stream of this tunnel; opener
// is true on the side that sent OPEN.
func (t *Tunnel) NewStream(opener bool) Stream { return NewStream(t.peer, t.local, opener) }

// SendAvail returns how much a stream with credit c may send now: the
// smaller of its own credit and the tunnel's.
func (t *Tunnel) SendAvail(c *Credit) int { return min(c.Avail(), t.Send.Avail()) }

// Sent spends n bytes of a stream's credit and of the tunnel's.
func (t *Tunnel) Sent(c *Credit, n int) {
	c.Take(n)
	t.Send.Take(n)
}
