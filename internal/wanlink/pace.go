package wanlink

import (
	"sync"
	"time"
)

// pacer is a token bucket in its virtual-time form (GCRA): every byte
// costs 1/rate of link time; a reader may run up to burst ahead of the
// rate and waits for the rest. One pacer per direction is shared by all
// connections of a link.
type pacer struct {
	// Set at construction.
	bytesPerSec float64
	burstBytes  int           // the most a reader reads at once when paced
	burst       time.Duration // burstBytes at the rate

	mu  sync.Mutex
	tat time.Duration // link time at which every byte charged so far has gone
}

func newPacer(bitsPerSec int64) *pacer {
	bps := float64(bitsPerSec) / 8
	bb := min(chunkSize, max(16<<10, int(bps/1000))) // about 1 ms of the rate
	return &pacer{bytesPerSec: bps, burstBytes: bb, burst: time.Duration(float64(bb) / bps * float64(time.Second))}
}

// take charges n bytes read at now and returns how long the reader must
// wait before passing them on.
func (p *pacer) take(now time.Duration, n int) time.Duration {
	cost := time.Duration(float64(n) / p.bytesPerSec * float64(time.Second))
	p.mu.Lock()
	defer p.mu.Unlock()
	p.tat = max(p.tat, now) + cost
	return max(0, p.tat-now-p.burst)
}
