//go:build unix && !linux

package ldapdemo

import (
	"os"
	"syscall"
)

// procAttr puts slapd in its own process group (so a terminal's Ctrl-C reaches only the
// caller, which stops slapd after whatever uses it).
func procAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }

// terminate sends SIGTERM to p's process group; kill sends SIGKILL.
func terminate(p *os.Process) { _ = syscall.Kill(-p.Pid, syscall.SIGTERM) }
func kill(p *os.Process)      { _ = syscall.Kill(-p.Pid, syscall.SIGKILL) }
