package ring

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand"
	"slices"
	"testing"
)

// raceEnabled is set by race_test.go: the race detector makes sync.Pool drop
// a quarter of what is put in it, so allocation counts mean nothing there.
var raceEnabled bool

// model is the queue as the package doc describes it, kept in plain slices:
// the bytes in order, and the fill of each buffer (the head's consumed
// bytes included, as they still take room in it).
type model struct {
	depth, maxBytes, chunk int

	data []byte
	bufs []int
	off  int
}

func newModel(depth, maxBytes, chunk int) *model {
	return &model{depth: max(depth, 1), maxBytes: maxBytes, chunk: max(chunk, 1)}
}

func (m *model) fits(n int) bool {
	if len(m.data)+n > m.maxBytes {
		return false
	}
	if len(m.bufs) > 0 {
		n -= m.chunk - m.bufs[len(m.bufs)-1]
	}
	return n <= 0 || len(m.bufs)+(n+m.chunk-1)/m.chunk <= m.depth
}

func (m *model) push(p []byte) bool {
	if len(p) == 0 {
		return true
	}
	if !m.fits(len(p)) {
		return false
	}
	m.data = append(m.data, p...)
	n := len(p)
	if last := len(m.bufs) - 1; last >= 0 {
		k := min(m.chunk-m.bufs[last], n)
		m.bufs[last] += k
		n -= k
	}
	for n > 0 {
		k := min(m.chunk, n)
		m.bufs = append(m.bufs, k)
		n -= k
	}
	return true
}

func (m *model) discard(n int) {
	n = min(n, len(m.data))
	m.data = m.data[n:]
	for n > 0 {
		left := m.bufs[0] - m.off
		if n < left {
			m.off += n
			return
		}
		n -= left
		m.off = 0
		m.bufs = m.bufs[1:]
	}
}

func (m *model) reset() { m.data, m.bufs, m.off = nil, nil, 0 }

// segs returns the lengths Peek must return.
func (m *model) segs() []int {
	s := slices.Clone(m.bufs)
	if len(s) > 0 {
		s[0] -= m.off
	}
	return s
}

func lens(iov [][]byte) []int {
	l := make([]int, len(iov))
	for i, b := range iov {
		l[i] = len(b)
	}
	return l
}

// check compares q with m byte for byte.
func check(t *testing.T, q *Queue, m *model) {
	t.Helper()
	if q.Len() != len(m.data) || q.Empty() != (len(m.data) == 0) || q.Frames() != len(m.bufs) {
		t.Fatalf("Len %d Empty %v Frames %d; want %d, %v, %d",
			q.Len(), q.Empty(), q.Frames(), len(m.data), len(m.data) == 0, len(m.bufs))
	}
	iov := q.Peek(nil, m.depth+1)
	if got, want := lens(iov), m.segs(); !slices.Equal(got, want) {
		t.Fatalf("Peek lengths %v, want %v", got, want)
	}
	if got := bytes.Join(iov, nil); !bytes.Equal(got, m.data) {
		t.Fatalf("content differs: got %d bytes %x…, want %d bytes %x…",
			len(got), got[:min(len(got), 16)], len(m.data), m.data[:min(len(m.data), 16)])
	}
}

// source hands out bytes that never repeat within 251 of each other, so a
// byte copied twice or skipped shows.
type source struct{ next byte }

func (s *source) take(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = s.next
		s.next = (s.next + 1) % 251
	}
	return b
}

