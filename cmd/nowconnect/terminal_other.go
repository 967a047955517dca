//go:build !linux

package main

import "os"

// fileIsTerminal: f is a character device (a console or a terminal; also
// /dev/null, which only hides what is printed).
func fileIsTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
