package mesh

import (
	"errors"
	"net"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/nowconnect/nowconnect/codec"
	"github.com/nowconnect/nowconnect/internal/bufpool"
	"github.com/nowconnect/nowconnect/internal/testenv"
)

type nopHandler struct{}

func (nopHandler) LinkUp(*Link)                          {}
func (nopHandler) Frame(*Link, codec.MeshHeader, []byte) {}
func (nopHandler) LinkDown(*Link, error)                 {}

// bareLink is an accepted link (unmasked frames) on one end of a pipe, without
// goroutines: the lanes can be filled and taken by hand.
func bareLink(t *testing.T) *Link {
	t.Helper()
	m, err := NewManager(ManagerConfig{ReplicaID: "hub-a", Secret: make([]byte, 32), Handler: nopHandler{}})
	if err != nil {
		t.Fatal(err)
	}
	c1, c2 := net.Pipe()
	t.Cleanup(func() { c1.Close(); c2.Close() })
	l := newLink(m, c1, false, nil)
	l.peer, l.lm = "hub-b", m.met.forLink("hub-b")
	return l
}

// taken returns "TYPE/cid" of every message of the writer's batch.
func taken(t *testing.T, l *Link) []string {
	t.Helper()
	l.snd.take(true)
	var out []string
	for _, it := range l.snd.batch {
		h, n, err := codec.ParseWSHeader(it.buf.B[:it.n])
		if err != nil || h.OpCode != ws.OpBinary {
			t.Fatalf("bad message in batch: %v", err)
		}
		mh, _, err := codec.ParseMeshFrame(it.buf.B[n:it.n])
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, mh.Type.String()+"/"+string(rune('0'+mh.CID)))
	}
	l.snd.written()
	return out
}

