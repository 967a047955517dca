package wanlink

import (
	"os"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// fdWaiter sleeps on a non-blocking timerfd read through Go's netpoller:
// epoll wakes when the timer expires, with the kernel's hrtimer precision.
type fdWaiter struct {
	f        *os.File
	fd       int
	canceled atomic.Bool
	buf      [8]byte
}

func newFDWaiter() (*fdWaiter, error) {
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return nil, err
	}
	// A non-blocking descriptor makes os.NewFile register it with the
	// netpoller, so a Read parks the goroutine instead of a thread.
	return &fdWaiter{f: os.NewFile(uintptr(fd), "wanlink-timerfd"), fd: fd}, nil
}

func (w *fdWaiter) sleep(d time.Duration) bool {
	if w.canceled.Load() {
		return false
	}
	if d <= 0 {
		return true
	}
	spec := unix.ItimerSpec{Value: unix.NsecToTimespec(int64(d))}
	if err := unix.TimerfdSettime(w.fd, 0, &spec, nil); err != nil {
		return false
	}
	// The read returns the expiration count once the timer fired, or
	// fails once cancel set a deadline in the past.
	_, err := w.f.Read(w.buf[:])
	return err == nil && !w.canceled.Load()
}

func (w *fdWaiter) cancel() {
	w.canceled.Store(true)
	_ = w.f.SetReadDeadline(time.Unix(1, 0))
}

func (w *fdWaiter) close() { _ = w.f.Close() }
