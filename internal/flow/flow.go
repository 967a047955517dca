// Package flow holds the flow-control rules of a NowConnect stream, once: the
// hub, the agent and the mesh all apply them, and each keeps its own I/O,
// locking and ownership around them. Nothing here reads a socket, starts a
// goroutine or takes a lock; every type is a value its owner guards.
//
// # The rules
//
// Credit. A sender never has more unacknowledged DATA bytes in flight for a
// stream than the receiver allows (Credit, the send side), nor, across all
// the streams of a tunnel, more than the tunnel-level window (protocol 2).
// The receiver counts what arrives against what it allowed (Window, the
// receive side) and treats more as a protocol error. Credit comes back as
// WINDOW increments; a grant that would lift the sender's credit above the
// window the receiver announced as its maximum is a protocol error too
// (ErrOverGrant), on every side.
//
// Returning credit. The receiver releases bytes once they have left its
// buffers (written to the destination socket, or discarded with a dead
// stream) and announces the released bytes in one WINDOW once they reach a
// quarter of the window, so WINDOW frames stay few.
//
// Window growth (protocol 2, the auto-tuning of QUIC and HTTP/2
// implementations). Each stream starts at Limits.Stream. When the receiver
// is about to announce credit, it looks at the bytes released since the
// start of the current measuring epoch: once more than half a window has
// gone through, it compares how long that took with the tunnel's round trip
// (RTT.Min: the path without the queueing a busy tunnel adds). A sender that is limited by credit delivers a window per round
// trip; if the bytes went through at least half that fast (elapsed <
// 2 × fraction × RTT), the window doubles, up to Limits.MaxStream, and a new
// epoch starts. A stalled or idle stream releases nothing, so its window
// never grows; nor does a stream whose sender is limited by its application
// (an LDAP client) rather than by credit. Windows never shrink.
//
// Tunnel-level window. Every DATA byte counts against it, including bytes
// for a CID that has just ended (those are released at once), so credit
// never leaks. It does not grow; it bounds the memory a tunnel can hold
// whatever the number of streams.
//
// Half-close and reset. A stream ends its send direction with FIN: DATA
// after the peer's FIN, or a second FIN, is a protocol error (ErrDataAfterFin,
// ErrDuplicateFin). The side that sent OPEN accepts no stream frame before
// OPEN_ACK (ErrBeforeAck). The stream is complete when FIN went both ways.
//
// Relays. A hub that passes a stream from one leg to another (the mesh's
// owner hub, between a peer hub and the agent) returns upstream credit
// when the downstream receiver returned it, and lends a quarter of the
// downstream window ahead, since that much may never be announced (Chain).
//
// Late frames. Frames the peer sent before it learnt that a stream ended
// (WINDOW returning credit for our last DATA, DATA pipelined behind an OPEN
// that failed) keep arriving for a moment. Recent remembers the CIDs of the
// streams that ended lately, whatever ended them, and Unknown says to ignore
// any frame for one of them: answering it with RST could abort the peer's
// side of a stream still delivering its last bytes. Frames for CIDs never
// seen (or long forgotten) are answered with RST, except RST itself.
package flow

import (
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/nowconnect/nowconnect/codec"
)

// Errors of the rules. Each is a protocol violation by the peer.
var (
	ErrWindowExceeded = errors.New("flow: peer sent more than its credit")
	ErrOverGrant      = errors.New("flow: peer granted more credit than its window")
	ErrDataAfterFin   = errors.New("flow: DATA after FIN")
	ErrDuplicateFin   = errors.New("flow: duplicate FIN")
	ErrBeforeAck      = errors.New("flow: stream frame before OPEN_ACK")
	ErrDuplicateAck   = errors.New("flow: OPEN_ACK for an acknowledged stream")
	ErrBadLimits      = errors.New("flow: bad window limits")
)

// Defaults of protocol 2.
const (
	DefaultStreamWindow    = 256 << 10
	DefaultMaxStreamWindow = 16 << 20
	DefaultTunnelWindow    = 64 << 20
	// MinWindow is the smallest window a side may announce.
	MinWindow = 4096
)

// growthFactor is how much faster than "a window per 2 × fraction × RTT" a
// stream must move for its window to double (see the package comment).
const growthFactor = 2

// Limits are the windows a receiver announces for one direction of a tunnel
// (in HELLO and HELLO_ACK).
type Limits struct {
	// Stream is the window every stream starts with.
	Stream int
	// MaxStream is the most a stream's window may grow to; equal to Stream,
	// windows are fixed (protocol 1).
	MaxStream int
	// Tunnel is the tunnel-level window; 0 means none (protocol 1).
	Tunnel int
}

// Fixed returns the limits of protocol 1: a fixed window per stream and no
// tunnel-level window.
func Fixed(window int) Limits { return Limits{Stream: window, MaxStream: window} }

