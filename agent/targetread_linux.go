//go:build linux

package agent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nowconnect/nowconnect/codec"
)

// Target reads on Linux.
//
// A goroutine per stream parked on its target costs its stack (2 KiB and
// more) for as long as the connection lives, which is most of an idle
// stream's memory. Instead the agent runs a few pollers (one per P), each
// an epoll instance that watches its streams' target sockets edge-triggered
// and reads them itself. The epoll descriptor is itself registered in Go's
// netpoller (an epoll fd is pollable: it is readable while it has events),
// so a poller with nothing to do is an ordinary goroutine parked in the
// runtime, not a thread blocked in epoll_wait.
//
// Per stream the poller keeps two flags under stream.mu: readable (an edge
// arrived and the socket was not yet read to empty) and queued (the stream
// waits in the poller's ready list). A stream without credit simply stays
// readable and unread, so its target's kernel window closes; addCredit puts
// it on the ready list and wakes the poller through an eventfd. A stream
// that keeps its socket full is read at most readBudget times per pass and
// then goes to the back of the ready list, so one fast target cannot starve
// the others of the same poller.
//
// Safety against descriptor reuse: every read and epoll_ctl goes through
// the target's syscall.RawConn, which holds a reference on the descriptor,
// and the epoll registration carries a slot index plus a generation, so an
// event that arrives after a stream ended (its slot freed, perhaps reused)
// is recognised and dropped. Closing the target removes it from the epoll
// set.

// readBudget is how many reads one stream gets per poller pass.
const readBudget = 4

// maxEvents is the epoll_wait batch.
const maxEvents = 128

// wakeSlot marks the eventfd's registration.
const wakeSlot = -1

// errPollerClosed is returned when a stream starts after the agent stopped.
var errPollerClosed = errors.New("agent: poller closed")

// readState is a stream's entry in its poller. Guarded by stream.mu.
type readState struct {
	p        *poller
	slot     int32
	gen      int32
	readable bool // an edge arrived and the socket was not read to empty since
	hup      bool // the peer's FIN (or an error) was signalled: read until EOF
	queued   bool // in p.ready
}

// pollers are the agent's target pollers, started by Run and stopped when
// it returns.
type pollers struct {
	ps   []*poller
	next atomic.Uint32
	wg   sync.WaitGroup
}

// start opens one poller per P.
func (ps *pollers) start() error {
	n := runtime.GOMAXPROCS(0)
	for range n {
		p, err := newPoller()
		if err != nil {
			ps.stop()
			return err
		}
		ps.ps = append(ps.ps, p)
		ps.wg.Go(p.run)
	}
	return nil
}

// stop closes the pollers and waits for their goroutines. The streams they
// served have ended by then.
func (ps *pollers) stop() {
	for _, p := range ps.ps {
		p.close()
	}
	ps.wg.Wait()
	ps.ps = nil
}

// pick returns the poller for a new stream, round robin.
func (ps *pollers) pick() *poller {
	if len(ps.ps) == 0 {
		return nil
	}
	return ps.ps[int(ps.next.Add(1))%len(ps.ps)]
}

// poller is one epoll instance and the goroutine that serves it.
type poller struct {
	file   *os.File // the epoll fd, registered in Go's netpoller
	epfd   int      // file's descriptor (file.Fd would make it blocking)
	raw    syscall.RawConn
	evfd   int // eventfd, registered edge-triggered: the ready list gained work
	pollFn func(fd uintptr) bool
	readFn func(fd uintptr) bool

	// owned by the poller goroutine
	events [maxEvents]unix.EpollEvent
	work   []*stream
	unsent []*session // sessions given DATA this pass, flushed at its end
	want   int        // rawRead: bytes to read at most
	rn     int        // rawRead: bytes read
	rb     *frameBuf  // rawRead: the buffer holding them
	rerr   error      // rawRead: error; nil with rn == 0 and !again is EOF
	again  bool       // rawRead: EAGAIN

	mu sync.Mutex
	// guarded by mu
	closed bool
	slots  []*stream
	gens   []int32
	free   []int32
	ready  []*stream
}