func TestQueue(t *testing.T) {
	type step struct {
		push    int // bytes to push
		discard int // bytes to discard, when push is 0
		reset   bool
		wantErr error
		want    []int // lengths Peek returns after the step
	}
	tests := []struct {
		name                   string
		depth, maxBytes, chunk int
		steps                  []step
	}{
		{
			name:  "small pushes coalesce into the tail up to chunk",
			depth: 4, maxBytes: 1024, chunk: 16,
			steps: []step{
				{push: 5, want: []int{5}},
				{push: 5, want: []int{10}},
				{push: 6, want: []int{16}},
				{push: 1, want: []int{16, 1}},
				{push: 3, want: []int{16, 4}},
			},
		},
		{
			name:  "push larger than chunk spans buffers",
			depth: 4, maxBytes: 1024, chunk: 16,
			steps: []step{
				{push: 40, want: []int{16, 16, 8}},
				{push: 10, want: []int{16, 16, 16, 2}},
			},
		},
		{
			name:  "partial discards",
			depth: 4, maxBytes: 1024, chunk: 16,
			steps: []step{
				{push: 40, want: []int{16, 16, 8}},
				{discard: 3, want: []int{13, 16, 8}},
				{discard: 13, want: []int{16, 8}},
				{discard: 17, want: []int{7}},
				{discard: 7, want: nil},
				{push: 1, want: []int{1}},
			},
		},
		{
			name:  "discard across boundaries and past the end",
			depth: 4, maxBytes: 1024, chunk: 16,
			steps: []step{
				{push: 40, want: []int{16, 16, 8}},
				{discard: 20, want: []int{12, 8}},
				{discard: 100, want: nil},
				{discard: 1, want: nil},
				{push: 33, want: []int{16, 16, 1}},
			},
		},
		{
			name:  "coalesce into a partly consumed head",
			depth: 4, maxBytes: 1024, chunk: 16,
			steps: []step{
				{push: 10, want: []int{10}},
				{discard: 8, want: []int{2}},
				{push: 6, want: []int{8}},
				{push: 1, want: []int{8, 1}},
			},
		},
		{
			name:  "ring wraps around its slots",
			depth: 3, maxBytes: 1024, chunk: 4,
			steps: []step{
				{push: 12, want: []int{4, 4, 4}},
				{discard: 8, want: []int{4}},
				{push: 8, want: []int{4, 4, 4}},
				{discard: 6, want: []int{2, 4}},
				{push: 4, want: []int{2, 4, 4}},
				{discard: 10, want: nil},
			},
		},
		{
			name:  "ErrFull on the bytes bound",
			depth: 8, maxBytes: 32, chunk: 16,
			steps: []step{
				{push: 30, want: []int{16, 14}},
				{push: 3, wantErr: ErrFull, want: []int{16, 14}},
				{push: 2, want: []int{16, 16}},
				{push: 1, wantErr: ErrFull, want: []int{16, 16}},
				{discard: 16, want: []int{16}},
				{push: 17, wantErr: ErrFull, want: []int{16}},
				{push: 16, want: []int{16, 16}},
			},
		},
		{
			name:  "ErrFull on the bytes bound copies nothing into the tail",
			depth: 4, maxBytes: 20, chunk: 16,
			steps: []step{
				{push: 10, want: []int{10}},
				{push: 11, wantErr: ErrFull, want: []int{10}},
				{push: 10, want: []int{16, 4}},
			},
		},
		{
			name:  "ErrFull on the depth bound",
			depth: 2, maxBytes: 1000, chunk: 16,
			steps: []step{
				{push: 16, want: []int{16}},
				{push: 16, want: []int{16, 16}},
				{push: 1, wantErr: ErrFull, want: []int{16, 16}},
				{discard: 1, want: []int{15, 16}},
				{push: 1, wantErr: ErrFull, want: []int{15, 16}},
				{discard: 15, want: []int{16}},
				{push: 17, wantErr: ErrFull, want: []int{16}},
				{push: 16, want: []int{16, 16}},
			},
		},
		{
			name:  "ErrFull on the depth bound copies nothing into the tail",
			depth: 2, maxBytes: 1000, chunk: 16,
			steps: []step{
				{push: 10, want: []int{10}},
				{push: 23, wantErr: ErrFull, want: []int{10}},
				{push: 22, want: []int{16, 16}},
			},
		},
		{
			name:  "empty push succeeds on a full queue",
			depth: 1, maxBytes: 4, chunk: 4,
			steps: []step{
				{push: 4, want: []int{4}},
				{push: 0, want: []int{4}},
				{push: 1, wantErr: ErrFull, want: []int{4}},
			},
		},
		{
			name:  "Init clamps depth and chunk to 1",
			depth: 0, maxBytes: 10, chunk: 0,
			steps: []step{
				{push: 1, want: []int{1}},
				{push: 1, wantErr: ErrFull, want: []int{1}},
				{discard: 1, want: nil},
				{push: 1, want: []int{1}},
			},
		},
		{
			name:  "Reset returns everything",
			depth: 4, maxBytes: 64, chunk: 16,
			steps: []step{
				{push: 40, want: []int{16, 16, 8}},
				{discard: 5, want: []int{11, 16, 8}},
				{reset: true, want: nil},
				{push: 64, want: []int{16, 16, 16, 16}},
				{reset: true, want: nil},
				{reset: true, want: nil},
				{push: 1, want: []int{1}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var q Queue
			q.Init(tt.depth, tt.maxBytes, tt.chunk)
			m := newModel(tt.depth, tt.maxBytes, tt.chunk)
			var src source
			for i, s := range tt.steps {
				switch {
				case s.reset:
					q.Reset()
					m.reset()
					if q.bufs != nil {
						t.Fatalf("step %d: Reset kept the buffer ring", i)
					}
				case s.push > 0 || s.discard == 0:
					p := src.take(s.push)
					fits := q.Fits(len(p))
					err := q.Push(p)
					if !errors.Is(err, s.wantErr) || (s.wantErr == nil && err != nil) {
						t.Fatalf("step %d: Push(%d) = %v, want %v", i, s.push, err, s.wantErr)
					}
					if fits != (err == nil) {
						t.Fatalf("step %d: Fits(%d) = %v but Push returned %v", i, s.push, fits, err)
					}
					if m.push(p) != (err == nil) {
						t.Fatalf("step %d: model and queue disagree on Push(%d)", i, s.push)
					}
				default:
					q.Discard(s.discard)
					m.discard(s.discard)
				}
				if got := lens(q.Peek(nil, 100)); !slices.Equal(got, s.want) {
					t.Fatalf("step %d: Peek lengths %v, want %v", i, got, s.want)
				}
				check(t, &q, m)
			}
		})
	}
}

func TestPeek(t *testing.T) {
	var q Queue
	q.Init(4, 1024, 16)
	var src source
	data := src.take(40)
	if err := q.Push(data); err != nil {
		t.Fatal(err)
	}
	if iov := q.Peek(nil, 0); iov != nil {
		t.Fatalf("Peek(max 0) = %v, want nil", lens(iov))
	}
	if iov := q.Peek(nil, 1); !slices.Equal(lens(iov), []int{16}) || !bytes.Equal(iov[0], data[:16]) {
		t.Fatalf("Peek(max 1) = %v", lens(iov))
	}
	// Peek appends: what the caller had stays.
	mine := []byte("mine")
	iov := q.Peek([][]byte{mine}, 2)
	if !slices.Equal(lens(iov), []int{4, 16, 16}) || &iov[0][0] != &mine[0] {
		t.Fatalf("Peek after an element = %v", lens(iov))
	}
	// Peek does not consume.
	if got := bytes.Join(q.Peek(nil, 10), nil); !bytes.Equal(got, data) || q.Len() != 40 {
		t.Fatalf("second Peek = %x, Len %d", got, q.Len())
	}
}

// TestPeekStableAcrossPush checks the doc's promise that peeked slices stay
// valid until Discard or Reset, even while Push coalesces into the buffer
// they point into.
func TestPeekStableAcrossPush(t *testing.T) {
	var q Queue
	q.Init(8, 1<<20, 4096)
	var src source
	want := src.take(100)
	if err := q.Push(want); err != nil {
		t.Fatal(err)
	}
	iov := q.Peek(nil, 8)
	for i := 0; i < 100; i++ {
		if err := q.Push(src.take(97)); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(bytes.Join(iov, nil), want) {
		t.Fatal("a peeked slice changed under Push")
	}
	q.Discard(50)
	if got := q.Peek(nil, 1)[0][:50]; !bytes.Equal(got, want[50:]) {
		t.Fatal("content after Discard")
	}
}

// randomState pushes and discards at random until the queue has some of
// everything: a partly consumed head, a partly filled tail, some free slots.
func randomState(rng *rand.Rand, q *Queue, m *model, src *source) {
	for i := rng.Intn(12); i > 0; i-- {
		if rng.Intn(3) == 0 {
			n := rng.Intn(q.Len() + 1)
			q.Discard(n)
			m.discard(n)
			continue
		}
		p := src.take(rng.Intn(2*m.chunk) + 1)
		if (q.Push(p) == nil) != m.push(p) {
			panic("model and queue disagree")
		}
	}
}

func TestFitsAgreesWithPush(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	for trial := 0; trial < 2000; trial++ {
		depth, chunk := rng.Intn(8)+1, rng.Intn(64)+1
		maxBytes := rng.Intn(depth*chunk*3/2 + 1)
		var q Queue
		q.Init(depth, maxBytes, chunk)
		m := newModel(depth, maxBytes, chunk)
		var src source
		randomState(rng, &q, m, &src)
		for k := 0; k < 8; k++ {
			n := rng.Intn(depth*chunk + 2)
			fits := q.Fits(n)
			if fits != m.fits(n) && n > 0 {
				t.Fatalf("trial %d (depth %d max %d chunk %d, len %d frames %d): Fits(%d) = %v, model says %v",
					trial, depth, maxBytes, chunk, q.Len(), q.Frames(), n, fits, m.fits(n))
			}
			p := src.take(n)
			err := q.Push(p)
			if fits != (err == nil) {
				t.Fatalf("trial %d: Fits(%d) = %v, Push = %v", trial, n, fits, err)
			}
			if err != nil && !errors.Is(err, ErrFull) {
				t.Fatalf("trial %d: Push error %v", trial, err)
			}
			m.push(p) // on refusal the model is unchanged too
			check(t, &q, m)
		}
	}
}

func TestModel(t *testing.T) {
	configs := []struct{ depth, maxBytes, chunk int }{
		{depth: 1, maxBytes: 100, chunk: 100},
		{depth: 4, maxBytes: 64, chunk: 16},
		{depth: 8, maxBytes: 1000, chunk: 16}, // depth binds
		{depth: 16, maxBytes: 200, chunk: 64}, // bytes bind
		{depth: 64, maxBytes: 256 << 10, chunk: 4096},
		{depth: 5, maxBytes: 37, chunk: 7},
	}
	const ops = 10000
	for _, c := range configs {
		t.Run(fmt.Sprintf("depth=%d/max=%d/chunk=%d", c.depth, c.maxBytes, c.chunk), func(t *testing.T) {
			rng := rand.New(rand.NewSource(int64(c.depth*1_000_003 + c.chunk)))
			var q Queue
			q.Init(c.depth, c.maxBytes, c.chunk)
			m := newModel(c.depth, c.maxBytes, c.chunk)
			var src source
			var refused, pushed int
			for i := 0; i < ops; i++ {
				switch r := rng.Intn(100); {
				case r < 55: // push: mostly small, sometimes several chunks, rarely past every bound
					var n int
					switch {
					case r < 35:
						n = rng.Intn(max(c.chunk/2, 1)) + 1
					case r < 50:
						n = rng.Intn(2*c.chunk) + 1
					case r < 54:
						n = rng.Intn(c.maxBytes + c.chunk + 1)
					default:
						n = 0
					}
					p := src.take(n)
					fits := q.Fits(n)
					err := q.Push(p)
					ok := m.push(p)
					if (err == nil) != ok || fits != ok {
						t.Fatalf("op %d: Push(%d) = %v, Fits %v, model %v", i, n, err, fits, ok)
					}
					if err != nil {
						refused++
					} else if n > 0 {
						pushed++
					}
				case r < 85: // discard part of what is there
					n := rng.Intn(q.Len() + 1)
					q.Discard(n)
					m.discard(n)
				case r < 88: // discard more than there is
					n := q.Len() + rng.Intn(10) + 1
					q.Discard(n)
					m.discard(n)
				case r < 99: // peek a few buffers
					k := rng.Intn(c.depth + 1)
					iov := q.Peek(nil, k)
					want := m.segs()
					want = want[:min(k, len(want))]
					if !slices.Equal(lens(iov), want) {
						t.Fatalf("op %d: Peek(max %d) lengths %v, want %v", i, k, lens(iov), want)
					}
					if got := bytes.Join(iov, nil); !bytes.Equal(got, m.data[:len(got)]) {
						t.Fatalf("op %d: Peek(max %d) content differs", i, k)
					}
				default:
					q.Reset()
					m.reset()
				}
				check(t, &q, m)
			}
			if refused == 0 || pushed == 0 {
				t.Fatalf("%d pushes, %d refusals: the op mix misses a case", pushed, refused)
			}
		})
	}
}

func TestZeroAlloc(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops buffers at random under the race detector")
	}
	var q Queue
	q.Init(8, 64<<10, 4096)
	p := make([]byte, 1000)
	iov := make([][]byte, 0, 8)
	cycle := func() {
		for i := 0; i < 3; i++ {
			if err := q.Push(p); err != nil {
				panic(err)
			}
		}
		iov = q.Peek(iov[:0], 8)
		n := 0
		for _, b := range iov {
			n += len(b)
		}
		q.Discard(n)
	}
	for i := 0; i < 100; i++ { // warm the pool
		cycle()
	}
	if n := testing.AllocsPerRun(1000, cycle); n != 0 {
		t.Fatalf("Push+Peek+Discard: %v allocations per cycle, want 0", n)
	}

	// A queue that keeps a backlog: push and discard out of step.
	cycle2 := func() {
		if err := q.Push(p[:700]); err != nil {
			panic(err)
		}
		iov = q.Peek(iov[:0], 8)
		if q.Len() > 8000 {
			q.Discard(len(iov[0]))
		}
	}
	if n := testing.AllocsPerRun(1000, cycle2); n != 0 {
		t.Fatalf("push with a backlog: %v allocations per cycle, want 0", n)
	}
}

func BenchmarkQueue(b *testing.B) {
	for _, size := range []int{64, 1400, 16 << 10} {
		b.Run(fmt.Sprintf("push=%d", size), func(b *testing.B) {
			var q Queue
			q.Init(16, 256<<10, 16<<10)
			p := make([]byte, size)
			iov := make([][]byte, 0, 16)
			b.ReportAllocs()
			b.SetBytes(int64(size))
			for b.Loop() {
				if err := q.Push(p); err != nil {
					b.Fatal(err)
				}
				// Drain once a buffer's worth is queued, as a writer
				// that batches into writev would.
				if q.Len() >= 16<<10 {
					iov = q.Peek(iov[:0], 16)
					n := 0
					for _, v := range iov {
						n += len(v)
					}
					q.Discard(n)
				}
			}
		})
	}
}

// TestZeroAllocMixedSizes: queues of another chunk size, used heavily with
// small buffers, must not make this queue allocate (its pool is fixed-size).
func TestZeroAllocMixedSizes(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops buffers at random under the race detector")
	}
	var small, big Queue
	small.Init(64, 1<<20, 128)
	big.Init(16, 256<<10, 16<<10)
	tiny := make([]byte, 100)
	for i := 0; i < 50000; i++ { // more than any calibration threshold
		_ = small.Push(tiny)
		small.Discard(small.Len())
	}
	p := make([]byte, 16<<10)
	iov := make([][]byte, 0, 16)
	cycle := func() {
		_ = big.Push(p)
		iov = big.Peek(iov[:0], 16)
		big.Discard(len(iov[0]))
	}
	for i := 0; i < 100; i++ {
		cycle()
	}
	if n := testing.AllocsPerRun(1000, cycle); n != 0 {
		t.Fatalf("16 KiB push/discard after heavy small traffic: %v allocations, want 0", n)
	}
}