// Validate checks that the limits are usable: windows within
// [MinWindow, codec.MaxWindow], MaxStream ≥ Stream, and a tunnel window, when
// set, at least as large as MaxStream.
func (l Limits) Validate() error {
	switch {
	case l.Stream < MinWindow || l.Stream > codec.MaxWindow:
		return fmt.Errorf("%w: stream window %d out of range %d..%d", ErrBadLimits, l.Stream, MinWindow, codec.MaxWindow)
	case l.MaxStream < l.Stream || l.MaxStream > codec.MaxWindow:
		return fmt.Errorf("%w: max stream window %d out of range %d..%d", ErrBadLimits, l.MaxStream, l.Stream, codec.MaxWindow)
	case l.Tunnel != 0 && (l.Tunnel < l.MaxStream || l.Tunnel > codec.MaxWindow):
		return fmt.Errorf("%w: tunnel window %d out of range %d..%d", ErrBadLimits, l.Tunnel, l.MaxStream, codec.MaxWindow)
	}
	return nil
}

// Credit is the send side of a stream or of a tunnel: the bytes the peer
// still allows us to send.
type Credit struct {
	avail int
	max   int // the most credit the peer may have granted us at any time
}

// NewCredit returns the credit of a new stream (or tunnel) whose receiver
// announced initial and may grow it up to max.
func NewCredit(initial, max int) Credit { return Credit{avail: initial, max: max} }

// Unlimited returns a credit that never runs out: the tunnel level of a peer
// that announced no tunnel window.
func Unlimited() Credit { return Credit{avail: math.MaxInt / 2, max: math.MaxInt / 2} }

// Avail returns the bytes we may send now.
func (c *Credit) Avail() int { return c.avail }

// Take spends n bytes of credit; the caller sends no more than Avail.
func (c *Credit) Take(n int) { c.avail -= n }

// Refund gives back n bytes taken for a send that did not happen.
func (c *Credit) Refund(n int) { c.avail += n }

// Grant adds a WINDOW increment. An increment that lifts the credit above
// the receiver's maximum window is ErrOverGrant (the credit is unchanged).
func (c *Credit) Grant(inc uint32) error {
	if inc == 0 || int64(c.avail)+int64(inc) > int64(c.max) {
		return ErrOverGrant
	}
	c.avail += int(inc)
	return nil
}

// Window is the receive side of a stream or of a tunnel. The zero value is a
// disabled window that accepts everything and never grants (a tunnel-level
// window that was not negotiated).
type Window struct {
	size     int   // current window
	max      int   // growth cap
	recv     int64 // bytes received so far
	limit    int64 // bytes the peer may have sent so far: the initial window plus every increment
	released int64 // bytes that left our buffers

	// the auto-tuning epoch (see the package comment)
	epochStart time.Time
	epochOff   int64
}

// NewWindow returns the receive window of a new stream (or tunnel) that
// starts at initial bytes and may grow to max.
func NewWindow(initial, max int) Window {
	return Window{size: initial, max: max, limit: int64(initial)}
}

// Enabled reports whether the window is in force.
func (w *Window) Enabled() bool { return w.size > 0 }

// Size returns the current window.
func (w *Window) Size() int { return w.size }

// Buffered returns the bytes received and not yet released.
func (w *Window) Buffered() int { return int(w.recv - w.released) }

// Receive counts n arriving bytes. More than the peer's credit is
// ErrWindowExceeded (nothing is counted).
func (w *Window) Receive(n int) error {
	if !w.Enabled() {
		return nil
	}
	if w.recv+int64(n) > w.limit {
		return ErrWindowExceeded
	}
	w.recv += int64(n)
	return nil
}

// Release counts n bytes that left our buffers and returns the WINDOW
// increment to announce now, 0 while less than a quarter window is due
// (n may be 0: what Lend counted is announced the same way). rtt
// is the tunnel's smoothed round trip (0: unknown, no growth); now the
// current time, read once by the caller.
func (w *Window) Release(n int, now time.Time, rtt time.Duration) int {
	if !w.Enabled() || n < 0 {
		return 0
	}
	w.released += int64(n)
	if n > 0 && w.epochStart.IsZero() {
		w.epochStart = now
	}
	if w.released+int64(w.size)-w.limit < int64(w.size/4) {
		return 0
	}
	w.autotune(now, rtt)
	inc := w.released + int64(w.size) - w.limit
	w.limit += inc
	return int(inc)
}

// Lend counts n bytes as released before they left: a relay's loan
// (Chain). They return credit like released bytes, with the next Release,
// but they are no evidence of throughput, so window growth does not count
// them.
func (w *Window) Lend(n int) {
	if !w.Enabled() || n <= 0 {
		return
	}
	w.released += int64(n)
	w.epochOff += int64(n)
}

