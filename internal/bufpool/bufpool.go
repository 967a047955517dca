// Package bufpool pools byte buffers in size classes that double from 128
// bytes to 64 KiB, with one last class of Max bytes: a WebSocket message of
// a whole 64 KiB frame with its headers. A buffer holds less than twice the
// bytes asked for, so what a queue of pooled buffers holds stays within
// twice its bytes whatever the frame sizes; the pools never allocate once
// warm. The mesh's send path and the hub's hand-over of mesh frames to its
// loops take their buffers here.
package bufpool

import "sync"

// Max is the largest buffer: 64 KiB of payload and up to 1 KiB of headers.
const Max = 64<<10 + 1<<10

var classes = [...]int{128, 256, 512, 1 << 10, 2 << 10, 4 << 10, 8 << 10, 16 << 10, 32 << 10, 64 << 10, Max}

var pools [len(classes)]sync.Pool

// Buf is one pooled buffer. len(B) is its class size; the holder slices it.
type Buf struct {
	B     []byte
	class uint8
}

// Get returns a buffer of at least n bytes (n ≤ Max; larger n panics: a
// caller bug, every frame of ours is bounded).
func Get(n int) *Buf {
	c := 0
	for classes[c] < n {
		c++
	}
	if v := pools[c].Get(); v != nil {
		return v.(*Buf)
	}
	return &Buf{B: make([]byte, classes[c]), class: uint8(c)}
}

// Put gives b back; b must not be used afterwards.
func Put(b *Buf) { pools[b.class].Put(b) }
