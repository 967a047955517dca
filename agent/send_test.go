package agent

import (
	"bufio"
	"encoding/binary"
	"io"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/gobwas/ws"

	"github.com/nowconnect/nowconnect/codec"
	"github.com/nowconnect/nowconnect/internal/testenv"
)

// TestSenderKeepsOrder: goroutines, each its own stream, queue DATA and
// WINDOWs on one tunnel, in rounds. In each round the hub end reads nothing
// until every sender has queued its frames, all small, which the queuing
// goroutines write themselves while the tunnel writer is idle: the socket
// fills, and the write that finds it full is handed to the writer part
// written (or not written at all). In the last round half the senders queue
// bulk frames, which go to the writer, while the hub end reads. Every message
// arrives whole, once, in its stream's order, and the close frame that shut
// queues comes last.
func TestSenderKeepsOrder(t *testing.T) {
	const senders, rounds, perRound = 6, 5, 200
	tun, hubEnd := testenv.TCPPair(t)
	// Small buffers, so the socket fills; not below loopback's MSS (a
	// receive window under it leaves the sender probing every 200 ms).
	_ = tun.SetWriteBuffer(64 << 10)
	_ = hubEnd.SetReadBuffer(64 << 10)
	s := newBareSession(t, tun)
	if s.snd.direct == nil {
		t.Fatal("no direct writes on a TCP tunnel")
	}
	var writer, wg sync.WaitGroup
	barriers := make([]sync.WaitGroup, rounds)
	for r := range barriers {
		barriers[r].Add(senders)
	}
	var closedAt atomic.Uint32
	writer.Go(s.tunnelWriteLoop) // waited for in the cleanup
	for i := range senders {
		cid := uint32(i + 1)
		wg.Go(func() { // sender i; waited for in the cleanup
			for r := range rounds {
				maxLen := 1024 // small: written by this goroutine when it can
				if r == rounds-1 && i%2 == 1 {
					maxLen = readChunk // bulk: to the writer
				}
				for k := range uint32(perRound) {
					seq := uint32(r*perRound) + k + 1
					if seq%10 == 0 {
						s.sendWindow(cid, int(seq)) // the increment carries the sequence
						continue
					}
					n := 4 + int(seq*cid*7919)%(maxLen-4)
					fb := getFrameBuf()
					p := fb.b[hdrRoom : hdrRoom+n]
					binary.BigEndian.PutUint32(p, seq)
					for j := 4; j < n; j++ {
						p[j] = byte(seq)
					}
					off, end := prepareData(fb, cid, n)
					// A third of the senders queue as a target poller does, and
					// flush after.
					later := i%3 == 2
					if !s.snd.enqueueData(fb, off, end, later) {
						closedAt.CompareAndSwap(0, seq)
					}
					if later {
						s.snd.flush()
					}
				}
				barriers[r].Done()
			}
		})
	}
	done := make(chan struct{})
	go func() { // shutter: queues the close frame once every sender is done; waited for through done
		defer close(done)
		wg.Wait()
		s.snd.shut(ws.OpClose, ws.NewCloseFrameBody(ws.StatusNormalClosure, ""))
	}()
	t.Cleanup(func() {
		_ = hubEnd.Close() // a writer still writing fails and exits
		<-done
		writer.Wait()
	})

	last := make(map[uint32]uint32)
	br := bufio.NewReaderSize(hubEnd, 1024)
	for r := range barriers {
		barriers[r].Wait()
		if r == rounds-1 {
			break // the last round is read as it is queued
		}
		for cid := uint32(1); cid <= senders; cid++ {
			for last[cid] < uint32((r+1)*perRound) {
				readMsg(t, br, last)
			}
		}
	}
	for !readMsg(t, br, last) {
	}
	<-done
	writer.Wait()
	if n := closedAt.Load(); n != 0 {
		t.Errorf("the tunnel refused frame %d", n)
	}
	for cid := uint32(1); cid <= senders; cid++ {
		if last[cid] != rounds*perRound {
			t.Errorf("stream %d: %d frames before the close frame, want %d", cid, last[cid], rounds*perRound)
		}
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("after the close frame: %v, want EOF (the writer closes the tunnel)", err)
	}
}

// readMsg reads one message the agent sent and checks it against last, the
// sequence each stream reached; it reports whether it was the close frame.
func readMsg(t *testing.T, br *bufio.Reader, last map[uint32]uint32) bool {
	t.Helper()
	h, err := ws.ReadHeader(br)
	if err != nil {
		t.Fatalf("after %v: %v", last, err)
	}
	p := make([]byte, h.Length)
	if _, err := io.ReadFull(br, p); err != nil {
		t.Fatal(err)
	}
	if !h.Masked {
		t.Fatal("an unmasked message")
	}
	ws.Cipher(p, h.Mask, 0)
	if h.OpCode == ws.OpClose {
		return true
	}
	f, pl, err := codec.ParseFrame(p)
	if err != nil {
		t.Fatal(err)
	}
	var seq uint32
	switch f.Type {
	case codec.FrameData:
		seq = binary.BigEndian.Uint32(pl)
		for j, b := range pl[4:] {
			if b != byte(seq) {
				t.Fatalf("stream %d frame %d: byte %d is %d", f.CID, seq, 4+j, b)
			}
		}
	case codec.FrameWindow:
		seq = binary.BigEndian.Uint32(pl)
	default:
		t.Fatalf("frame type %v", f.Type)
	}
	if seq != last[f.CID]+1 {
		t.Fatalf("stream %d: frame %d after %d", f.CID, seq, last[f.CID])
	}
	last[f.CID] = seq
	return false
}
