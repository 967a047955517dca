package flow

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/codec"
)

func TestLimitsValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		l    Limits
		ok   bool
	}{
		{"fixed", Fixed(256 << 10), true},
		{"v2 defaults", Limits{DefaultStreamWindow, DefaultMaxStreamWindow, DefaultTunnelWindow}, true},
		{"too small", Fixed(1024), false},
		{"max below initial", Limits{Stream: 64 << 10, MaxStream: 32 << 10}, false},
		{"tunnel below max stream", Limits{Stream: 64 << 10, MaxStream: 1 << 20, Tunnel: 512 << 10}, false},
		{"too large", Fixed(codec.MaxWindow + 1), false},
	} {
		err := tc.l.Validate()
		if (err == nil) != tc.ok {
			t.Errorf("%s: Validate(%+v) = %v", tc.name, tc.l, err)
		}
		if err != nil && !errors.Is(err, ErrBadLimits) {
			t.Errorf("%s: %v does not wrap ErrBadLimits", tc.name, err)
		}
	}
}

func TestCredit(t *testing.T) {
	type step struct {
		take  int    // spend first
		grant uint32 // then grant this increment
		err   error  // Grant's result
		avail int    // credit afterwards
	}
	for _, tc := range []struct {
		name         string
		initial, max int
		steps        []step
	}{
		{"spend and regain", 1000, 1000, []step{
			{take: 600, grant: 600, avail: 1000},
		}},
		{"over-grant is refused and changes nothing", 1000, 1000, []step{
			{take: 100, grant: 101, err: ErrOverGrant, avail: 900},
			{grant: 100, avail: 1000},
		}},
		{"zero increment is refused", 1000, 1000, []step{{grant: 0, err: ErrOverGrant, avail: 1000}}},
		{"growth room up to the peer's maximum", 1000, 4000, []step{
			{grant: 3000, avail: 4000},
			{grant: 1, err: ErrOverGrant, avail: 4000},
		}},
	} {
		c := NewCredit(tc.initial, tc.max)
		for i, s := range tc.steps {
			c.Take(s.take)
			if err := c.Grant(s.grant); !errors.Is(err, s.err) && !(err == nil && s.err == nil) {
				t.Fatalf("%s step %d: Grant(%d) = %v, want %v", tc.name, i, s.grant, err, s.err)
			}
			if c.Avail() != s.avail {
				t.Fatalf("%s step %d: avail %d, want %d", tc.name, i, c.Avail(), s.avail)
			}
		}
	}
	c := NewCredit(10, 10)
	c.Take(10)
	c.Refund(4)
	if c.Avail() != 4 {
		t.Fatalf("refund: %d", c.Avail())
	}
	u := Unlimited()
	u.Take(1 << 40)
	if u.Avail() <= 0 {
		t.Fatal("Unlimited ran out")
	}
}

func TestWindowReceiveAndRelease(t *testing.T) {
	now := time.Unix(1000, 0)
	type step struct {
		recv    int // received first
		recvErr error
		release int // then released
		inc     int // increment announced
	}
	for _, tc := range []struct {
		name  string
		size  int
		steps []step
	}{
		{"below a quarter nothing is announced", 4000, []step{
			{recv: 999, release: 999, inc: 0},
			{recv: 1, release: 1, inc: 1000},
		}},
		{"releases accumulate into one increment", 4000, []step{
			{recv: 4000},
			{release: 500}, {release: 499},
			{release: 1, inc: 1000},
		}},
		{"more than the credit is refused", 4000, []step{
			{recv: 4000},
			{recv: 1, recvErr: ErrWindowExceeded},
			{release: 4000, inc: 4000},
			{recv: 4000},
			{recv: 1, recvErr: ErrWindowExceeded},
		}},
	} {
		w := NewWindow(tc.size, tc.size)
		for i, s := range tc.steps {
			if s.recv > 0 {
				if err := w.Receive(s.recv); !errors.Is(err, s.recvErr) && !(err == nil && s.recvErr == nil) {
					t.Fatalf("%s step %d: Receive(%d) = %v, want %v", tc.name, i, s.recv, err, s.recvErr)
				}
			}
			if s.release > 0 {
				if inc := w.Release(s.release, now, 0); inc != s.inc {
					t.Fatalf("%s step %d: Release(%d) = %d, want %d", tc.name, i, s.release, inc, s.inc)
				}
			}
		}
	}
	w := NewWindow(4000, 4000)
	_ = w.Receive(300)
	_ = w.Release(300, now, 0)
	if inc := w.Flush(); inc != 300 {
		t.Fatalf("Flush = %d, want 300", inc)
	}
	if inc := w.Flush(); inc != 0 {
		t.Fatalf("second Flush = %d, want 0", inc)
	}
	var off Window
	if err := off.Receive(1 << 30); err != nil || off.Release(1<<30, now, time.Second) != 0 || off.Flush() != 0 {
		t.Fatal("a disabled window must accept everything and grant nothing")
	}
}

