//go:build !unix

package ldapdemo

import (
	"os"
	"syscall"
)

// procAttr: no process groups here (slapd is not packaged for this platform anyway;
// Start fails with ErrNotInstalled first).
func procAttr() *syscall.SysProcAttr { return nil }

func terminate(p *os.Process) { _ = p.Kill() }
func kill(p *os.Process)      { _ = p.Kill() }
