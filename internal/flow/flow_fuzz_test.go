package flow_test

import (
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/internal/flow"
)

// FuzzCreditWindow drives one direction of a stream: a sender's Credit and a
// receiver's Window joined by a link that delays DATA and WINDOW frames, under
// an arbitrary schedule of sends, deliveries, releases and clock steps. Whatever
// the schedule, a sender that sends only what Avail allows is never refused
// (no ErrWindowExceeded), the receiver never over-grants (no ErrOverGrant), the
// window stays within [initial, max] and only grows, and everything the sender
// may still put on the wire, plus what is on the wire, plus what the receiver
// buffers, fits the window: the memory bound the hub, the agent and the mesh
// rely on.
func FuzzCreditWindow(f *testing.F) {
	f.Add(uint16(64), uint8(4), []byte{0, 1, 2, 3, 0, 1, 2, 3})
	f.Add(uint16(256), uint8(8), []byte{0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4, 4, 4, 0, 1, 2, 3})
	f.Add(uint16(16), uint8(1), []byte{0, 1, 2, 3, 4, 0x10, 0x21, 0x32, 0x43, 0x54, 0x65, 0x76})
	f.Add(uint16(1024), uint8(16), []byte{0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 0, 1, 2, 3, 0, 1, 2, 3})
	f.Fuzz(func(t *testing.T, initial uint16, growth uint8, ops []byte) {
		init := int(initial)%4096 + 4 // bytes: small, so that schedules reach the edges
		maxW := init << (growth % 6)
		credit := flow.NewCredit(init, maxW)
		win := flow.NewWindow(init, maxW)
		now := time.Unix(1_000_000, 0)
		rtt := 10 * time.Millisecond

		var dataWire []int   // DATA in flight, oldest first
		var incWire []uint32 // WINDOW increments in flight, oldest first
		inflightData, inflightInc := 0, 0
		lastSize := win.Size()
		for i, op := range ops {
			arg := int(op >> 3)
			switch op % 6 {
			case 0: // send what credit allows, up to a size from the schedule
				n := min(credit.Avail(), arg*init/16+1)
				if n > 0 {
					credit.Take(n)
					dataWire = append(dataWire, n)
					inflightData += n
				}
			case 1: // deliver the oldest DATA
				if len(dataWire) > 0 {
					n := dataWire[0]
					dataWire = dataWire[1:]
					inflightData -= n
					if err := win.Receive(n); err != nil {
						t.Fatalf("op %d: Receive(%d) of a sender within its credit: %v", i, n, err)
					}
				}
			case 2: // the application takes some buffered bytes
				n := min(win.Buffered(), arg*init/8+1)
				if n > 0 {
					if inc := win.Release(n, now, rtt); inc > 0 {
						incWire = append(incWire, uint32(inc))
						inflightInc += inc
					}
				}
			case 3: // deliver the oldest WINDOW
				if len(incWire) > 0 {
					inc := incWire[0]
					incWire = incWire[1:]
					inflightInc -= int(inc)
					if err := credit.Grant(inc); err != nil {
						t.Fatalf("op %d: Grant(%d): %v", i, inc, err)
					}
				}
			case 4: // time passes: from nothing to several round trips
				now = now.Add(time.Duration(arg) * rtt / 4)
			case 5: // the receiver returns everything it released at once
				if inc := win.Flush(); inc > 0 {
					incWire = append(incWire, uint32(inc))
					inflightInc += inc
				}
			}
			size := win.Size()
			switch {
			case size < lastSize:
				t.Fatalf("op %d: the window shrank from %d to %d", i, lastSize, size)
			case size > maxW:
				t.Fatalf("op %d: window %d above its max %d", i, size, maxW)
			case win.Buffered() > size:
				t.Fatalf("op %d: %d bytes buffered in a window of %d", i, win.Buffered(), size)
			case credit.Avail() < 0:
				t.Fatalf("op %d: negative credit %d", i, credit.Avail())
			}
			if exposed := credit.Avail() + inflightData + inflightInc + win.Buffered(); exposed > size {
				t.Fatalf("op %d: credit %d + DATA in flight %d + WINDOW in flight %d + buffered %d = %d, above the window %d",
					i, credit.Avail(), inflightData, inflightInc, win.Buffered(), exposed, size)
			}
			lastSize = size
		}
	})
}