// TestGrow: a queue whose window grew takes more bytes in bigger buffers,
// keeps its depth, and keeps the order of bytes queued before and after.
func TestGrow(t *testing.T) {
	var q Queue
	q.Init(4, 4<<10, 1<<10)
	if err := q.Push(bytes.Repeat([]byte{'a'}, 1500)); err != nil {
		t.Fatal(err)
	}
	if q.Push(make([]byte, 4<<10)) == nil {
		t.Fatal("pushed beyond the bound before Grow")
	}
	q.Grow(64<<10, 16<<10)
	q.Grow(1<<10, 512) // smaller bounds are ignored
	if q.MaxBytes() != 64<<10 {
		t.Fatalf("MaxBytes %d", q.MaxBytes())
	}
	// 1500 bytes sit in two 1 KiB buffers; the depth grew so that the
	// whole new bound fits behind them in 16 KiB buffers.
	if err := q.Push(bytes.Repeat([]byte{'b'}, 64<<10-1500)); err != nil {
		t.Fatalf("push after Grow: %v", err)
	}
	if q.Fits(1) {
		t.Fatal("maxBytes must still bound the queue")
	}
	var got []byte
	for !q.Empty() {
		b := q.Peek(nil, 1)[0]
		got = append(got, b...)
		q.Discard(len(b))
	}
	want := append(bytes.Repeat([]byte{'a'}, 1500), bytes.Repeat([]byte{'b'}, 64<<10-1500)...)
	if !bytes.Equal(got, want) {
		t.Fatal("bytes reordered or lost across Grow")
	}
}
