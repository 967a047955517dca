package testenv

import "syscall"

// procAttr puts the child in its own process group (so cleanup can kill everything it
// started) and has the kernel SIGKILL it if the test binary dies without running cleanups
// (e.g. a `go test -timeout` panic).
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
