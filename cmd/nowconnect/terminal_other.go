//go:build !linux

package main

import (
	"io"
	"os"
)

// isTerminal reports whether w is a character device (a console or a
// terminal; also /dev/null, which only hides what is printed).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
