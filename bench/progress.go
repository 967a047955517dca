package bench

import (
	"fmt"
	"io"
	"sync"
	"time"
)

// progress keeps one updating line on a terminal: run elapsed, the phase,
// its elapsed time and the current rate. Without a terminal it prints one
// line per phase instead (CI logs stay readable).
type progress struct {
	w     io.Writer // nil: silent
	tty   bool
	start time.Time

	mu         sync.Mutex
	label      string
	phaseStart time.Time
	counter    func() int64
	unit       string
	scale      float64
	last       int64
	lastAt     time.Time
	rate       float64
	stop       chan struct{}
	done       chan struct{}
}

func newProgress(w io.Writer, tty bool) *progress {
	p := &progress{w: w, tty: tty, start: time.Now(), stop: make(chan struct{}), done: make(chan struct{})}
	if w != nil && tty {
		go p.loop()
	} else {
		close(p.done)
	}
	return p
}

// phase starts a new phase; counter (cumulative units, scaled by scale
// for display) may be nil.
func (p *progress) phase(label string, counter func() int64, unit string, scale float64) {
	if p == nil || p.w == nil {
		return
	}
	p.mu.Lock()
	p.label, p.counter, p.unit, p.scale = label, counter, unit, scale
	p.phaseStart, p.lastAt, p.rate = time.Now(), time.Now(), 0
	if counter != nil {
		p.last = counter()
	}
	p.mu.Unlock()
	if !p.tty {
		fmt.Fprintf(p.w, "[%s] %s\n", fmtElapsed(time.Since(p.start)), label)
	} else {
		p.draw()
	}
}

// note prints a line that stays (a result or a warning).
func (p *progress) note(format string, args ...any) {
	if p == nil || p.w == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	msg := fmt.Sprintf(format, args...)
	if p.tty {
		fmt.Fprintf(p.w, "\r\x1b[K[%s] %s\n", fmtElapsed(time.Since(p.start)), msg)
		return
	}
	fmt.Fprintf(p.w, "[%s] %s\n", fmtElapsed(time.Since(p.start)), msg)
}

func (p *progress) loop() {
	defer close(p.done)
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			p.mu.Lock()
			fmt.Fprint(p.w, "\r\x1b[K")
			p.mu.Unlock()
			return
		case <-t.C:
			p.draw()
		}
	}
}

func (p *progress) draw() {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	if p.counter != nil {
		cur := p.counter()
		if dt := now.Sub(p.lastAt).Seconds(); dt > 0.1 {
			p.rate = float64(cur-p.last) / dt * p.scale
			p.last, p.lastAt = cur, now
		}
	}
	rate := ""
	if p.counter != nil {
		rate = fmt.Sprintf("  %s %s", fmtNum(p.rate), p.unit)
	}
	fmt.Fprintf(p.w, "\r\x1b[K[%s] %s  %.1fs%s", fmtElapsed(now.Sub(p.start)), p.label, now.Sub(p.phaseStart).Seconds(), rate)
}

func (p *progress) close() {
	if p == nil {
		return
	}
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	<-p.done
}

func fmtElapsed(d time.Duration) string {
	s := int(d.Seconds())
	return fmt.Sprintf("%02d:%02d", s/60, s%60)
}

func fmtNum(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}