// run feeds a window as a sender with the given credit behaviour would: it
// receives what the window allows and releases it, advancing the clock by
// perWindow for every window's worth of bytes. It returns the final size.
func runWindow(w *Window, total int, perWindow, rtt time.Duration) int {
	now := time.Unix(1000, 0)
	credit := w.Size()
	for moved := 0; moved < total; {
		n := min(credit, 16<<10)
		if n == 0 {
			panic("sender starved: the window announced no credit")
		}
		if err := w.Receive(n); err != nil {
			panic(err)
		}
		credit -= n
		now = now.Add(time.Duration(float64(perWindow) * float64(n) / float64(w.Size())))
		credit += w.Release(n, now, rtt)
		moved += n
	}
	return w.Size()
}

func TestWindowAutotune(t *testing.T) {
	const (
		initial = 256 << 10
		max     = 16 << 20
		rtt     = 50 * time.Millisecond
	)
	for _, tc := range []struct {
		name      string
		perWindow time.Duration // how long a window's worth of bytes takes to go through
		rtt       time.Duration
		total     int
		want      int // final size (exact)
	}{
		{"credit-limited over 50 ms grows to the cap", rtt, rtt, 512 << 20, max},
		{"consumed in 1.5 RTT per window still grows", rtt * 3 / 2, rtt, 512 << 20, max},
		{"a slow consumer (4 RTT per window) never grows", 4 * rtt, rtt, 64 << 20, initial},
		{"no RTT sample, no growth", rtt, 0, 64 << 20, initial},
	} {
		w := NewWindow(initial, max)
		if got := runWindow(&w, tc.total, tc.perWindow, tc.rtt); got != tc.want {
			t.Errorf("%s: window %d, want %d", tc.name, got, tc.want)
		}
	}

	// Growth doubles, one step per epoch, and never exceeds the cap.
	w := NewWindow(initial, 1<<20)
	sizes := []int{w.Size()}
	now := time.Unix(1000, 0)
	for range 200 {
		n := w.Size() / 8
		if err := w.Receive(n); err != nil {
			t.Fatal(err)
		}
		now = now.Add(time.Millisecond)
		w.Release(n, now, rtt)
		if s := w.Size(); s != sizes[len(sizes)-1] {
			if s != 2*sizes[len(sizes)-1] && s != 1<<20 {
				t.Fatalf("window went %d → %d, want doubling", sizes[len(sizes)-1], s)
			}
			sizes = append(sizes, s)
		}
	}
	if got := sizes[len(sizes)-1]; got != 1<<20 || len(sizes) != 3 {
		t.Fatalf("sizes %v, want 256 KiB → 512 KiB → 1 MiB", sizes)
	}
}

// TestReleaseGrow: the buffer bound follows every growth and hears of it
// before the larger increment is returned; no growth, no call.
func TestReleaseGrow(t *testing.T) {
	const rtt = 50 * time.Millisecond
	w := NewWindow(64<<10, 1<<20)
	bound, grows := w.Size(), 0
	now := time.Unix(1000, 0)
	for range 400 {
		n := w.Size() / 8
		if err := w.Receive(n); err != nil {
			t.Fatal(err)
		}
		if w.Buffered() > bound {
			t.Fatalf("%d bytes buffered over a bound of %d", w.Buffered(), bound)
		}
		now = now.Add(time.Millisecond)
		before := w.Size()
		_, grew := w.ReleaseGrow(n, now, rtt, func(size int) { bound = size; grows++ })
		if grew != (w.Size() > before) {
			t.Fatalf("grew %v, window %d → %d", grew, before, w.Size())
		}
		if bound != w.Size() {
			t.Fatalf("bound %d behind the window %d", bound, w.Size())
		}
	}
	if grows != 4 || bound != 1<<20 {
		t.Fatalf("%d growths to %d, want 4 to 1 MiB", grows, bound)
	}
	_, grew := w.ReleaseGrow(0, now, rtt, func(int) { t.Fatal("grow without growth") })
	if grew {
		t.Fatal("grew reported without growth")
	}
}