// TestLanes: control frames overtake queued DATA of other streams, never DATA of their
// own stream (a FIN or WINDOW of a stream with DATA queued waits behind it), and the
// link-level WINDOW always overtakes.
func TestLanes(t *testing.T) {
	l := bareLink(t)
	hdr := func(ft codec.MeshFrameType, cid uint32, seq uint64) []byte {
		h, err := codec.AppendMeshHeader(nil, ft, cid, seq, 1, "a", "c")
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	win := func(cid uint32) []byte {
		var f []byte
		var err error
		if cid == 0 {
			f, err = codec.AppendMeshWindow(nil, 0, 0, 0, "", "", 1)
		} else {
			f, err = codec.AppendMeshWindow(nil, cid, 9, 1, "a", "c", 1)
		}
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(l.SendData(hdr(codec.MeshFrameData, 5, 2), []byte("x")))
	must(l.SendData(hdr(codec.MeshFrameData, 5, 3), []byte("y")))
	must(l.SendControl(win(7)))
	must(l.SendControl(hdr(codec.MeshFrameFin, 5, 4)))
	must(l.SendControl(win(0)))
	must(l.SendControl(win(5)))
	want := []string{"M_WINDOW/7", "M_WINDOW/0", "M_DATA/5", "M_DATA/5", "M_FIN/5", "M_WINDOW/5"}
	if got := taken(t, l); !equal(got, want) {
		t.Errorf("batch %v, want %v", got, want)
	}
	// Nothing of cid 5 queued any more: its control frames take the fast lane again.
	must(l.SendData(hdr(codec.MeshFrameData, 7, 10), []byte("z")))
	must(l.SendControl(win(5)))
	if got, want := taken(t, l), []string{"M_WINDOW/5", "M_DATA/7"}; !equal(got, want) {
		t.Errorf("batch %v, want %v", got, want)
	}
	if l.snd.ctrlN != 0 || l.snd.charge != 0 || l.snd.pending.n != 0 {
		t.Errorf("after the batches: ctrlN %d charge %d pending %d", l.snd.ctrlN, l.snd.charge, l.snd.pending.n)
	}
}

// TestBatchBound: one batch carries every control frame but at most maxBatchData of
// DATA, so control frames queued meanwhile wait behind that much only.
func TestBatchBound(t *testing.T) {
	l := bareLink(t)
	h, _ := codec.AppendMeshHeader(nil, codec.MeshFrameData, 1, 1, 1, "a", "c")
	payload := make([]byte, codec.MaxPayload)
	for range 10 {
		if err := l.SendData(h, payload); err != nil {
			t.Fatal(err)
		}
	}
	l.snd.take(true)
	if n := len(l.snd.batch); n != maxBatchData/codec.MaxPayload {
		t.Errorf("first batch holds %d frames of 64 KiB, want %d", n, maxBatchData/codec.MaxPayload)
	}
	l.snd.written()
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestBackoff: full jitter in [0, min(max, 250ms·2^n)].
func TestBackoff(t *testing.T) {
	top := func(k int64) int64 { return k - 1 }
	for _, tc := range []struct {
		n    int
		max  time.Duration
		want time.Duration
	}{
		{0, 30 * time.Second, 250 * time.Millisecond},
		{1, 30 * time.Second, 500 * time.Millisecond},
		{4, 30 * time.Second, 4 * time.Second},
		{7, 30 * time.Second, 30 * time.Second},
		{100, 30 * time.Second, 30 * time.Second},
		{3, time.Second, time.Second},
	} {
		if got := backoff(tc.n, tc.max, top); got != tc.want {
			t.Errorf("backoff(%d, %v) top = %v, want %v", tc.n, tc.max, got, tc.want)
		}
		if got := backoff(tc.n, tc.max, func(int64) int64 { return 0 }); got != 0 {
			t.Errorf("backoff(%d, %v) bottom = %v, want 0", tc.n, tc.max, got)
		}
	}
}

// TestControlDepth: with the writer not draining, SendQueueDepth control frames are
// queued and the next is refused (ErrBackpressure, counted queue_full), whichever lane
// they wait in; skipped M_PINGs are not counted; once taken, the queue has room again.
// M_DATA is refused once its buffers would pass the budget (dataBudget).
func TestControlDepth(t *testing.T) {
	l := bareLink(t)
	l.snd.depth = 4
	win, _ := codec.AppendMeshWindow(nil, 3, 1, 1, "a", "c", 1)
	data, _ := codec.AppendMeshHeader(nil, codec.MeshFrameData, 3, 2, 1, "a", "c")
	if err := l.SendData(data, []byte("x")); err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		if err := l.SendControl(win); err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
	}
	if err := l.SendControl(win); !errors.Is(err, ErrBackpressure) {
		t.Fatalf("5th control frame: %v, want ErrBackpressure", err)
	}
	l.snd.ping()
	if got := metricValue(t, l.m, `nowconnect_mesh_backpressure_drops_total{peer="hub-b",reason="queue_full"}`); got != 1 {
		t.Errorf("queue_full drops = %v, want 1 (the skipped ping is not one)", got)
	}
	if got := metricValue(t, l.m, `nowconnect_mesh_send_queue_size{peer="hub-b"}`); got != 5 {
		t.Errorf("queue size gauge %v, want 5 (1 DATA, 4 control)", got)
	}
	l.snd.take(true)
	l.snd.written()
	if err := l.SendControl(win); err != nil {
		t.Errorf("after the writer took the batch: %v", err)
	}

	// DATA: the budget is charged by buffer size.
	l.snd.budget = 3 * bufpool.Max
	payload := make([]byte, codec.MaxPayload)
	for i := range 3 {
		if err := l.SendData(data, payload); err != nil {
			t.Fatalf("DATA %d: %v", i, err)
		}
	}
	if err := l.SendData(data, []byte("x")); !errors.Is(err, ErrBackpressure) {
		t.Errorf("DATA beyond the budget: %v, want ErrBackpressure", err)
	}
	if got := metricValue(t, l.m, `nowconnect_mesh_backpressure_drops_total{peer="hub-b",reason="inflight"}`); got != 1 {
		t.Errorf("inflight drops = %v", got)
	}
}

func metricValue(t *testing.T, m *Manager, series string) float64 {
	t.Helper()
	return testenv.Metric(t, m.cfg.Metrics.WritePrometheus, series)
}
