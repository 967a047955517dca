//go:build unix && !linux

package testenv

import "syscall"

// procAttr puts the child in its own process group so cleanup can kill everything it
// started.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
