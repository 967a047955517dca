package wanlink

import (
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// block is a pooled read buffer of Link.chunk bytes.
type block struct{ b []byte }

func (l *Link) getBlock() *block  { return l.pool.Get().(*block) }
func (l *Link) putBlock(b *block) { l.pool.Put(b) }

// segment is bytes of one block waiting for their due time.
type segment struct {
	blk      *block
	off, end int
	due      time.Duration // link clock
	release  bool          // ends at the end of blk: return blk once written
}

// endKind is how a direction ended, as its reader saw it.
type endKind uint8

const (
	endNone  endKind = iota
	endEOF           // forwarded as CloseWrite
	endReset         // forwarded as a reset of the pair
)

// pipe is one direction of a pair: readLoop reads src into blocks and
// queues segments stamped with their due time; writeLoop writes each to
// dst once it is due.
//
// The reader reads only while there is room (readRoomLocked): a free
// segment slot, no chunk overdue by more than maxLag, and a block under
// maxBlocks when it needs a new one. So a direction holds at most
// maxBlocks×chunk bytes, and a destination that stops reading stops the
// reader, whose socket then fills and blocks the sender.
type pipe struct {
	// Set at construction.
	pr        *pair
	l         *Link
	src, dst  *net.TCPConn
	maxBlocks int
	ctr       *dirCounters
	pacer     *pacer // nil: unlimited
	w         waiter // the writer's sleep; canceled by pair.abort

	// Owned by readLoop.
	cur  *block // the block being filled; nil: take a new one
	fill int    // bytes of cur already queued
	rt   *time.Timer

	dataReady  chan struct{} // cap 1: a segment or the end was queued
	spaceReady chan struct{} // cap 1: a segment was taken or written

	mu       sync.Mutex // guards the fields below
	q        []segment  // ring of len(q) slots, grown by doubling up to maxSegs
	head, n  int
	blocks   int           // blocks held: queued ones and the reader's cur
	inflight int           // bytes read and not yet written
	busy     bool          // the writer holds a segment (waiting for it or writing it)
	busyDue  time.Duration // its due time
	end      endKind       // set once, by the reader as it returns
	endDue   time.Duration // when the end reaches dst
	last     *block        // the reader's partly filled block at its end
}

func newPipe(pr *pair, dir int, src, dst *net.TCPConn, maxBlocks int) *pipe {
	return &pipe{pr: pr, l: pr.l, src: src, dst: dst, maxBlocks: maxBlocks, ctr: &pr.l.counters[dir], pacer: pr.l.pacers[dir], w: newWaiter(),
		q: make([]segment, 16), dataReady: make(chan struct{}, 1), spaceReady: make(chan struct{}, 1)}
}

func notify(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// coalesceWindow is how close in due time a read may be to the queued
// segment before it in the same block to extend it instead of taking a
// slot (holding the earlier bytes that much longer): a small fraction of
// the delay, so maxSegs slots cover a delay's worth of small reads.
func coalesceWindow(delay time.Duration) time.Duration {
	return max(100*time.Microsecond, delay/512)
}

// ---------------------------------------------------------------------------
// Reader.

func (p *pipe) readLoop() {
	defer p.pr.exit()
	for {
		if !p.waitRoom() {
			return
		}
		if p.cur == nil {
			p.cur, p.fill = p.l.getBlock(), 0
		}
		buf := p.cur.b[p.fill:]
		if p.pacer != nil && len(buf) > p.pacer.burstBytes {
			buf = buf[:p.pacer.burstBytes]
		}
		n, err := p.src.Read(buf)
		if n > 0 {
			if p.pacer != nil {
				if p.rt == nil {
					p.rt = time.NewTimer(time.Hour)
					p.rt.Stop()
				}
				if !sleepFor(p.rt, p.pacer.take(p.l.now(), n), p.pr.done) {
					return
				}
			}
			p.push(n, p.l.now()+p.l.Delay())
		}
		if err != nil {
			kind := endReset
			if errors.Is(err, io.EOF) {
				kind = endEOF
			}
			p.finish(kind, p.l.now()+p.l.Delay())
			return
		}
	}
}

// waitRoom waits until the reader may read (and, when it needs a new
// block, accounts for it); false once the pair is aborted.
func (p *pipe) waitRoom() bool {
	for {
		p.mu.Lock()
		ok := p.roomLocked(p.l.now())
		if ok && p.cur == nil {
			p.blocks++
		}
		p.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-p.spaceReady:
		case <-p.pr.done:
			return false
		}
	}
}

func (p *pipe) roomLocked(now time.Duration) bool {
	if p.n >= maxSegs {
		return false
	}
	if p.cur == nil && p.blocks >= p.maxBlocks {
		return false
	}
	switch {
	case p.busy:
		return now-p.busyDue <= maxLag
	case p.n > 0:
		return now-p.q[p.head].due <= maxLag
	}
	return true
}

// push queues the n bytes just read into cur, due at due.
func (p *pipe) push(n int, due time.Duration) {
	off, end := p.fill, p.fill+n
	p.fill = end
	full := end == len(p.cur.b)
	p.mu.Lock()
	merged := false
	if p.n > 0 {
		t := &p.q[(p.head+p.n-1)%len(p.q)]
		if t.blk == p.cur && t.end == off && due-t.due <= coalesceWindow(p.l.Delay()) {
			t.end, t.due, t.release = end, due, full
			merged = true
		}
	}
	if !merged {
		if p.n == len(p.q) { // roomLocked guarantees n < maxSegs
			q := make([]segment, min(2*len(p.q), maxSegs))
			for i := range p.n {
				q[i] = p.q[(p.head+i)%len(p.q)]
			}
			p.q, p.head = q, 0
		}
		p.q[(p.head+p.n)%len(p.q)] = segment{blk: p.cur, off: off, end: end, due: due, release: full}
		p.n++
	}
	p.inflight += n
	held := p.inflight
	p.mu.Unlock()
	p.ctr.inflight.Add(int64(n))
	p.ctr.notePeak(int64(held))
	if full {
		p.cur = nil
	}
	notify(p.dataReady)
}

// finish queues the end of this direction.
func (p *pipe) finish(kind endKind, due time.Duration) {
	p.mu.Lock()
	p.end, p.endDue, p.last = kind, due, p.cur
	p.mu.Unlock()
	p.cur = nil
	notify(p.dataReady)
}

// ---------------------------------------------------------------------------
// Writer.

func (p *pipe) writeLoop() {
	defer p.pr.exit()
	defer p.w.close()
	for {
		seg, end, ok := p.next()
		if !ok {
			return
		}
		if end != endNone {
			p.deliverEnd(end)
			return
		}
		if !p.w.sleep(seg.due - p.l.now()) {
			return
		}
		n, err := p.dst.Write(seg.blk.b[seg.off:seg.end])
		p.written(seg, n)
		if err != nil {
			// The destination is gone; its reset reaches the source
			// after the delay.
			if p.w.sleep(p.l.Delay()) {
				p.pr.abort(true)
			}
			return
		}
	}
}

// next takes the head segment, or returns the end once nothing is
// queued; ok is false once the pair is aborted.
func (p *pipe) next() (seg segment, end endKind, ok bool) {
	for {
		p.mu.Lock()
		if p.n > 0 {
			seg = p.q[p.head]
			p.q[p.head] = segment{}
			p.head = (p.head + 1) % len(p.q)
			p.n--
			p.busy, p.busyDue = true, seg.due
			p.mu.Unlock()
			notify(p.spaceReady)
			return seg, endNone, true
		}
		if p.end != endNone {
			end = p.end
			p.mu.Unlock()
			return seg, end, true
		}
		p.mu.Unlock()
		select {
		case <-p.dataReady:
		case <-p.pr.done:
			return seg, endNone, false
		}
	}
}

// written accounts for seg, of which n bytes reached dst.
func (p *pipe) written(seg segment, n int) {
	size := seg.end - seg.off
	p.mu.Lock()
	p.inflight -= size
	p.busy = false
	if seg.release {
		p.blocks--
	}
	p.mu.Unlock()
	if seg.release {
		p.l.putBlock(seg.blk)
	}
	p.ctr.inflight.Add(-int64(size))
	p.ctr.bytes.Add(int64(n))
	notify(p.spaceReady)
}

// drop forgets what is still queued once the pair has ended (an abort
// leaves bytes that will never be written), so the link's counters hold
// only live connections.
func (p *pipe) drop() {
	p.mu.Lock()
	left := p.inflight
	p.inflight, p.n = 0, 0
	p.q = nil
	p.mu.Unlock()
	p.ctr.inflight.Add(-int64(left))
}

// deliverEnd forwards the end of this direction once it is due.
func (p *pipe) deliverEnd(end endKind) {
	p.mu.Lock()
	due, last := p.endDue, p.last
	p.last = nil
	p.mu.Unlock()
	if last != nil {
		p.l.putBlock(last) // the reader has returned and every segment is written
	}
	if !p.w.sleep(due - p.l.now()) {
		return
	}
	switch end {
	case endEOF:
		_ = p.dst.CloseWrite()
	case endReset:
		p.pr.abort(true)
	}
}
