package agent

import (
	"net"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nowconnect/nowconnect/codec"
	"github.com/nowconnect/nowconnect/internal/flow"
	"github.com/nowconnect/nowconnect/internal/testenv"
)

// newTestPoller returns a poller whose goroutine is not started: the test
// drives poll itself.
func newTestPoller(t testing.TB) *poller {
	t.Helper()
	p, err := newPoller()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.close()
		_ = unix.Close(p.evfd)
	})
	return p
}

// pollUntil runs the poller until cond holds; loopback writes are
// synchronous, so the event is there at once, but a bound keeps a broken
// poller from spinning forever.
func pollUntil(t testing.TB, p *poller, what string, cond func() bool) {
	t.Helper()
	for range 1000 {
		if cond() {
			return
		}
		p.poll(uintptr(p.epfd))
	}
	t.Fatalf("poller: %s: not after 1000 passes", what)
}

// pollerSession returns a bare session whose tunnel is drained by a
// goroutine (waited for at cleanup) and a poller the test drives.
func pollerSession(t *testing.T) (*session, *poller, *net.TCPConn) {
	t.Helper()
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait) // runs after the connections' cleanups
	tun, hubEnd := testenv.TCPPair(t)
	drain(&wg, hubEnd)
	return newBareSession(t, tun), newTestPoller(t), tun
}

// TestDataPathNoAllocs: a target→hub DATA frame (the poller's epoll_wait,
// the read from the socket into a pooled buffer, framing in place, queueing,
// the writev) and the control frames allocate nothing in steady state.
func TestDataPathNoAllocs(t *testing.T) {
	skipAllocsUnderRace(t)
	s, p, tun := pollerSession(t)
	target, peerEnd := testenv.TCPPair(t)
	st := newStream(s, 9, s.a.conns.Load().byName["c"])
	st.target = target
	st.raw, _ = target.SyscallConn()
	st.mu.Lock()
	if err := p.register(st); err != nil {
		t.Fatal(err)
	}
	st.mu.Unlock()
	src := make([]byte, 4096)
	sent := func() bool {
		st.mu.Lock()
		defer st.mu.Unlock()
		return st.fc.Send.Avail() == 1<<20-len(src)
	}

	step := func() {
		st.mu.Lock()
		st.fc.Send = flow.NewCredit(1<<20, 1<<20)
		st.mu.Unlock()
		// target → hub
		if _, err := peerEnd.Write(src); err != nil {
			t.Fatal(err)
		}
		pollUntil(t, p, "4 KiB relayed", sent)
		// control frames
		s.sendWindow(9, 65536)
		s.sendEmpty(codec.FrameFin, 9)
		s.sendReason(codec.FrameRst, 9, codec.ReasonTargetReset, "connection reset by peer")
		writeQueued(t, &s.snd)
	}
	for range 10 {
		step() // warm pools and caches
	}
	if n := testing.AllocsPerRun(200, step); n != 0 {
		t.Fatalf("%v allocations per frame round", n)
	}
	_ = peerEnd.Close()
	_ = tun.Close()
}

// registered returns a stream of s reading target through p.
func registered(t *testing.T, s *session, p *poller, cid uint32, target *net.TCPConn) *stream {
	t.Helper()
	st := newStream(s, cid, s.a.conns.Load().byName["c"])
	st.target = target
	st.raw, _ = target.SyscallConn()
	st.mu.Lock()
	defer st.mu.Unlock()
	if err := p.register(st); err != nil {
		t.Fatal(err)
	}
	return st
}

func creditUsed(st *stream, from int) int {
	st.mu.Lock()
	defer st.mu.Unlock()
	return from - st.fc.Send.Avail()
}

// TestPollerFairness: a target that keeps its socket full gets readBudget
// reads per pass, so a small response on another stream of the same poller
// goes out in the same pass.
func TestPollerFairness(t *testing.T) {
	s, p, tun := pollerSession(t)
	bigT, bigPeer := testenv.TCPPair(t)
	smallT, smallPeer := testenv.TCPPair(t)
	big := registered(t, s, p, 1, bigT)
	small := registered(t, s, p, 2, smallT)
	const win = 4 << 20
	big.fc.Send, small.fc.Send = flow.NewCredit(win, win), flow.NewCredit(win, win)

	// Fill the big target's socket beyond what one pass may read.
	_ = bigPeer.SetWriteBuffer(4 << 20)
	chunk := make([]byte, 64<<10)
	queued := 0
	_ = bigPeer.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
	for queued < 4*readBudget*readChunk {
		n, err := bigPeer.Write(chunk)
		queued += n
		if err != nil {
			break // the loopback buffers are full
		}
	}
	if queued <= 2*readBudget*readChunk {
		t.Fatalf("loopback buffers took only %d bytes", queued)
	}
	if _, err := smallPeer.Write([]byte("small response")); err != nil {
		t.Fatal(err)
	}
	pollUntil(t, p, "small response relayed", func() bool { return creditUsed(small, win) > 0 })
	if got := creditUsed(big, win); got > readBudget*readChunk {
		t.Fatalf("the busy stream got %d bytes before the small one was served, budget %d per pass", got, readBudget*readChunk)
	}
	// The busy stream is not forgotten: it drains completely.
	pollUntil(t, p, "busy stream drained", func() bool { return creditUsed(big, win) == queued })
	writeQueued(t, &s.snd)
	_ = tun.Close()
}

// TestPollerStaleEvent: after a stream ends its slot may be reused; an
// event registered under the old generation finds nothing.
func TestPollerStaleEvent(t *testing.T) {
	s, p, tun := pollerSession(t)
	t1, _ := testenv.TCPPair(t)
	t2, _ := testenv.TCPPair(t)
	a := registered(t, s, p, 1, t1)
	slot, gen := a.rd.slot, a.rd.gen
	a.mu.Lock()
	a.stopReaderLocked()
	a.mu.Unlock()
	b := registered(t, s, p, 2, t2)
	if b.rd.slot != slot {
		t.Fatalf("slot %d not reused (got %d)", slot, b.rd.slot)
	}
	if p.lookup(slot, gen) != nil {
		t.Fatal("stale generation found a stream")
	}
	if p.lookup(slot, b.rd.gen) != b {
		t.Fatal("current generation lost")
	}
	if p.lookup(slot+1, 0) != nil || p.lookup(-1, 0) != nil {
		t.Fatal("lookup outside the table")
	}
	_ = tun.Close()
}
