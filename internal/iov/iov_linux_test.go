package iov

import (
	"bytes"
	"testing"

	"golang.org/x/sys/unix"
)

// socketPair returns a connected pair of non-blocking stream sockets, closed
// at the end of the test.
func socketPair(tb testing.TB) [2]int {
	tb.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
	return fds
}

func TestWritev(t *testing.T) {
	fds := socketPair(t)
	var vec [2]unix.Iovec
	// Empty buffers are skipped; no more than vec holds is written.
	n, err := Writev(fds[0], vec[:], [][]byte{nil, []byte("ab"), {}, []byte("cd"), []byte("ef")})
	if err != nil || n != 4 {
		t.Fatalf("Writev = %d, %v; want 4, nil", n, err)
	}
	if vec != [2]unix.Iovec{} {
		t.Error("vec still points at the buffers")
	}
	got := make([]byte, 16)
	if m, _ := unix.Read(fds[1], got); !bytes.Equal(got[:m], []byte("abcd")) {
		t.Fatalf("read %q, want abcd", got[:m])
	}
	// A full socket takes nothing and Writev says so without blocking.
	big := make([]byte, 1<<20)
	for {
		n, err := Writev(fds[0], vec[:], [][]byte{big})
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
	}
	_ = unix.Shutdown(fds[1], unix.SHUT_RDWR)
	if _, err := Writev(fds[0], vec[:], [][]byte{big}); err == nil {
		t.Error("writing to a peer that shut down succeeded")
	}
}

// BenchmarkWritev: two 64-byte buffers per call to a socket pair that is
// drained every 256 calls; the syscall is nearly all of it.
func BenchmarkWritev(b *testing.B) {
	fds := socketPair(b)
	var vec [64]unix.Iovec
	p := make([]byte, 64)
	bufs := [][]byte{p, p}
	rd := make([]byte, 1<<16)
	for i := 0; b.Loop(); i++ {
		if _, err := Writev(fds[0], vec[:], bufs); err != nil {
			b.Fatal(err)
		}
		if i%256 == 255 {
			for {
				if n, _ := unix.Read(fds[1], rd); n <= 0 {
					break
				}
			}
		}
	}
}
