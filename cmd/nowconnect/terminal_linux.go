package main

import (
	"os"

	"golang.org/x/sys/unix"
)

// fileIsTerminal: the kernel answers TCGETS for f. /dev/null and other
// character devices are not terminals.
func fileIsTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
