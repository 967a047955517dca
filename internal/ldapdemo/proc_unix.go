//go:build unix && !linux

package ldapdemo

import "syscall"

// procAttr puts slapd in its own process group so stop reaches everything it started.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
