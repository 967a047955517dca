package flow

import (
	"testing"
	"time"
)

func TestChainSteps(t *testing.T) {
	type step struct {
		sent, inc       int // bytes sent downstream, or an increment from the downstream receiver
		avail           int // downstream credit after the step
		loan, ret, held int
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"a quarter of the downstream window is lent as bytes go", []step{
			{sent: 100, avail: 900, loan: 100, held: 0},
			{sent: 200, avail: 700, loan: 150, held: 50}, // window 1000: 250 lent at most
			{sent: 300, avail: 400, loan: 0, held: 350},
		}},
		{"an increment returns what was held, not what was lent", []step{
			{sent: 1000, avail: 0, loan: 250, held: 750},
			{inc: 300, avail: 300, ret: 300, held: 450},
			{inc: 700, avail: 1000, ret: 450, held: 0}, // the last 250 were lent
		}},
		{"a window that grew lends more", []step{
			{sent: 4000, avail: 0, loan: 1000, held: 3000},
			{inc: 8000, avail: 8000, ret: 3000, held: 0}, // 4000 back and 4000 of growth: nothing unacked
			{sent: 8000, avail: 0, loan: 2000, held: 6000},
		}},
		{"what the receiver sits on is covered", []step{
			{sent: 999, avail: 3001, loan: 999, held: 0}, // below its quarter: it may never announce
		}},
	} {
		var c Chain
		for i, s := range tc.steps {
			var loan, ret int
			if s.sent > 0 {
				loan = c.Sent(s.sent, s.avail)
			} else {
				ret, loan = c.Acked(s.inc, s.avail)
			}
			if loan != s.loan || ret != s.ret || c.Held() != s.held {
				t.Fatalf("%s step %d: loan %d ret %d held %d, want %d %d %d", tc.name, i, loan, ret, c.Held(), s.loan, s.ret, s.held)
			}
		}
	}
}

// relayRun moves total bytes from a sender through a relay to a receiver:
// the relay announces up upstream, the receiver down downstream, each
// returning credit a quarter window at a time (Window.Release). The relay
// lends (Chain) unless noLend. The receiver consumes what it gets unless
// stalled. It returns the bytes delivered, and fails t if a hop ever holds
// more than its window.
func relayRun(t *testing.T, up, down, total int, noLend, stalled bool) int {
	t.Helper()
	now := time.Unix(1000, 0)
	send := NewCredit(up, up) // the sender's upstream credit
	upW := NewWindow(up, up)  // the relay's upstream window
	fwd := NewCredit(down, down)
	downW := NewWindow(down, down)
	var ch Chain
	queued, sent, delivered := 0, 0, 0
	credit := func(ret, loan int) {
		if noLend {
			loan = 0
		}
		upW.Lend(loan)
		if inc := upW.Release(ret, now, 0); inc > 0 {
			if err := send.Grant(uint32(inc)); err != nil {
				t.Fatalf("upstream grant: %v", err)
			}
		}
	}
	for progress := true; progress; {
		progress = false
		if n := min(send.Avail(), total-sent, 16<<10); n > 0 {
			send.Take(n)
			if err := upW.Receive(n); err != nil {
				t.Fatalf("upstream: %v", err)
			}
			sent, queued, progress = sent+n, queued+n, true
		}
		if queued > up {
			t.Fatalf("the relay holds %d bytes, more than its window %d", queued, up)
		}
		if n := min(queued, fwd.Avail()); n > 0 {
			fwd.Take(n)
			if err := downW.Receive(n); err != nil {
				t.Fatalf("downstream: %v", err)
			}
			queued -= n
			credit(0, ch.Sent(n, fwd.Avail()))
			progress = true
		}
		if b := downW.Buffered(); b > 0 && !stalled {
			delivered += b
			if inc := downW.Release(b, now, 0); inc > 0 {
				if err := fwd.Grant(uint32(inc)); err != nil {
					t.Fatalf("downstream grant: %v", err)
				}
				credit(ch.Acked(inc, fwd.Avail()))
			}
			progress = true
		}
	}
	if stalled {
		return downW.Buffered()
	}
	return delivered
}

func TestChainNeverStrandsTheSender(t *testing.T) {
	const total = 10 << 20
	for _, w := range []struct{ up, down int }{
		{256 << 10, 256 << 10},
		{256 << 10, 1 << 20}, // the receiver's quarter is all the sender may have in flight
		{256 << 10, 4 << 20},
		{256 << 10, 64 << 10},
		{300_001, 4_000_003},
	} {
		if got := relayRun(t, w.up, w.down, total, false, false); got != total {
			t.Errorf("windows %d → %d: %d of %d bytes delivered", w.up, w.down, got, total)
		}
	}
	// The model can fail: without the loan, a receiver whose quarter
	// window is the sender's whole window strands the sender.
	if got := relayRun(t, 256<<10, 1<<20, total, true, false); got == total {
		t.Error("without lending, every byte went through: the model no longer shows the deadlock")
	}
}

func TestChainStalledReceiverHoldsAWindowPerHop(t *testing.T) {
	// relayRun checks the relay's hold; the receiver's is its window.
	for _, w := range []struct{ up, down int }{{256 << 10, 4 << 20}, {4 << 20, 256 << 10}} {
		if got := relayRun(t, w.up, w.down, 1<<30, false, true); got > w.down {
			t.Errorf("windows %d → %d: the stalled receiver holds %d", w.up, w.down, got)
		}
	}
}
