package ldapdemo

import (
	"os"
	"syscall"
)

// procAttr puts slapd in its own process group (so a terminal's Ctrl-C reaches only the
// caller, which stops slapd after whatever uses it) and has the kernel SIGKILL it if the
// caller dies without stopping it.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// terminate sends SIGTERM to p's process group; kill sends SIGKILL. ESRCH once everybody
// is gone is expected.
func terminate(p *os.Process) { _ = syscall.Kill(-p.Pid, syscall.SIGTERM) }
func kill(p *os.Process)      { _ = syscall.Kill(-p.Pid, syscall.SIGKILL) }