func newPoller() (*poller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	evfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		_ = unix.Close(epfd)
		return nil, os.NewSyscallError("eventfd", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLET, Fd: wakeSlot}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &ev); err != nil {
		_ = unix.Close(epfd)
		_ = unix.Close(evfd)
		return nil, os.NewSyscallError("epoll_ctl", err)
	}
	if err := unix.SetNonblock(epfd, true); err != nil {
		_ = unix.Close(epfd)
		_ = unix.Close(evfd)
		return nil, os.NewSyscallError("fcntl", err)
	}
	p := &poller{file: os.NewFile(uintptr(epfd), "epoll"), epfd: epfd, evfd: evfd}
	p.raw, err = p.file.SyscallConn()
	if err == nil {
		// Only a descriptor in Go's netpoller takes deadlines: without it
		// the poller could not park, and no target would ever be read.
		err = p.file.SetReadDeadline(time.Time{})
	}
	if err != nil {
		_ = p.file.Close()
		_ = unix.Close(evfd)
		return nil, fmt.Errorf("agent: epoll fd not pollable: %w", err)
	}
	p.pollFn, p.readFn = p.poll, p.rawRead
	return p, nil
}

// close stops the poller goroutine (its pending Read fails).
func (p *poller) close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	_ = p.file.Close()
}

// run serves the poller until close.
func (p *poller) run() {
	defer func() { _ = unix.Close(p.evfd) }()
	for p.raw.Read(p.pollFn) == nil {
	}
}

// poll is the RawConn.Read callback: it handles the events at hand and the
// ready list, and returns false when there is nothing to do so the runtime
// parks the goroutine until the epoll fd becomes readable.
func (p *poller) poll(fd uintptr) bool {
	n, err := unix.EpollWait(int(fd), p.events[:], 0)
	if err != nil {
		return true // EINTR: again; EBADF after close: Read reports ErrClosed next
	}
	for i := range p.events[:n] {
		ev := &p.events[i]
		if ev.Fd == wakeSlot {
			continue // the ready list is taken below anyway
		}
		if st := p.lookup(ev.Fd, ev.Pad); st != nil {
			p.serve(st, ev.Events)
		}
	}
	p.mu.Lock()
	p.work, p.ready = p.ready, p.work[:0]
	p.mu.Unlock()
	for _, st := range p.work {
		p.serve(st, 0)
	}
	clear(p.work)
	// What the pass read goes out together: one write per tunnel, by this
	// goroutine when its writer is idle and little is queued.
	for _, s := range p.unsent {
		s.snd.flush()
	}
	clear(p.unsent)
	p.unsent = p.unsent[:0]
	return n > 0 || len(p.work) > 0
}

// lookup returns the stream registered under (slot, gen), nil if it ended.
func (p *poller) lookup(slot, gen int32) *stream {
	p.mu.Lock()
	defer p.mu.Unlock()
	if slot < 0 || int(slot) >= len(p.slots) || p.gens[slot] != gen {
		return nil
	}
	return p.slots[slot]
}

// register takes a slot for st and adds its target to the epoll set.
// Called with st.mu held.
func (p *poller) register(st *stream) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return errPollerClosed
	}
	var slot int32
	if k := len(p.free); k > 0 {
		slot = p.free[k-1]
		p.free = p.free[:k-1]
	} else {
		slot = int32(len(p.slots))
		p.slots = append(p.slots, nil)
		p.gens = append(p.gens, 0)
	}
	p.slots[slot] = st
	gen := p.gens[slot]
	p.mu.Unlock()
	st.rd.p, st.rd.slot, st.rd.gen = p, slot, gen

	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET, Fd: slot, Pad: gen}
	var cerr error
	err := st.raw.Control(func(fd uintptr) {
		cerr = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev)
	})
	if err == nil && cerr != nil {
		err = os.NewSyscallError("epoll_ctl", cerr)
	}
	if err != nil {
		p.release(st)
	}
	return err
}

// release frees st's slot; events still on their way for it are dropped.
// The epoll registration goes when the target is closed. Called with st.mu
// held.
func (p *poller) release(st *stream) {
	p.mu.Lock()
	if p.slots[st.rd.slot] == st {
		p.slots[st.rd.slot] = nil
		p.gens[st.rd.slot]++
		p.free = append(p.free, st.rd.slot)
	}
	p.mu.Unlock()
	st.rd.p = nil
}

