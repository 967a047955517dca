//go:build !linux

// Package iov writes gathered buffers to a non-blocking socket with one
// writev; on this system it has none, and callers keep their writer
// goroutines.
package iov

import "syscall"

// Conn is Linux's; NewConn returns nil here.
type Conn struct{}

// NewConn returns nil: no direct writes on this system.
func NewConn(syscall.Conn) *Conn { return nil }

// Writev is never called on a nil Conn.
func (*Conn) Writev([][]byte) (int, error) { return 0, nil }
