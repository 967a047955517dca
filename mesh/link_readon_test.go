package mesh_test

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/codec"
	"github.com/nowconnect/nowconnect/internal/testenv"
	"github.com/nowconnect/nowconnect/mesh"
)

// readOnPair starts two hubs whose links are read by the test's chunkReader
// (Link.ReadOn) rather than by their reader goroutines: b dials a.
func readOnPair(t *testing.T) (a, b *hub, ab, ba *mesh.Link) {
	a = listenHub(t, "hub-a", func(c *mesh.ManagerConfig) { c.Handler = &recorder{readOn: true} })
	b = newHub(t, mesh.ManagerConfig{ReplicaID: "hub-b", Secret: testSecret, Peers: []string{a.url()},
		BackoffMax: time.Second, PingInterval: 50 * time.Millisecond, Handler: &recorder{readOn: true}})
	ab, ba = a.waitLink(t, "hub-b"), b.waitLink(t, "hub-a")
	testenv.WaitFor(t, 5*time.Second, "both links read elsewhere", func() bool {
		return a.rec.readsMoved() == 1 && b.rec.readsMoved() == 1
	})
	return a, b, ab, ba
}

// TestReadOnFrames: frames of every size, split anywhere by the reads, arrive
// whole and in order both ways once the reading moved off the reader goroutine.
func TestReadOnFrames(t *testing.T) {
	testenv.CheckGoroutines(t)
	a, b, ab, ba := readOnPair(t)
	const rounds, perRound = 10, 20
	for _, d := range []struct {
		name string
		from *mesh.Link
		to   *hub
		cid  uint32
	}{{"b→a", ba, a, 1}, {"a→b", ab, b, 2}} {
		var want []string
		seq := uint64(0)
		for r := range rounds {
			for i := range perRound {
				n := 1 + (r*perRound+i)*811%codec.MaxPayload
				p := bytes.Repeat([]byte{byte('a' + i)}, n)
				seq++
				if err := d.from.SendData(header(t, codec.MeshFrameData, d.cid, seq), p); err != nil {
					t.Fatalf("%s: send %d: %v", d.name, seq, err)
				}
				want = append(want, string(p))
			}
			testenv.WaitFor(t, 5*time.Second, fmt.Sprintf("%s: round %d received", d.name, r), func() bool {
				return len(d.to.rec.got()) == len(want)
			})
		}
		for i, f := range d.to.rec.got() {
			if f.CID != d.cid || f.Seq != uint64(i+1) || f.Payload != want[i] {
				t.Fatalf("%s: frame %d: cid %d seq %d, %d bytes; want cid %d seq %d, %d bytes",
					d.name, i, f.CID, f.Seq, len(f.Payload), d.cid, i+1, len(want[i]))
			}
		}
	}
	a.rec.check(t)
	b.rec.check(t)
	if ups, downs := a.rec.counts(); ups != 1 || downs != 0 {
		t.Errorf("a: %d LinkUp, %d LinkDown; want 1, 0", ups, downs)
	}
}

// TestReadOnHostStops: when the host of a link's reading stops it by itself
// (the hub's event loops stopping at shutdown), the link ends as on shutdown:
// a close frame "going away" to the peer, no link error on either hub.
func TestReadOnHostStops(t *testing.T) {
	testenv.CheckGoroutines(t)
	a, b, _, _ := readOnPair(t)
	a.rec.stopReaders()
	testenv.WaitFor(t, 5*time.Second, "LinkDown on both hubs", func() bool {
		_, da := a.rec.counts()
		_, db := b.rec.counts()
		return da == 1 && db >= 1
	})
	if err := a.rec.lastDown(); !errors.Is(err, mesh.ErrShutdown) {
		t.Errorf("a's LinkDown error %v, want ErrShutdown", err)
	}
	if err := b.rec.lastDown(); !errors.Is(err, mesh.ErrPeerClosed) {
		t.Errorf("b's LinkDown error %v, want ErrPeerClosed", err)
	}
	for _, h := range []*hub{a, b} {
		peer := map[*hub]string{a: "hub-b", b: "hub-a"}[h]
		if got := h.metric(t, `nowconnect_mesh_link_errors_total{peer="`+peer+`"}`); got != 0 {
			t.Errorf("%s counted %v link errors", h.cfg.ReplicaID, got)
		}
	}
	a.rec.check(t)
	b.rec.check(t)
}
