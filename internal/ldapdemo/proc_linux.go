package ldapdemo

import "syscall"

// procAttr puts slapd in its own process group (so stop reaches everything it started) and
// has the kernel SIGKILL it if this process dies without stopping it.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