// push queues st on the ready list and wakes the poller if the list was
// empty. Called with st.mu held, from any goroutine.
func (p *poller) push(st *stream) {
	p.mu.Lock()
	p.ready = append(p.ready, st)
	wake := len(p.ready) == 1 && !p.closed
	p.mu.Unlock()
	if wake {
		var one [8]byte
		binary.NativeEndian.PutUint64(one[:], 1)
		_, _ = unix.Write(p.evfd, one[:]) // EAGAIN only if the counter is full: a wake-up is pending then
	}
}

// serve reads st's target while it is readable and has credit, up to
// readBudget reads. events are the epoll events that brought it, 0 when the
// ready list did.
func (p *poller) serve(st *stream, events uint32) {
	st.mu.Lock()
	if events != 0 {
		st.rd.readable = true
		if events&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
			st.rd.hup = true
		}
	} else {
		st.rd.queued = false
	}
	st.mu.Unlock()
	s := st.sess
	for range readBudget {
		st.mu.Lock()
		if st.closed || st.fc.FinSent() || !st.rd.readable {
			st.mu.Unlock()
			return
		}
		// Without credit (the stream's or the tunnel's) the socket stays
		// unread (and readable): creditLocked queues it when WINDOW arrives.
		want := st.readableLocked()
		st.mu.Unlock()
		if want == 0 {
			return
		}
		p.want = want

		p.rn, p.rb, p.rerr, p.again = 0, nil, nil, false
		if err := st.raw.Read(p.readFn); err != nil {
			p.rerr = err
		}
		s.refund(want - p.rn)
		switch {
		case p.again:
			st.mu.Lock()
			st.rd.readable = false
			st.mu.Unlock()
			return
		case p.rn > 0:
			short := p.rn < p.want
			if !st.deliver(p.rn, p.rb, true) {
				return
			}
			if !slices.Contains(p.unsent, s) {
				p.unsent = append(p.unsent, s)
			}
			if short {
				// A short read emptied the socket; the next bytes bring a
				// new edge. A FIN already signalled brings none: read on
				// to the EOF.
				st.mu.Lock()
				done := !st.rd.hup
				if done {
					st.rd.readable = false
				}
				st.mu.Unlock()
				if done {
					return
				}
			}
		case p.rerr != nil:
			st.abort(codec.ReasonTargetReset, true, shortErr(p.rerr))
			return
		default:
			st.targetEOF()
			return
		}
	}
	// Budget spent with bytes likely left: the other streams go first.
	st.mu.Lock()
	if !st.closed && !st.rd.queued {
		st.rd.queued = true
		p.mu.Lock()
		p.ready = append(p.ready, st)
		p.mu.Unlock()
	}
	st.mu.Unlock()
}

// rawRead is the RawConn.Read callback of serve. It never waits: EAGAIN is
// reported in p.again. A frame buffer is taken only for the read itself.
func (p *poller) rawRead(fd uintptr) bool {
	fb := getFrameBuf()
	for {
		n, err := syscall.Read(int(fd), fb.b[hdrRoom:hdrRoom+p.want])
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			putFrameBuf(fb)
			p.again = true
		case n > 0:
			p.rn, p.rb = n, fb
		default:
			putFrameBuf(fb)
			if err != nil {
				p.rerr = os.NewSyscallError("read", err)
			}
		}
		return true
	}
}

func (st *stream) initReader() {}

// startReaderLocked hands the connected target to a poller. Called with mu
// held.
func (st *stream) startReaderLocked() error {
	p := st.sess.a.pollers.pick()
	if p == nil {
		return errPollerClosed
	}
	return p.register(st)
}

// creditLocked queues a readable stream whose credit came back. Called with
// mu held after credit grew.
func (st *stream) creditLocked() {
	rd := &st.rd
	if rd.p != nil && rd.readable && !rd.queued && !st.closed && !st.fc.FinSent() && !st.tunnelWait &&
		st.fc.Send.Avail() >= st.sess.readMin {
		rd.queued = true
		rd.p.push(st)
	}
}

// stopReaderLocked frees the stream's poller slot. Called with mu held when
// the stream ends.
func (st *stream) stopReaderLocked() {
	if st.rd.p != nil {
		st.rd.p.release(st)
	}
}