// TestWindowStalledAndIdleNeverGrow: a stream whose bytes are not released
// (a stalled client) and a stream that moves nothing never grow, however
// long and however small the RTT.
func TestWindowStalledAndIdleNeverGrow(t *testing.T) {
	now := time.Unix(1000, 0)
	stalled := NewWindow(256<<10, 16<<20)
	if err := stalled.Receive(256 << 10); err != nil {
		t.Fatal(err)
	}
	if err := stalled.Receive(1); !errors.Is(err, ErrWindowExceeded) {
		t.Fatalf("stalled window took more: %v", err)
	}
	for i := range 1000 {
		if inc := stalled.Release(0, now.Add(time.Duration(i)*time.Millisecond), time.Microsecond); inc != 0 {
			t.Fatalf("a stalled stream announced %d", inc)
		}
	}
	idle := NewWindow(256<<10, 16<<20)
	idle.Flush()
	if stalled.Size() != 256<<10 || idle.Size() != 256<<10 || stalled.Buffered() != 256<<10 {
		t.Fatalf("sizes %d/%d, buffered %d", stalled.Size(), idle.Size(), stalled.Buffered())
	}
	// An application-limited trickle: a request a millisecond, each far
	// below a window, does not grow it either.
	trickle := NewWindow(256<<10, 16<<20)
	for i := range 10000 {
		if err := trickle.Receive(100); err != nil {
			t.Fatal(err)
		}
		trickle.Release(100, now.Add(time.Duration(i)*time.Millisecond), 50*time.Millisecond)
	}
	if trickle.Size() != 256<<10 {
		t.Fatalf("a trickle grew the window to %d", trickle.Size())
	}
}

func TestStreamRules(t *testing.T) {
	peer, local := Fixed(8192), Fixed(8192)
	type op struct {
		what string // ack, data, fin, window, sendfin
		n    int
		err  error
	}
	for _, tc := range []struct {
		name     string
		opener   bool
		ops      []op
		complete bool
	}{
		{"opener: nothing before OPEN_ACK", true, []op{
			{what: "data", n: 1, err: ErrBeforeAck},
			{what: "fin", err: ErrBeforeAck},
			{what: "window", n: 1, err: ErrBeforeAck},
			{what: "ack"},
			{what: "ack", err: ErrDuplicateAck},
			{what: "data", n: 10},
		}, false},
		{"accepting side: acknowledged from the start", false, []op{
			{what: "ack", err: ErrDuplicateAck},
			{what: "data", n: 10},
		}, false},
		{"half-close both ways completes", false, []op{
			{what: "data", n: 100},
			{what: "fin"},
			{what: "data", n: 1, err: ErrDataAfterFin},
			{what: "fin", err: ErrDuplicateFin},
			{what: "window", n: 100}, // credit for our earlier bytes is fine after the peer's FIN
			{what: "sendfin"},
		}, true},
		{"credit is enforced", false, []op{
			{what: "data", n: 8192},
			{what: "data", n: 1, err: ErrWindowExceeded},
		}, false},
		{"over-grant is an error", false, []op{
			{what: "window", n: 1, err: ErrOverGrant},
		}, false},
	} {
		s := NewStream(peer, local, tc.opener)
		if s.Acked() == tc.opener {
			t.Fatalf("%s: Acked() = %v at start", tc.name, s.Acked())
		}
		for i, o := range tc.ops {
			var err error
			switch o.what {
			case "ack":
				err = s.OpenAck()
			case "data":
				err = s.Data(o.n)
			case "fin":
				err = s.Fin()
			case "window":
				if o.err == nil {
					s.Send.Take(o.n)
				}
				err = s.Window(uint32(o.n))
			case "sendfin":
				if !s.SendFin() || s.SendFin() {
					t.Fatalf("%s: SendFin twice did not report the second", tc.name)
				}
			}
			if !errors.Is(err, o.err) && !(err == nil && o.err == nil) {
				t.Fatalf("%s op %d (%s): %v, want %v", tc.name, i, o.what, err, o.err)
			}
		}
		if s.Complete() != tc.complete {
			t.Fatalf("%s: Complete() = %v", tc.name, s.Complete())
		}
	}
}

func TestUnknownFrames(t *testing.T) {
	var r Recent
	r.Add(7)
	r.Add(0) // never a stream: ignored
	for _, tc := range []struct {
		cid  uint32
		t    codec.FrameType
		want Verdict
	}{
		{7, codec.FrameWindow, Ignore}, // credit for our last DATA, after a clean end
		{7, codec.FrameData, Ignore},   // pipelined behind an OPEN that failed
		{7, codec.FrameFin, Ignore},
		{7, codec.FrameOpenAck, Ignore}, // an OPEN we timed out
		{7, codec.FrameRst, Ignore},
		{8, codec.FrameRst, Ignore}, // RST is never answered
		{8, codec.FrameWindow, Reset},
		{8, codec.FrameData, Reset},
		{8, codec.FrameOpenAck, Reset},
		{0, codec.FrameData, Reset},
	} {
		if got := r.Unknown(tc.cid, tc.t); got != tc.want {
			t.Errorf("Unknown(%d, %s) = %v, want %v", tc.cid, tc.t, got, tc.want)
		}
	}
	// Bounded: the oldest CID is forgotten after RecentCIDs more ends.
	for i := range RecentCIDs {
		r.Add(uint32(1000 + i))
	}
	if r.Has(7) || !r.Has(1000) || !r.Has(1000+RecentCIDs-1) {
		t.Fatal("ring did not forget the oldest CID, or forgot a newer one")
	}
}

