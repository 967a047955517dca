//go:build !unix

package agent

import "io"

func (st *stream) initRead() {}

// readTarget reads up to st.want bytes from the target into a pooled frame
// buffer. Without raw fd reads the buffer is held while the target is idle
// (unix builds avoid that, see targetread_unix.go). It returns (n > 0,
// buffer, nil), (0, nil, nil) at EOF, or (0, nil, err).
func (st *stream) readTarget() (int, *frameBuf, error) {
	fb := getFrameBuf()
	n, err := st.target.Read(fb.b[hdrRoom : hdrRoom+st.want])
	if n > 0 {
		return n, fb, nil // an error comes back on the next read
	}
	putFrameBuf(fb)
	if err == io.EOF {
		return 0, nil, nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return 0, nil, err
}
