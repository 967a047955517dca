package hub

import (
	"github.com/panjf2000/gnet/v2"

	"github.com/nowconnect/nowconnect/engine"
)

// Reading a mesh link on an event loop.
//
// A link read on its reader goroutine hands every frame to the loop of its
// stream: one wake-up of that loop's thread per frame, on the path of every
// request and every response that crosses the mesh. So a plain TCP link is
// read on the home loop of its origin lane instead (mesh.Link.ReadOn): the
// frames of this hub's forwarded clients are handled where they were read, and
// so are those of relays whose tunnel shares that loop. Frames for the other
// loops still go through Execute, from this loop.
//
// Order is kept: gnet adopts the socket with a task queued on the loop after
// every frame the reader goroutine handed over (Loop.Adopt goes through the
// same queue as Execute), and readLoop is set in OnOpen, so a frame handled
// at once never overtakes one handed over before.

// loopReadable is a link whose reading can move onto a loop (mesh.Link).
type loopReadable interface {
	ReadOn(start func(fd int, feed func([]byte) (int, error), ended func(error)) (stop func(), err error)) bool
}

// readOnLoop makes pl's link read on its origin lane's loop, when it can be.
func (pl *peerLink) readOnLoop() {
	if rl, ok := pl.l.(loopReadable); ok {
		rl.ReadOn(pl.startReading)
	}
}

// startReading adopts a dup of the link's socket fd on the origin lane's loop
// (a mesh.ReadStart).
func (pl *peerLink) startReading(fd int, feed func([]byte) (int, error), ended func(error)) (func(), error) {
	r := &linkReader{pl: pl, loop: pl.origin.loop, feed: feed, ended: ended}
	if err := engine.Enroll(r.loop, fd, r); err != nil {
		return nil, err
	}
	return r.stop, nil
}

// linkReader reads a link's socket on a loop (an engine.Opener).
type linkReader struct {
	// set at construction
	pl    *peerLink
	loop  *engine.Loop
	feed  func([]byte) (int, error)
	ended func(error)

	// owned by the loop
	c       gnet.Conn
	done    bool
	stopped bool // stop ran before OnOpen
}

func (r *linkReader) OnOpen(c gnet.Conn) gnet.Action {
	if r.stopped {
		return gnet.Close // OnClose reports the end
	}
	r.c = c
	r.pl.readLoop.Store(r.loop)
	return gnet.None
}

func (r *linkReader) EnrollFailed(err error) { r.end(err) }

func (r *linkReader) OnTraffic(c gnet.Conn) gnet.Action {
	if r.done {
		return gnet.Close
	}
	buf, _ := c.Peek(-1)
	n, err := r.feed(buf)
	if n > 0 { // never Discard(0): gnet would drop everything
		_, _ = c.Discard(n)
	}
	if err != nil {
		r.end(err)
		return gnet.Close
	}
	return gnet.None
}

// OnClose reports gnet's error: io.EOF or a socket error; nil after stop, or
// when the engine stops (the link then ends as on shutdown).
func (r *linkReader) OnClose(_ gnet.Conn, err error) { r.end(err) }

func (r *linkReader) end(err error) {
	if r.done {
		return
	}
	r.done = true
	r.pl.readLoop.Store(nil)
	r.ended(err)
}

// stop closes the loop's descriptor of the socket (OnClose then reports the
// end). Safe from any goroutine; if the engine is gone, so are its sockets.
func (r *linkReader) stop() {
	_ = r.loop.Execute(func() {
		r.stopped = true
		if r.c != nil && !r.done {
			_ = r.loop.EventLoop().Close(r.c)
		}
	})
}
