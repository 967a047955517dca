package mesh

// The per-CID tables of a link: the receiver's dedup of stream frames (the last seq
// accepted per CID, in a bounded LRU) and the sender's count of queued M_DATA per CID
// (see link_send.go). Both map CIDs to small integers in an open-addressing table
// that grows by doubling up to its bound and then never allocates again.

// DefaultDedupCIDs is how many CIDs a link's dedup remembers (ManagerConfig.DedupCIDs):
// the last seq of the 65536 most recently active streams, about 2.3 MiB per link once
// full. A CID evicted from it is accepted again from any seq, so it must exceed the
// streams a link carries at once, by far.
const DefaultDedupCIDs = 1 << 16

// cidTable maps non-zero CIDs to int32 values: linear probing, backward-shift
// deletion (no tombstones), at most half full. Key 0 marks an empty slot, which is why
// CID 0 (the link level) is never stored. get, put and del do not allocate unless put
// has to grow the table.
type cidTable struct {
	keys  []uint32
	vals  []int32
	n     int
	shift uint8 // 32 - log2(len(keys))
}

const minTableSlots = 64

func (t *cidTable) home(cid uint32) int {
	return int((cid * 0x9e3779b1) >> t.shift)
}

// find returns the slot of cid, or -1.
func (t *cidTable) find(cid uint32) int {
	if len(t.keys) == 0 {
		return -1
	}
	mask := len(t.keys) - 1
	for i := t.home(cid); ; i = (i + 1) & mask {
		switch t.keys[i] {
		case cid:
			return i
		case 0:
			return -1
		}
	}
}

func (t *cidTable) get(cid uint32) (int32, bool) {
	if i := t.find(cid); i >= 0 {
		return t.vals[i], true
	}
	return 0, false
}

// put sets cid's value, inserting it if absent.
func (t *cidTable) put(cid uint32, v int32) {
	if 2*(t.n+1) > len(t.keys) {
		t.grow()
	}
	mask := len(t.keys) - 1
	for i := t.home(cid); ; i = (i + 1) & mask {
		switch t.keys[i] {
		case cid:
			t.vals[i] = v
			return
		case 0:
			t.keys[i], t.vals[i] = cid, v
			t.n++
			return
		}
	}
}

// del removes cid if present, shifting back the entries of its probe run.
func (t *cidTable) del(cid uint32) {
	i := t.find(cid)
	if i < 0 {
		return
	}
	mask := len(t.keys) - 1
	for j := (i + 1) & mask; t.keys[j] != 0; j = (j + 1) & mask {
		// The entry at j may fill the hole at i unless its home lies cyclically in
		// (i, j]: then it would be found before reaching i.
		h := t.home(t.keys[j])
		var stays bool
		if i < j {
			stays = i < h && h <= j
		} else {
			stays = i < h || h <= j
		}
		if !stays {
			t.keys[i], t.vals[i] = t.keys[j], t.vals[j]
			i = j
		}
	}
	t.keys[i], t.vals[i] = 0, 0
	t.n--
}

func (t *cidTable) grow() {
	slots := max(2*len(t.keys), minTableSlots)
	oldK, oldV := t.keys, t.vals
	t.keys, t.vals, t.n = make([]uint32, slots), make([]int32, slots), 0
	t.shift = uint8(32 - log2(slots))
	for i, k := range oldK {
		if k != 0 {
			t.put(k, oldV[i])
		}
	}
}

// log2 of a power of two.
func log2(n int) int {
	b := 0
	for n > 1 {
		n >>= 1
		b++
	}
	return b
}

// dedup is a link receiver's memory of the last seq accepted per CID, for the stream
// frames of the peer (one direction: seq numbers a CID's frames from the peer to us).
// It holds at most max CIDs; when full, the least recently active CID is forgotten.
// Owned by the link's reader goroutine.
type dedup struct {
	max   int
	index cidTable // cid → entry
	// entries, grown by append up to max; the LRU list runs through prev/next (-1
	// terminated), head the most recently active
	cid        []uint32
	seq        []uint64
	prev, next []int32
	head, tail int32
}

func newDedup(max int) dedup {
	return dedup{max: max, head: -1, tail: -1}
}

// accept reports whether the frame (cid ≠ 0, seq) is new, that is seq is above the
// last one accepted for cid, and records it; false means a duplicate to drop.
func (d *dedup) accept(cid uint32, seq uint64) bool {
	if i, ok := d.index.get(cid); ok {
		if seq <= d.seq[i] {
			return false
		}
		d.seq[i] = seq
		if i != d.head {
			d.unlink(i)
			d.pushFront(i)
		}
		return true
	}
	var i int32
	if len(d.cid) < d.max {
		i = int32(len(d.cid))
		d.cid, d.seq = append(d.cid, 0), append(d.seq, 0)
		d.prev, d.next = append(d.prev, -1), append(d.next, -1)
	} else {
		i = d.tail
		d.index.del(d.cid[i])
		d.unlink(i)
	}
	d.cid[i], d.seq[i] = cid, seq
	d.pushFront(i)
	d.index.put(cid, i)
	return true
}

func (d *dedup) unlink(i int32) {
	p, n := d.prev[i], d.next[i]
	if p >= 0 {
		d.next[p] = n
	} else {
		d.head = n
	}
	if n >= 0 {
		d.prev[n] = p
	} else {
		d.tail = p
	}
	d.prev[i], d.next[i] = -1, -1
}

func (d *dedup) pushFront(i int32) {
	d.prev[i], d.next[i] = -1, d.head
	if d.head >= 0 {
		d.prev[d.head] = i
	}
	d.head = i
	if d.tail < 0 {
		d.tail = i
	}
}

// len returns how many CIDs are remembered.
func (d *dedup) len() int { return d.index.n }
