//go:build !windows

package main

import (
	"os"
	"os/signal"
	"syscall"
)

// notifyHUP delivers SIGHUP (reload) on the channel until stop is called;
// meanwhile SIGHUP no longer ends the process.
func notifyHUP() (hup <-chan os.Signal, stop func()) {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGHUP)
	return c, func() { signal.Stop(c) }
}
