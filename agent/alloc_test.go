package agent

import (
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"

	"github.com/nowconnect/nowconnect/codec"
	"github.com/nowconnect/nowconnect/internal/flow"
	"github.com/nowconnect/nowconnect/internal/testenv"
)

// drain reads c until it fails, tracked by wg.
func drain(wg *sync.WaitGroup, c net.Conn) {
	wg.Add(1)
	go func() { // drainLoop
		defer wg.Done()
		_, _ = io.Copy(io.Discard, c)
	}()
}

// newBareSession is a session over conn without goroutines, for unit tests
// of the data path.
func newBareSession(t testing.TB, conn net.Conn) *session {
	a, err := New(Config{URLs: []string{"ws://127.0.0.1:1/tunnel"}, AgentID: "a",
		Connectors: map[string]string{"c": "127.0.0.1:1"},
		Logger:     slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	s := &session{a: a, conn: conn, streams: make(map[uint32]*stream), readMin: 16 << 10, acked: true,
		peer: flow.Fixed(1 << 20), local: flow.Fixed(a.limits.Stream), version: codec.Version1}
	s.fc = flow.NewTunnel(s.peer, s.local)
	s.ctx, s.cancel = t.Context(), func() {}
	s.log = a.log
	s.snd.init(conn)
	return s
}

// writeQueued writes what w queued, as tunnelWriteLoop would (none runs in
// these tests).
func writeQueued(tb testing.TB, w *sender) {
	tb.Helper()
	if !w.acquire() {
		tb.Fatal("the sender is busy")
	}
	if _, err := w.writePending(); err != nil {
		tb.Fatal(err)
	}
}

func skipAllocsUnderRace(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items at random under -race")
	}
}

// TestHubDataNoAllocs: a hub→agent DATA frame is parsed, looked up and
// queued for the target without allocating, and the writer's writev and
// credit return allocate nothing either.
func TestHubDataNoAllocs(t *testing.T) {
	skipAllocsUnderRace(t)
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait) // runs after the connections' cleanups
	tun, hubEnd := testenv.TCPPair(t)
	drain(&wg, hubEnd)
	s := newBareSession(t, tun)
	target, peerEnd := testenv.TCPPair(t)
	drain(&wg, peerEnd)
	st := newStream(s, 4, s.a.conns.Load().byName["c"])
	st.open, st.writing, st.target = true, true, target
	s.streams[4] = st
	f := append(codec.AppendHeader(nil, codec.FrameData, 4), make([]byte, 20000)...)
	v := &iovec{}
	step := func() {
		if err := s.handleFrame(f); err != nil {
			t.Fatal(err)
		}
		// What targetWriteLoop does per batch.
		st.mu.Lock()
		v.nb = st.q.Peek(v.arr[:0], maxIOV)
		st.mu.Unlock()
		n, err := v.nb.WriteTo(st.target)
		if err != nil {
			t.Fatal(err)
		}
		st.mu.Lock()
		st.q.Discard(int(n))
		st.wroteLocked(int(n))
		st.mu.Unlock()
		writeQueued(t, &s.snd)
	}
	for range 20 {
		step()
	}
	if n := testing.AllocsPerRun(200, step); n != 0 {
		t.Fatalf("%v allocations per DATA frame", n)
	}
	_ = tun.Close()
	_ = peerEnd.Close()
}

func BenchmarkTargetToHubFrame(b *testing.B) {
	var wg sync.WaitGroup
	b.Cleanup(wg.Wait)
	tun, hubEnd := testenv.TCPPair(b)
	drain(&wg, hubEnd)
	s := newBareSession(b, tun)
	b.ReportAllocs()
	b.SetBytes(readChunk)
	for b.Loop() {
		fb := getFrameBuf()
		off, end := prepareData(fb, 1, readChunk)
		s.snd.enqueueData(fb, off, end, false)
		writeQueued(b, &s.snd)
	}
	_ = tun.Close()
}
