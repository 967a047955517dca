//go:build unix

package agent

import "golang.org/x/sys/unix"

// writeNow writes p to the target without blocking and returns how much
// the socket took (0 when its buffer is full). Called with mu held.
func (st *stream) writeNow(p []byte) (int, error) {
	var n int
	var werr error
	err := st.raw.Control(func(fd uintptr) {
		for {
			k, e := unix.Write(int(fd), p)
			switch e {
			case nil:
				n = k
			case unix.EINTR:
				continue
			case unix.EAGAIN:
			default:
				werr = e
			}
			return
		}
	})
	if err != nil {
		return 0, err
	}
	return n, werr
}