func TestTunnel(t *testing.T) {
	v1 := NewTunnel(Fixed(64<<10), Fixed(64<<10))
	if v1.Recv.Enabled() || v1.Send.Avail() < 1<<40 {
		t.Fatal("protocol 1 has no tunnel-level window")
	}
	peer := Limits{Stream: 64 << 10, MaxStream: 1 << 20, Tunnel: 2 << 20}
	local := Limits{Stream: 32 << 10, MaxStream: 1 << 20, Tunnel: 4 << 20}
	v2 := NewTunnel(peer, local)
	s := v2.NewStream(true)
	if s.Send.Avail() != 64<<10 || s.Recv.Size() != 32<<10 || s.Acked() {
		t.Fatalf("stream limits: send %d recv %d acked %v", s.Send.Avail(), s.Recv.Size(), s.Acked())
	}
	if v2.Peer() != peer || v2.Local() != local {
		t.Fatal("limits lost")
	}
	// The tunnel-level credit caps every stream together.
	v2.Send = NewCredit(100, 2<<20)
	if got := v2.SendAvail(&s.Send); got != 100 {
		t.Fatalf("SendAvail = %d, want the tunnel's 100", got)
	}
	v2.Sent(&s.Send, 100)
	if v2.SendAvail(&s.Send) != 0 || s.Send.Avail() != 64<<10-100 {
		t.Fatal("Sent did not spend both credits")
	}
	if err := v2.Send.Grant(2<<20 + 1); !errors.Is(err, ErrOverGrant) {
		t.Fatalf("tunnel over-grant: %v", err)
	}
	if err := v2.Recv.Receive(4 << 20); err != nil {
		t.Fatal(err)
	}
	if err := v2.Recv.Receive(1); !errors.Is(err, ErrWindowExceeded) {
		t.Fatalf("tunnel window exceeded: %v", err)
	}
	if inc := v2.Recv.Release(4<<20, time.Now(), time.Millisecond); inc != 4<<20 || v2.Recv.Size() != 4<<20 {
		t.Fatalf("tunnel release %d, size %d (it must not grow)", inc, v2.Recv.Size())
	}
}

func TestRTT(t *testing.T) {
	var r RTT
	r.Sample(0)
	if r.Smoothed() != 0 {
		t.Fatal("a zero sample counted")
	}
	r.Sample(80 * time.Millisecond)
	if r.Smoothed() != 80*time.Millisecond {
		t.Fatalf("first sample: %v", r.Smoothed())
	}
	r.Sample(160 * time.Millisecond)
	if r.Smoothed() != 90*time.Millisecond {
		t.Fatalf("smoothed %v, want 90ms", r.Smoothed())
	}
	if r.Min() != 80*time.Millisecond {
		t.Fatalf("min %v, want 80ms", r.Min())
	}
	// The minimum forgets samples older than rttSamples.
	for range rttSamples {
		r.Sample(200 * time.Millisecond)
	}
	if r.Min() != 200*time.Millisecond {
		t.Fatalf("min %v after %d newer samples, want 200ms", r.Min(), rttSamples)
	}
}

func TestReleaseAllocs(t *testing.T) {
	w := NewWindow(256<<10, 16<<20)
	now := time.Now()
	allocs := testing.AllocsPerRun(1000, func() {
		_ = w.Receive(1000)
		w.Release(1000, now, time.Millisecond)
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per receive/release", allocs)
	}
}

func BenchmarkReceiveRelease(b *testing.B) {
	w := NewWindow(256<<10, 16<<20)
	now := time.Now()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		_ = w.Receive(16 << 10)
		w.Release(16<<10, now, time.Millisecond)
	}
}

func TestResetReason(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want codec.Reason
	}{
		{ErrWindowExceeded, codec.ReasonWindowExceeded},
		{fmt.Errorf("stream 3: %w", ErrWindowExceeded), codec.ReasonWindowExceeded},
		{ErrBeforeAck, codec.ReasonProtocol},
		{ErrDataAfterFin, codec.ReasonProtocol},
		{nil, codec.ReasonProtocol},
	} {
		if got := ResetReason(tc.err); got != tc.want {
			t.Errorf("ResetReason(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
