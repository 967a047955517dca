package flow

// Chain is the rule of a relay: a hub that receives a stream on one leg
// (upstream, under a Window it announced) and sends it on along another
// (downstream, under a Credit the next receiver granted), as the hub that
// owns an agent does for a stream another hub forwards over the mesh.
//
// Credit runs end to end: the relay returns upstream credit for a byte once
// the downstream receiver returned credit for it, not once it was sent on,
// so a stalled receiver holds about one window per hop and windows do not
// grow in the burst before the stall showed.
//
// End to end alone can deadlock. A receiver announces released bytes a
// quarter of its window at a time, so it may keep up to a quarter of its
// window unannounced for good once no more bytes come. If the downstream
// window is larger than the upstream one (the agent announced a bigger
// stream_window, or its window grew and the upstream one did not), that
// quarter can be all the upstream sender may have in flight: the sender
// waits for credit the downstream receiver will never announce, and its
// last bytes and FIN never leave. So the relay lends: of the bytes sent on
// and not yet acknowledged, up to a quarter of the downstream window has
// its upstream credit returned at once. What a receiver can sit on is then
// always covered, and the bytes held per hop stay within one window (the
// lent bytes are in the downstream receiver's window, not the relay's).
//
// The downstream window needs no announcement of its own: what the relay
// may still send plus what it sent unacknowledged is exactly the window the
// receiver currently allows (every increment returns released bytes plus
// any growth).
type Chain struct {
	unacked int // sent downstream, not yet acknowledged by the downstream receiver
	lent    int // of unacked, bytes whose upstream credit was returned already
}

// Sent counts n bytes sent downstream, avail being the downstream credit
// left after them, and returns the upstream credit to lend now.
func (c *Chain) Sent(n, avail int) (loan int) {
	c.unacked += n
	return c.relend(avail) // ≥ 0: the downstream window did not change
}

// Acked applies a WINDOW increment inc from the downstream receiver, avail
// being the downstream credit after it (Credit.Grant applied). It returns
// the upstream credit to return now: ret for bytes the receiver consumed
// (evidence of throughput, for window growth), loan for bytes lent ahead.
func (c *Chain) Acked(inc, avail int) (ret, loan int) {
	k := min(inc, c.unacked)
	c.unacked -= k
	d := c.relend(avail)
	if d >= 0 {
		return k, d
	}
	return k + d, 0 // acknowledged bytes that were lent: their credit went already
}

// relend brings the loan to a quarter of the downstream window (at most
// the bytes unacknowledged) and returns the change.
func (c *Chain) relend(avail int) int {
	l := min(c.unacked, max(avail+c.unacked, 0)/4)
	d := l - c.lent
	c.lent = l
	return d
}

// Held returns the bytes whose upstream credit is still held: sent
// downstream, neither acknowledged nor lent.
func (c *Chain) Held() int { return c.unacked - c.lent }