// ReleaseGrow is Release for a receiver whose buffer is bounded by the
// window: when the window grew, grow is called with the new size before
// the increment is returned, so the buffer holds the larger window before
// the sender can use it. grew reports that it did.
func (w *Window) ReleaseGrow(n int, now time.Time, rtt time.Duration, grow func(size int)) (inc int, grew bool) {
	before := w.size
	inc = w.Release(n, now, rtt)
	if w.size > before {
		grow(w.size)
		return inc, true
	}
	return inc, false
}

// Flush returns every released byte not yet announced, whatever its size
// (0 if none): for a receiver that wants to return all credit at once.
func (w *Window) Flush() int {
	if !w.Enabled() {
		return 0
	}
	inc := w.released + int64(w.size) - w.limit
	if inc <= 0 {
		return 0
	}
	w.limit += inc
	return int(inc)
}

// autotune doubles the window when more than half of it went through in
// the current epoch, as fast as a credit-limited sender delivers.
func (w *Window) autotune(now time.Time, rtt time.Duration) {
	if w.size >= w.max {
		return
	}
	inEpoch := w.released - w.epochOff
	if inEpoch <= int64(w.size/2) {
		return
	}
	if rtt > 0 {
		fraction := float64(inEpoch) / float64(w.size)
		if now.Sub(w.epochStart) < time.Duration(growthFactor*fraction*float64(rtt)) {
			w.size = min(2*w.size, w.max)
		}
	}
	w.epochStart, w.epochOff = now, w.released
}

// Stream is the flow state of one stream as one side sees it: the credit
// for what we send, the window for what we receive, and the half-close
// state of both directions.
type Stream struct {
	Send Credit
	Recv Window

	awaitAck bool // we sent OPEN; no OPEN_ACK yet
	finSent  bool
	finRecv  bool
}

// NewStream returns the state of a stream. peer are the limits the peer
// announced (our send side), local ours (our receive side). opener is true
// on the side that sent OPEN.
func NewStream(peer, local Limits, opener bool) Stream {
	return Stream{
		Send:     NewCredit(peer.Stream, peer.MaxStream),
		Recv:     NewWindow(local.Stream, local.MaxStream),
		awaitAck: opener,
	}
}

// OpenAck records the peer's OPEN_ACK.
func (s *Stream) OpenAck() error {
	if !s.awaitAck {
		return ErrDuplicateAck
	}
	s.awaitAck = false
	return nil
}

// Acked reports whether the stream is acknowledged (always true on the side
// that received OPEN).
func (s *Stream) Acked() bool { return !s.awaitAck }

// Data counts n DATA bytes from the peer.
func (s *Stream) Data(n int) error {
	switch {
	case s.awaitAck:
		return ErrBeforeAck
	case s.finRecv:
		return ErrDataAfterFin
	}
	return s.Recv.Receive(n)
}

// Window applies a WINDOW increment from the peer.
func (s *Stream) Window(inc uint32) error {
	if s.awaitAck {
		return ErrBeforeAck
	}
	return s.Send.Grant(inc)
}

// Fin records the peer's FIN.
func (s *Stream) Fin() error {
	switch {
	case s.awaitAck:
		return ErrBeforeAck
	case s.finRecv:
		return ErrDuplicateFin
	}
	s.finRecv = true
	return nil
}

// SendFin records that we sent FIN; it reports false if we already had.
func (s *Stream) SendFin() bool {
	if s.finSent {
		return false
	}
	s.finSent = true
	return true
}

// FinSent reports whether we sent FIN.
func (s *Stream) FinSent() bool { return s.finSent }

// FinRecv reports whether the peer sent FIN.
func (s *Stream) FinRecv() bool { return s.finRecv }

// Complete reports whether FIN went both ways.
func (s *Stream) Complete() bool { return s.finSent && s.finRecv }

// rttSamples is how many PING/PONG samples Min looks back on.
const rttSamples = 8

// RTT is a round-trip estimate from PING/PONG samples: the smoothed average
// (TCP's SRTT, gain 1/8), and the minimum of the last rttSamples samples.
// Window growth uses the minimum: a PONG that waited behind megabytes of
// DATA in a busy tunnel measures the queue, not the path, and a window sized
// on it would only fill the queue further.
type RTT struct {
	srtt    time.Duration
	samples [rttSamples]time.Duration
	n       int
}

// Sample adds one measured round trip; non-positive samples are ignored.
func (r *RTT) Sample(d time.Duration) {
	if d <= 0 {
		return
	}
	if r.srtt == 0 {
		r.srtt = d
	} else {
		r.srtt += (d - r.srtt) / 8
	}
	r.samples[r.n%rttSamples] = d
	r.n++
}

// Smoothed returns the average, 0 before the first sample.
func (r *RTT) Smoothed() time.Duration { return r.srtt }

// Min returns the smallest recent sample, 0 before the first: the path's
// round trip without queueing, which is what a window must cover.
func (r *RTT) Min() time.Duration {
	var m time.Duration
	for _, d := range r.samples[:min(r.n, rttSamples)] {
		if m == 0 || d < m {
			m = d
		}
	}
	return m
}
