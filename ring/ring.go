// Package ring provides the per-stream bounded queue that holds bytes
// waiting for a slow socket: the backpressure primitive of NowConnect.
//
// A Queue stores bytes in pooled fixed-size buffers and coalesces small writes into the
// tail buffer, so a queue of depth D with chunk size C holds up to
// min(maxBytes, D×C) bytes in at most D buffers. Push refuses (ErrFull)
// rather than grow: the caller's credit window guarantees it never has to,
// and a refusal is a protocol violation by the peer. A Queue is not safe for
// concurrent use; its owner (an event loop or a mutex) serialises access.
package ring

import (
	"errors"
	"sync"
)

// ErrFull is returned by Push when the bytes would exceed the queue's bound.
var ErrFull = errors.New("ring: queue full")

// chunkBuf is one pooled buffer of a fixed capacity (the queue's chunk).
type chunkBuf struct{ B []byte }

// Len returns the bytes in the buffer.
func (c *chunkBuf) Len() int { return len(c.B) }

// pools holds one pool per chunk size: buffers are fixed-size, so a queue
// never allocates once its pool is warm, whatever sizes other traffic uses.
var pools sync.Map // chunk size → *sync.Pool

func poolFor(chunk int) *sync.Pool {
	if p, ok := pools.Load(chunk); ok {
		return p.(*sync.Pool)
	}
	p, _ := pools.LoadOrStore(chunk, &sync.Pool{New: func() any { return &chunkBuf{B: make([]byte, 0, chunk)} }})
	return p.(*sync.Pool)
}

// Queue is a bounded FIFO of bytes. The zero value is unusable; use Init.
type Queue struct {
	// set by Init
	depth    int
	maxBytes int
	chunk    int

	pool  *sync.Pool  // buffers of chunk bytes (buffers taken before a Grow go back to their own pool)
	bufs  []*chunkBuf // ring of depth slots, allocated on first Push
	head  int         // index of the oldest buffer
	n     int         // buffers in use
	off   int         // bytes of bufs[head] already consumed
	bytes int         // unconsumed bytes in the queue
}

// Init sets the bounds: at most depth buffers, maxBytes bytes, and chunk
// bytes coalesced per buffer.
func (q *Queue) Init(depth, maxBytes, chunk int) {
	if depth < 1 {
		depth = 1
	}
	if chunk < 1 {
		chunk = 1
	}
	q.depth, q.maxBytes, q.chunk = depth, maxBytes, chunk
	q.pool = poolFor(chunk)
}

// Grow raises the bounds of a queue whose credit window grew: at most
// maxBytes bytes, coalesced into buffers of chunk bytes from now on.
// Buffers already queued keep their size, so the depth grows too when
// needed for maxBytes to fit behind them. Bounds never shrink: smaller
// values are ignored.
func (q *Queue) Grow(maxBytes, chunk int) {
	q.maxBytes = max(q.maxBytes, maxBytes)
	if chunk > q.chunk {
		q.chunk = chunk
		q.pool = poolFor(chunk)
	}
	need := q.n + (q.maxBytes+q.chunk-1)/q.chunk + 1
	if need <= q.depth {
		return
	}
	if q.bufs != nil {
		bufs := make([]*chunkBuf, need)
		for i := range q.n {
			bufs[i] = q.bufs[(q.head+i)%q.depth]
		}
		q.bufs, q.head = bufs, 0
	}
	q.depth = need
}

// MaxBytes returns the byte bound.
func (q *Queue) MaxBytes() int { return q.maxBytes }

// Len returns the unconsumed bytes in the queue.
func (q *Queue) Len() int { return q.bytes }

// Frames returns the number of buffers in use.
func (q *Queue) Frames() int { return q.n }

// Empty reports whether the queue holds no bytes.
func (q *Queue) Empty() bool { return q.bytes == 0 }

// Push copies p to the end of the queue. It fails with ErrFull, copying
// nothing, when the queue would exceed maxBytes or depth buffers.
func (q *Queue) Push(p []byte) error {
	if len(p) == 0 {
		return nil
	}
	if !q.Fits(len(p)) {
		return ErrFull
	}
	if q.bufs == nil {
		q.bufs = make([]*chunkBuf, q.depth)
	}
	if q.n > 0 {
		tail := q.bufs[(q.head+q.n-1)%q.depth]
		if room := cap(tail.B) - tail.Len(); room > 0 {
			k := min(room, len(p))
			tail.B = append(tail.B, p[:k]...)
			q.bytes += k
			p = p[k:]
		}
	}
	for len(p) > 0 {
		k := min(q.chunk, len(p))
		b := q.pool.Get().(*chunkBuf)
		b.B = append(b.B[:0], p[:k]...)
		q.bufs[(q.head+q.n)%q.depth] = b
		q.n++
		q.bytes += k
		p = p[k:]
	}
	return nil
}

// Fits reports whether Push(p) with len(p) == n would succeed.
func (q *Queue) Fits(n int) bool {
	if q.bytes+n > q.maxBytes {
		return false
	}
	if q.n > 0 {
		tail := q.bufs[(q.head+q.n-1)%q.depth]
		n -= cap(tail.B) - tail.Len()
	}
	if n <= 0 {
		return true
	}
	return q.n+(n+q.chunk-1)/q.chunk <= q.depth
}

// Peek appends to iov the unconsumed bytes of up to max buffers, oldest
// first, and returns it. The slices stay valid until Discard or Reset.
func (q *Queue) Peek(iov [][]byte, max int) [][]byte {
	for i := 0; i < q.n && i < max; i++ {
		b := q.bufs[(q.head+i)%q.depth].B
		if i == 0 {
			b = b[q.off:]
		}
		iov = append(iov, b)
	}
	return iov
}

// Discard consumes n bytes from the front, returning emptied buffers to
// the pool.
func (q *Queue) Discard(n int) {
	if n > q.bytes {
		n = q.bytes
	}
	q.bytes -= n
	for n > 0 {
		b := q.bufs[q.head]
		left := len(b.B) - q.off
		if n < left {
			q.off += n
			return
		}
		n -= left
		q.off = 0
		q.bufs[q.head] = nil
		b.B = b.B[:0]
		if cap(b.B) == q.chunk {
			q.pool.Put(b)
		} else {
			poolFor(cap(b.B)).Put(b) // taken before a Grow
		}
		q.head = (q.head + 1) % q.depth
		q.n--
	}
	if q.n == 0 {
		q.head, q.off = 0, 0
	}
}

// Reset drops every byte and returns all buffers to the pool.
func (q *Queue) Reset() {
	q.Discard(q.bytes)
	q.bufs = nil
}
