package main

import "syscall"

// procAttr puts a child in its own process group (stop reaches all of it) and has the
// kernel kill it if the gate dies.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
