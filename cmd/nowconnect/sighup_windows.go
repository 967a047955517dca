//go:build windows

package main

import "os"

// notifyHUP: Windows has no SIGHUP; the channel never delivers (reload by
// restarting the service).
func notifyHUP() (hup <-chan os.Signal, stop func()) { return nil, func() {} }
