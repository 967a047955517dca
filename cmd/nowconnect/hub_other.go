//go:build !linux

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
)

// errHubNeedsLinux: the hub runs on gnet's epoll reactor and parks client
// sockets by descriptor (engine/), which only Linux has. The premise agent
// (premise) and the tools build and run everywhere.
var errHubNeedsLinux = errors.New("the cloud hub needs Linux")

func runCloud(context.Context, []string, io.Writer) error {
	return fmt.Errorf("%w (this binary is %s/%s; the premise agent runs here)", errHubNeedsLinux, runtime.GOOS, runtime.GOARCH)
}

func runUp(context.Context, []string, io.Writer) error {
	return fmt.Errorf("%w: up runs a hub (this binary is %s/%s; the premise agent runs here)", errHubNeedsLinux, runtime.GOOS, runtime.GOARCH)
}
