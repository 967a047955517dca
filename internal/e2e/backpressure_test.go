package e2e

import (
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/internal/testenv"
)

// waitStable polls until v stops changing for quiet, within timeout.
func waitStable(t testing.TB, timeout, quiet time.Duration, msg string, v func() int64) int64 {
	t.Helper()
	last, since := v(), time.Now()
	testenv.WaitFor(t, timeout, msg, func() bool {
		cur := v()
		if cur != last {
			last, since = cur, time.Now()
			return false
		}
		return time.Since(since) >= quiet
	})
	return last
}

// TestBackpressureStalledClient: a client stops reading while its target
// sends 1 GiB. The hub and agent hold no more than a few MiB, other streams
// on the same tunnel keep flowing, and the stalled stream resumes byte-exact.
func TestBackpressureStalledClient(t *testing.T) {
	leakCheck(t)
	total := int64(1 << 30)
	if raceEnabled || testing.Short() {
		total = 256 << 20
	}
	var sent atomic.Int64
	src := startServer(t, func(c net.Conn) {
		w := &countWriter{w: c, n: &sent}
		_, _ = io.CopyN(w, newPRNG(5), total)
	})
	ex := startServer(t, exchangeTarget)
	th := startHub(t, []string{"src", "ex"})
	startAgent(t, th, "a1", map[string]string{"src": src.Addr(), "ex": ex.Addr()})
	idle := heapInUse()

	c, err := net.Dial("tcp", th.Addr["src"])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	want := newPRNG(5)
	if err := readSame(c, want, 1<<20); err != nil {
		t.Fatal(err)
	}
	// Stop reading; the target must soon be blocked by closed windows.
	stalledAt := waitStable(t, 30*time.Second, 300*time.Millisecond, "target blocked", sent.Load)
	if stalledAt > 64<<20 {
		t.Fatalf("target sent %d MiB into a stalled client; want only windows and kernel buffers", stalledAt>>20)
	}
	held := int64(heapInUse()) - int64(idle)
	t.Logf("stalled after %d MiB sent; heap above idle: %d KiB", stalledAt>>20, held>>10)
	if held > 8<<20 {
		t.Fatalf("hub+agent heap grew by %d MiB with a stalled client", held>>20)
	}

	// Eight other streams on the same tunnel flow meanwhile.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := exchange(th.Addr["ex"], uint64(100+i), 16<<20, 16<<20); err != nil {
				errs <- fmt.Errorf("stream %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if now := sent.Load(); now-stalledAt > 1<<20 {
		t.Errorf("stalled stream advanced by %d bytes while not read", now-stalledAt)
	}

	// Resume: the rest arrives byte-exact.
	if err := readSame(c, want, total-(1<<20)); err != nil {
		t.Fatalf("resume: %v", err)
	}
	if n, err := io.Copy(io.Discard, c); n != 0 || err != nil {
		t.Fatalf("after 1 GiB: %d extra bytes, %v", n, err)
	}
}

// TestBackpressureSlowTarget: a fast uploader towards a slow target blocks
// in write instead of being buffered or reset; every byte arrives.
func TestBackpressureSlowTarget(t *testing.T) {
	leakCheck(t)
	total := int64(64 << 20)
	if raceEnabled || testing.Short() {
		total = 24 << 20
	}
	var got atomic.Int64
	sum := make(chan []byte, 1)
	slow := startServer(t, func(c net.Conn) {
		h := sha256.New()
		buf := make([]byte, 32<<10)
		for {
			n, err := c.Read(buf)
			h.Write(buf[:n])
			got.Add(int64(n))
			if err != nil {
				break
			}
			time.Sleep(time.Millisecond) // the slow consumer being simulated
		}
		sum <- h.Sum(nil)
	})
	th := startHub(t, []string{"slow"})
	startAgent(t, th, "a1", map[string]string{"slow": slow.Addr()})
	idle := heapInUse()

	c, err := net.Dial("tcp", th.Addr["slow"])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var wrote atomic.Int64
	done := make(chan error, 1)
	go func() { // uploadLoop; joined through done
		_, err := io.CopyN(&countWriter{w: c, n: &wrote}, newPRNG(11), total)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		done <- err
	}()
	var maxAhead, maxHeld int64
	for finished := false; !finished; {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("upload failed (reset?): %v", err)
			}
			finished = true
		case <-time.After(20 * time.Millisecond): // sampling period
			maxAhead = max(maxAhead, wrote.Load()-got.Load())
			maxHeld = max(maxHeld, int64(heapInUse())-int64(idle))
		}
	}
	want := sha256.New()
	_, _ = io.CopyN(want, newPRNG(11), total)
	select {
	case s := <-sum:
		if string(s) != string(want.Sum(nil)) || got.Load() != total {
			t.Fatalf("target got %d of %d bytes, checksum match %v", got.Load(), total, string(s) == string(want.Sum(nil)))
		}
	case <-time.After(60 * time.Second):
		t.Fatal("target never saw EOF")
	}
	t.Logf("uploader ahead of target by at most %d KiB; heap above idle at most %d KiB", maxAhead>>10, maxHeld>>10)
	if maxAhead > 24<<20 {
		t.Errorf("uploader ran %d MiB ahead of a slow target: not backpressured", maxAhead>>20)
	}
	if maxHeld > 8<<20 {
		t.Errorf("heap grew by %d MiB during a slow upload", maxHeld>>20)
	}
}

type countWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// readSame reads n bytes from r and checks them against the next n bytes of want.
func readSame(r io.Reader, want io.Reader, n int64) error {
	buf := make([]byte, 256<<10)
	wbuf := make([]byte, 256<<10)
	var got int64
	for got < n {
		k := min(int64(len(buf)), n-got)
		m, err := io.ReadFull(r, buf[:k])
		if m > 0 {
			_, _ = io.ReadFull(want, wbuf[:m])
			if string(buf[:m]) != string(wbuf[:m]) {
				return fmt.Errorf("bytes differ in [%d, %d)", got, got+int64(m))
			}
			got += int64(m)
		}
		if err != nil {
			return fmt.Errorf("after %d of %d bytes: %w", got, n, err)
		}
	}
	return nil
}
