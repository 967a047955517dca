package e2e

import (
	"io"
	"net"
	"testing"

	"github.com/gobwas/ws"

	"github.com/nowconnect/nowconnect/codec"
	"github.com/nowconnect/nowconnect/hub"
)

// readFrameInto reads one hub→agent frame into buf without allocating.
func (r *rawTunnel) readFrameInto(buf []byte) (codec.Header, []byte, error) {
	var hb []byte
	var h ws.Header
	var n int
	for k := 2; ; k++ {
		var err error
		if hb, err = r.br.Peek(k); err != nil {
			return codec.Header{}, nil, err
		}
		if h, n, err = codec.ParseWSHeader(hb); err == nil {
			break
		} else if err != codec.ErrShortHeader {
			return codec.Header{}, nil, err
		}
	}
	_, _ = r.br.Discard(n)
	p := buf[:h.Length]
	if _, err := io.ReadFull(r.br, p); err != nil {
		return codec.Header{}, nil, err
	}
	fh, payload, err := codec.ParseFrame(p)
	return fh, payload, err
}

// maskedFrame builds a client→hub message once, for sending repeatedly.
func maskedFrame(frame []byte) []byte {
	h := ws.Header{Fin: true, OpCode: ws.OpBinary, Masked: true, Length: int64(len(frame)), Mask: ws.NewMask()}
	b := codec.AppendWSHeader(nil, h)
	p := append([]byte(nil), frame...)
	ws.Cipher(p, h.Mask, 0)
	return append(b, p...)
}

// TestDataPathZeroAlloc: moving DATA through the hub in both directions
// allocates nothing per frame once warm (the process-wide count covers the
// hub's loops and this test's own I/O, which is allocation-free).
func TestDataPathZeroAlloc(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates on its own; this test runs in the non-race pass of make test")
	}
	th := startHub(t, []string{"svc"}, func(c *hub.Config) { c.EventLoops = 1 })
	r, err := dialRaw(t, th, token(t, "alloc-agent", []string{"svc"}))
	if err != nil {
		t.Fatal(err)
	}
	r.hello(t, "alloc-agent", "svc")
	waitAgents(t, th, 1)
	client, err := net.Dial("tcp", th.Addr["svc"])
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	buf := make([]byte, codec.MaxFrameLen)
	var cid uint32
	for cid == 0 {
		fh, _, err := r.readFrameInto(buf)
		if err != nil {
			t.Fatal(err)
		}
		if fh.Type == codec.FrameOpen {
			cid = fh.CID
		}
	}
	if _, err := r.c.Write(maskedFrame(codec.AppendEmpty(nil, codec.FrameOpenAck, cid))); err != nil {
		t.Fatal(err)
	}
	const size = 16 << 10
	payload := make([]byte, size)
	data := maskedFrame(append(codec.AppendHeader(nil, codec.FrameData, cid), payload...))
	credit := maskedFrame(codec.AppendWindow(nil, cid, size))
	got := make([]byte, size)

	roundTrip := func() {
		// client → agent
		if _, err := client.Write(payload); err != nil {
			t.Fatal(err)
		}
		for n := 0; n < size; {
			fh, p, err := r.readFrameInto(buf)
			if err != nil {
				t.Fatal(err)
			}
			if fh.Type == codec.FrameData {
				n += len(p)
			}
		}
		if _, err := r.c.Write(credit); err != nil {
			t.Fatal(err)
		}
		// agent → client
		if _, err := r.c.Write(data); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(client, got); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 200; i++ { // warm pools and buffers
		roundTrip()
	}
	// The hub returns a2c credit in WINDOW frames; drain them between runs
	// so the tunnel's receive side never fills.
	allocs := testing.AllocsPerRun(2000, roundTrip)
	t.Logf("allocations per 16 KiB round trip (two DATA frames through the hub): %v", allocs)
	if allocs > 0 {
		t.Fatalf("DATA path allocates: %v allocations per round trip", allocs)
	}
}
