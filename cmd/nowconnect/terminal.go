package main

import (
	"io"
	"os"
)

// isTerminal reports whether w is a terminal (fileIsTerminal, per OS): the
// default of up's banner and of loadtest's progress line.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && fileIsTerminal(f)
}
