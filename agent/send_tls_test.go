package agent

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/gobwas/ws"

	"github.com/nowconnect/nowconnect/codec"
)

// countingConn counts the Writes that reach the TCP socket.
type countingConn struct {
	net.Conn
	writes atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// tlsTunnel returns the client end of a TLS connection over loopback whose
// TCP writes are counted, and a channel that yields everything the server
// end read once the client closes.
func tlsTunnel(t *testing.T) (*tls.Conn, *countingConn, <-chan []byte) {
	t.Helper()
	cert, pool := selfSigned(t)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan []byte, 1)
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	wg.Go(func() { // tlsServer: reads until EOF
		defer ln.Close()
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(c)
		got <- b
	})
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	cc := &countingConn{Conn: raw}
	tc := tls.Client(cc, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
	t.Cleanup(func() { _ = tc.Close() }) // before wg.Wait: the server reads to EOF
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	return tc, cc, got
}

// TestTLSBatchCoalesced: over wss:// (no writev) a batch of small DATA
// frames goes out in a few TLS records and socket writes, not one each, and
// arrives intact and in order.
func TestTLSBatchCoalesced(t *testing.T) {
	tc, cc, got := tlsTunnel(t)
	s := newBareSession(t, tc)
	if !s.snd.coalesce {
		t.Fatal("sender over TLS does not coalesce")
	}
	const frames, size = 300, 100 // 300 LDAP-sized responses: ~33 KiB
	// crypto/tls keeps records small for the first 128 KiB of a connection
	// (dynamic record sizing); get past that first.
	const warm = 3
	for i := range warm {
		fb := getFrameBuf()
		off, end := prepareData(fb, uint32(100000+i), readChunk)
		s.snd.enqueueData(fb, off, end, false)
	}
	writeQueued(t, &s.snd)
	base := cc.writes.Load()
	for i := range frames {
		fb := getFrameBuf()
		for j := range size {
			fb.b[hdrRoom+j] = byte(i + j)
		}
		off, end := prepareData(fb, uint32(i+1), size)
		s.snd.enqueueData(fb, off, end, false)
		if i%50 == 0 {
			s.sendWindow(uint32(i+1), 65536) // control frames interleaved
		}
	}
	writeQueued(t, &s.snd)
	// ~33 KiB is three 16 KiB TLS records; one record per frame would be
	// 300 writes.
	if w := cc.writes.Load() - base; w > 4 {
		t.Fatalf("%d socket writes for one batch of %d frames, want ≤ 4", w, frames)
	}
	_ = tc.Close()
	b := <-got
	data := 0
	for len(b) > 0 {
		h, n, err := codec.ParseWSHeader(b)
		if err != nil || int64(len(b)-n) < h.Length {
			t.Fatalf("frame %d: %v", data, err)
		}
		p := b[n : n+int(h.Length)]
		ws.Cipher(p, h.Mask, 0)
		b = b[n+int(h.Length):]
		fh, payload, err := codec.ParseFrame(p)
		if err != nil {
			t.Fatal(err)
		}
		if fh.Type != codec.FrameData || fh.CID >= 100000 {
			continue // control frames, warm-up
		}
		want := make([]byte, size)
		for j := range want {
			want[j] = byte(data + j)
		}
		if fh.CID != uint32(data+1) || !bytes.Equal(payload, want) {
			t.Fatalf("DATA %d: cid %d, payload differs", data, fh.CID)
		}
		data++
	}
	if data != frames {
		t.Fatalf("%d DATA frames arrived, want %d", data, frames)
	}
}

// BenchmarkTLSSmallFrames: one batch of 64 small DATA frames over TLS.
func BenchmarkTLSSmallFrames(b *testing.B) {
	cert, pool := selfSigned(b)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { // tlsDrain
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(io.Discard, c)
	})
	tc, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
	if err != nil {
		b.Fatal(err)
	}
	defer tc.Close()
	s := newBareSession(b, tc)
	b.ReportAllocs()
	b.SetBytes(64 * 100)
	for b.Loop() {
		for i := range 64 {
			fb := getFrameBuf()
			off, end := prepareData(fb, uint32(i+1), 100)
			s.snd.enqueueData(fb, off, end, false)
		}
		writeQueued(b, &s.snd)
	}
}
