package mesh

import (
	"math/rand/v2"
	"testing"
)

// TestCIDTable: random puts, gets and deletes agree with a Go map, across growth and
// backward-shift deletion (small CIDs cluster in the probe runs).
func TestCIDTable(t *testing.T) {
	for _, space := range []uint32{40, 500, 1 << 31} {
		var tab cidTable
		ref := map[uint32]int32{}
		rnd := rand.New(rand.NewPCG(1, uint64(space)))
		for i := range 200000 {
			cid := rnd.Uint32N(space) + 1
			switch rnd.IntN(3) {
			case 0, 1:
				tab.put(cid, int32(i))
				ref[cid] = int32(i)
			case 2:
				tab.del(cid)
				delete(ref, cid)
			}
			if i%1000 == 0 {
				for k, v := range ref {
					if got, ok := tab.get(k); !ok || got != v {
						t.Fatalf("space %d step %d: get(%d) = %d, %v; want %d", space, i, k, got, ok, v)
					}
				}
				if tab.n != len(ref) {
					t.Fatalf("space %d step %d: n = %d, want %d", space, i, tab.n, len(ref))
				}
			}
		}
		for k := uint32(1); k <= min(space, 2000); k++ {
			if _, ok := tab.get(k); ok != hasKey(ref, k) {
				t.Fatalf("space %d: get(%d) present=%v, want %v", space, k, ok, hasKey(ref, k))
			}
		}
	}
}

func hasKey(m map[uint32]int32, k uint32) bool { _, ok := m[k]; return ok }

// TestDedupTable: seq must grow per CID; each CID is independent; when the table is full
// the least recently active CID is forgotten (and then accepted again from any seq).
func TestDedupTable(t *testing.T) {
	d := newDedup(3)
	steps := []struct {
		cid  uint32
		seq  uint64
		want bool
	}{
		{1, 1, true}, {1, 1, false}, {1, 2, true}, {1, 2, false}, {1, 1, false},
		{2, 1, true}, {3, 5, true}, {3, 4, false}, {2, 2, true}, // LRU now 1 (oldest), 3, 2
		{1, 3, true},  // 1 becomes the most recent; oldest is 3
		{4, 1, true},  // evicts 3
		{3, 1, true},  // forgotten: accepted again; evicts 2
		{2, 1, true},  // forgotten too; evicts 1
		{4, 1, false}, // still there
		{1, 1, true},  // 1 was evicted: accepted from any seq
	}
	for i, s := range steps {
		if got := d.accept(s.cid, s.seq); got != s.want {
			t.Fatalf("step %d: accept(%d, %d) = %v, want %v", i, s.cid, s.seq, got, s.want)
		}
		if d.len() > 3 {
			t.Fatalf("step %d: %d CIDs remembered, max 3", i, d.len())
		}
	}
}

// TestDedupNoAllocs: once the tables have grown, accepting, dropping and evicting
// allocate nothing.
func TestDedupNoAllocs(t *testing.T) {
	d := newDedup(1024)
	var cid uint32
	var seq uint64
	step := func() {
		cid = cid%4096 + 1 // 4096 CIDs through 1024 slots: evictions every step
		seq++
		d.accept(cid, seq)
		d.accept(cid, seq) // a duplicate
	}
	for range 10000 {
		step()
	}
	if n := testing.AllocsPerRun(10000, step); n != 0 {
		t.Errorf("%v allocations per frame", n)
	}
}

func BenchmarkDedup(b *testing.B) {
	d := newDedup(DefaultDedupCIDs)
	b.ReportAllocs()
	var i uint64
	for b.Loop() {
		i++
		d.accept(uint32(i%50000)+1, i)
	}
}
