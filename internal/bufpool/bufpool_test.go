package bufpool

import "testing"

// TestClasses: a buffer is at least the size asked for and less than twice
// it (above the smallest class), and comes back from its own class.
func TestClasses(t *testing.T) {
	for _, n := range []int{0, 1, 127, 128, 129, 1000, 4096, 40000, 64 << 10, 64<<10 + 1, Max} {
		b := Get(n)
		if len(b.B) < n {
			t.Fatalf("Get(%d): %d bytes", n, len(b.B))
		}
		if n > 128 && len(b.B) >= 2*n {
			t.Fatalf("Get(%d): %d bytes, twice or more", n, len(b.B))
		}
		Put(b)
	}
	if got := len(Get(Max).B); got != Max {
		t.Fatalf("Get(Max): %d bytes, want %d", got, Max)
	}
}

func TestNoAllocsWhenWarm(t *testing.T) {
	Put(Get(3000))
	if n := testing.AllocsPerRun(100, func() { Put(Get(3000)) }); n != 0 {
		t.Fatalf("%v allocations per Get/Put", n)
	}
}
