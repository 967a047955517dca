// Package wanlink emulates a wide-area link in user space (this machine has
// no sch_netem): a TCP proxy on a loopback address that relays every
// accepted connection to a target and holds every chunk for a one-way
// delay in each direction, optionally paced to a rate.
//
//	client ──TCP──▶ Link ──(hold Delay)──▶ target      up:   client → target
//	client ◀──(hold Delay)── Link ◀──TCP── target      down: target → client
//
// The proxy terminates TCP on both sides, so it models the round trips an
// application sees (credit, WINDOW frames, request/response), not TCP's
// own congestion control. What it adds, per direction of each connection:
//
//   - Delay: a chunk read at t is written at t+Delay (the connection to the
//     target is dialled Delay after the accept, as the SYN would arrive;
//     a FIN or a reset arrives Delay after it was seen, behind the bytes
//     sent before it). SetDelay changes it at run time for new chunks.
//   - RateBitsPerSec (optional): a token bucket shared by every connection
//     of the link in that direction, one bottleneck as on a real link.
//     Bytes over the rate wait in the sender's socket, not in the link.
//   - MaxInflight: the bytes read and not yet written. When it is reached,
//     or when the destination does not take bytes as fast as they come
//     due (the head chunk is overdue by more than maxLag), the reader stops
//     reading, so TCP backpressure reaches the sender. Memory is bounded by
//     construction: pooled chunks of chunkSize, at most MaxInflight/chunk
//     of them per direction of a connection.
//
// Every connection costs four goroutines (a reader and a writer per
// direction) and, on Linux, two timerfds: a writer sleeps until its head
// chunk is due on its own timerfd in Go's netpoller, which wakes it within
// microseconds where Go's timers would add up to a millisecond per hop
// (see waiter). Close stops everything and waits for all of them.
package wanlink

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// chunkSize is the size of a pooled read buffer.
	chunkSize = 256 << 10
	// minInflight is the smallest MaxInflight accepted.
	minInflight = 4 << 10
	// defaultMaxInflightCap caps the default MaxInflight.
	defaultMaxInflightCap = 64 << 20
	// defaultRate sizes the default MaxInflight: 10 Gbit/s in bytes/s.
	defaultRate = 10e9 / 8
	// maxSegs bounds the queue of chunks per direction of a connection
	// (segments are coalesced, see pipe.push, so few are needed).
	maxSegs = 1024
	// maxLag is how far the head chunk may be overdue before the reader
	// stops: the destination is the bottleneck, and the link must not
	// queue what the receiver does not take (a receive window, in effect).
	maxLag = 2 * time.Millisecond
	// defaultDialTimeout bounds the dial to the target.
	defaultDialTimeout = 10 * time.Second
)

// Sentinel errors.
var (
	// ErrConfig wraps every configuration error.
	ErrConfig = errors.New("wanlink: bad config")
	// ErrClosed is returned by SetDelay after Close.
	ErrClosed = errors.New("wanlink: closed")
)

// Config configures a Link.
type Config struct {
	// Listen is the address to listen on. Default "127.0.0.1:0".
	Listen string
	// Target is the address every accepted connection is relayed to.
	// Required.
	Target string
	// Delay is the one-way delay, applied in each direction (the round
	// trip is 2×Delay). Default 0; must not be negative.
	Delay time.Duration
	// RateBitsPerSec caps each direction, shared by all connections of the
	// link. Default 0: unlimited; must not be negative.
	RateBitsPerSec int64
	// MaxInflight bounds the bytes held per direction of each connection
	// (rounded down to whole chunks of min(256 KiB, MaxInflight)); at
	// least 4096. Default 0: what 10 Gbit/s needs over the larger of Delay
	// and the delay when the connection starts, ×1.5 plus 4 MiB, at most
	// 64 MiB. A link whose delay grows with SetDelay after its connections
	// started should set it.
	MaxInflight int
	// DialTimeout bounds the dial to Target. Default 10 s.
	DialTimeout time.Duration
	// Logger receives debug events (dial failures). Default: discard.
	Logger *slog.Logger
}

// Stats is a snapshot of a link's counters.
type Stats struct {
	Accepted int64 // connections accepted, ever
	Conns    int   // connections open now
	Up       DirStats
	Down     DirStats
}

// DirStats are one direction's counters (Up: client → target; Down:
// target → client).
type DirStats struct {
	Bytes        int64 // written to the far side
	Inflight     int64 // read and not yet written, all connections, now
	PeakInflight int64 // the most one connection ever held in this direction
}

// dirCounters are a direction's counters, updated by its pipes.
type dirCounters struct {
	bytes, inflight, peak atomic.Int64
}

func (d *dirCounters) snapshot() DirStats {
	return DirStats{Bytes: d.bytes.Load(), Inflight: d.inflight.Load(), PeakInflight: d.peak.Load()}
}

func (d *dirCounters) notePeak(v int64) {
	for {
		p := d.peak.Load()
		if v <= p || d.peak.CompareAndSwap(p, v) {
			return
		}
	}
}

