//go:build !linux

package wanlink

import "errors"

func newFDWaiter() (waiter, error) { return nil, errors.ErrUnsupported }
