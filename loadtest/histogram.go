package loadtest

import (
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

// Histogram layout: log-linear buckets in the style of HDR histograms. Values below
// subCount (128 ns) have one bucket each; above, every power-of-two range [2^e, 2^(e+1))
// is split into subCount equal buckets, so a bucket's width is at most 1/128 of its
// lower bound. Quantiles report the bucket's midpoint, clamped to the exact observed min
// and max: the relative error is at most 1/256 (≈0.4%). Values at or above 2^maxExp ns
// (≈18 min) fall into the last bucket; Max stays exact.
const (
	subBits    = 7
	subCount   = 1 << subBits
	maxExp     = 40
	numBuckets = (maxExp - subBits + 1) * subCount
)

// Histogram is a fixed-size latency histogram, safe for concurrent Record and reads.
// Its memory is constant (numBuckets counters, ≈35 KiB) whatever the number of values,
// and Record never allocates. The zero value is ready to use.
type Histogram struct {
	counts [numBuckets]atomic.Uint64
	total  atomic.Uint64
	sum    atomic.Uint64 // nanoseconds; wraps after ≈584 years of summed latency
	min    atomic.Int64  // min+1; 0 means no value yet
	max    atomic.Int64
}

// bucketOf returns the bucket index of v (ns, v >= 0).
func bucketOf(v int64) int {
	if v < subCount {
		return int(v)
	}
	e := bits.Len64(uint64(v)) - 1 // v in [2^e, 2^(e+1)), e >= subBits
	if e >= maxExp {
		return numBuckets - 1
	}
	shift := e - subBits
	sub := int(v>>uint(shift)) - subCount
	return (e-subBits+1)*subCount + sub
}

// bucketRange returns the lowest value of bucket i and its width.
func bucketRange(i int) (lo, width int64) {
	if i < subCount {
		return int64(i), 1
	}
	group := i / subCount // >= 1
	sub := i % subCount
	shift := group - 1
	return int64(subCount+sub) << uint(shift), int64(1) << uint(shift)
}

// Record adds one value. Negative durations count as 0.
func (h *Histogram) Record(d time.Duration) {
	v := int64(d)
	if v < 0 {
		v = 0
	}
	h.counts[bucketOf(v)].Add(1)
	h.total.Add(1)
	h.sum.Add(uint64(v))
	for {
		m := h.min.Load()
		if m != 0 && m-1 <= v {
			break
		}
		if h.min.CompareAndSwap(m, v+1) {
			break
		}
	}
	for {
		m := h.max.Load()
		if m >= v {
			break
		}
		if h.max.CompareAndSwap(m, v) {
			break
		}
	}
}

// Merge adds every value of o to h.
func (h *Histogram) Merge(o *Histogram) {
	for i := range o.counts {
		if c := o.counts[i].Load(); c != 0 {
			h.counts[i].Add(c)
		}
	}
	h.total.Add(o.total.Load())
	h.sum.Add(o.sum.Load())
	if m := o.min.Load(); m != 0 {
		for {
			cur := h.min.Load()
			if cur != 0 && cur <= m {
				break
			}
			if h.min.CompareAndSwap(cur, m) {
				break
			}
		}
	}
	if m := o.max.Load(); m > 0 {
		for {
			cur := h.max.Load()
			if cur >= m {
				break
			}
			if h.max.CompareAndSwap(cur, m) {
				break
			}
		}
	}
}

// Count returns the number of recorded values.
func (h *Histogram) Count() uint64 { return h.total.Load() }

// Min returns the smallest recorded value (0 if none).
func (h *Histogram) Min() time.Duration {
	if m := h.min.Load(); m != 0 {
		return time.Duration(m - 1)
	}
	return 0
}

// Max returns the largest recorded value (exact).
func (h *Histogram) Max() time.Duration { return time.Duration(h.max.Load()) }

// Mean returns the arithmetic mean (exact up to the sum's precision).
func (h *Histogram) Mean() time.Duration {
	n := h.total.Load()
	if n == 0 {
		return 0
	}
	return time.Duration(h.sum.Load() / n)
}

// Quantile returns the value at quantile q in [0, 1]: the smallest recorded value such
// that at least q of all values are ≤ it (the nearest-rank definition), within the
// histogram's ≤0.4% relative error. It returns 0 for an empty histogram. While values are
// being recorded concurrently the answer is that of some recent state.
func (h *Histogram) Quantile(q float64) time.Duration {
	var n uint64
	for i := range h.counts {
		n += h.counts[i].Load()
	}
	if n == 0 {
		return 0
	}
	mn, mx := int64(h.Min()), int64(h.Max())
	if q <= 0 {
		return time.Duration(mn)
	}
	if q >= 1 {
		return time.Duration(mx)
	}
	rank := uint64(math.Ceil(q * float64(n)))
	if rank < 1 {
		rank = 1
	}
	var cum uint64
	for i := range h.counts {
		cum += h.counts[i].Load()
		if cum >= rank {
			lo, w := bucketRange(i)
			v := lo + (w-1)/2
			if v < mn {
				v = mn
			}
			if v > mx {
				v = mx
			}
			return time.Duration(v)
		}
	}
	return time.Duration(mx)
}