// Link is a running emulated link.
type Link struct {
	// Set at construction.
	cfg      Config
	ln       net.Listener
	log      *slog.Logger
	epoch    time.Time // the link clock's zero (monotonic)
	chunk    int       // size of a pooled buffer
	pool     sync.Pool // of *block, each chunk bytes
	pacers   [2]*pacer // nil: unlimited
	ctx      context.Context
	cancel   context.CancelFunc
	dialer   net.Dialer
	counters [2]dirCounters // up, down

	delay    atomic.Int64 // one-way, nanoseconds
	accepted atomic.Int64

	mu     sync.Mutex // guards pairs, closed
	pairs  map[*pair]struct{}
	closed bool

	wg sync.WaitGroup // acceptLoop and every pair goroutine
}

const (
	up   = 0
	down = 1
)

// Start validates cfg, listens and starts relaying.
func Start(cfg Config) (*Link, error) {
	if err := validate(&cfg); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("wanlink: listen %s: %w", cfg.Listen, err)
	}
	l := &Link{cfg: cfg, ln: ln, log: cfg.Logger, epoch: time.Now(), chunk: chunkSize, pairs: map[*pair]struct{}{}}
	if cfg.MaxInflight > 0 && cfg.MaxInflight < chunkSize {
		l.chunk = cfg.MaxInflight
	}
	l.pool.New = func() any { return &block{b: make([]byte, l.chunk)} }
	if cfg.RateBitsPerSec > 0 {
		for i := range l.pacers {
			l.pacers[i] = newPacer(cfg.RateBitsPerSec)
		}
	}
	l.delay.Store(int64(cfg.Delay))
	l.dialer.Timeout = cfg.DialTimeout
	l.ctx, l.cancel = context.WithCancel(context.Background())
	l.wg.Add(1)
	go l.acceptLoop()
	return l, nil
}

func validate(cfg *Config) error {
	var errs []error
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	if cfg.Target == "" {
		errs = append(errs, fmt.Errorf("%w: Target is required", ErrConfig))
	}
	if cfg.Delay < 0 {
		errs = append(errs, fmt.Errorf("%w: Delay %v is negative", ErrConfig, cfg.Delay))
	}
	if cfg.RateBitsPerSec < 0 {
		errs = append(errs, fmt.Errorf("%w: RateBitsPerSec %d is negative", ErrConfig, cfg.RateBitsPerSec))
	}
	if cfg.MaxInflight != 0 && cfg.MaxInflight < minInflight {
		errs = append(errs, fmt.Errorf("%w: MaxInflight %d is below %d", ErrConfig, cfg.MaxInflight, minInflight))
	}
	if cfg.DialTimeout < 0 {
		errs = append(errs, fmt.Errorf("%w: DialTimeout %v is negative", ErrConfig, cfg.DialTimeout))
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = defaultDialTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return errors.Join(errs...)
}

// Addr is the address clients dial.
func (l *Link) Addr() string { return l.ln.Addr().String() }

// Delay returns the current one-way delay.
func (l *Link) Delay() time.Duration { return time.Duration(l.delay.Load()) }

// SetDelay changes the one-way delay for chunks read from now on (chunks
// already held keep theirs). Safe from any goroutine.
func (l *Link) SetDelay(d time.Duration) error {
	if d < 0 {
		return fmt.Errorf("%w: delay %v is negative", ErrConfig, d)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return ErrClosed
	}
	l.delay.Store(int64(d))
	return nil
}

// Stats returns the counters. Safe from any goroutine.
func (l *Link) Stats() Stats {
	l.mu.Lock()
	n := len(l.pairs)
	l.mu.Unlock()
	return Stats{Accepted: l.accepted.Load(), Conns: n, Up: l.counters[up].snapshot(), Down: l.counters[down].snapshot()}
}

// Close stops listening, closes every connection and waits until every
// goroutine of the link has returned. Safe to call more than once.
func (l *Link) Close() error {
	l.mu.Lock()
	already := l.closed
	l.closed = true
	pairs := make([]*pair, 0, len(l.pairs))
	for p := range l.pairs {
		pairs = append(pairs, p)
	}
	l.mu.Unlock()
	var err error
	if !already {
		l.cancel()
		err = l.ln.Close()
	}
	for _, p := range pairs {
		p.abort(false)
	}
	l.wg.Wait()
	return err
}

// now is the link clock: monotonic time since Start.
func (l *Link) now() time.Duration { return time.Since(l.epoch) }

// maxBlocks is how many chunks one direction of a new connection may hold.
func (l *Link) maxBlocks() int {
	limit := l.cfg.MaxInflight
	if limit == 0 {
		d := max(l.cfg.Delay, l.Delay())
		limit = min(defaultMaxInflightCap, int(defaultRate*d.Seconds()*1.5)+4<<20)
	}
	return max(1, limit/l.chunk)
}

func (l *Link) acceptLoop() {
	defer l.wg.Done()
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if l.ctx.Err() != nil {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			// EMFILE and the like: back off instead of spinning.
			l.log.Debug("wanlink accept failed", "err", err)
			select {
			case <-l.ctx.Done():
				return
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		l.accepted.Add(1)
		p := newPair(l, c.(*net.TCPConn))
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			_ = c.Close()
			return
		}
		l.pairs[p] = struct{}{}
		l.wg.Add(1)
		l.mu.Unlock()
		go p.connLoop()
	}
}

func (l *Link) removePair(p *pair) {
	l.mu.Lock()
	delete(l.pairs, p)
	l.mu.Unlock()
}
