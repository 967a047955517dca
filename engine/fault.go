//go:build nowconnect_faults

package engine

import (
	"context"
	"time"
)

// injectTimeout bounds how long InjectEngineStop waits for the engine to end.
const injectTimeout = 5 * time.Second

// InjectEngineStop stops the gnet engine behind the server's back, as a
// failure of gnet would (see stopEngine): Done closes and Err wraps
// ErrEngineStopped. It returns once the engine has returned, or after 5s.
// Only test builds (tag nowconnect_faults) have it. Safe from any goroutine.
func (s *Server) InjectEngineStop() error {
	ctx, cancel := context.WithTimeout(context.Background(), injectTimeout)
	defer cancel()
	return s.stopEngine(ctx)
}

// InjectLoopStall blocks every event loop for d, as a process starved of CPU
// (or a loop stuck in a long callback) would: whatever the loops' tickers and
// sockets queue meanwhile is handled when it ends, tasks first. It returns
// once every loop has been asked to stall. Only test builds (tag
// nowconnect_faults) have it. Safe from any goroutine.
func (s *Server) InjectLoopStall(d time.Duration) error {
	for _, l := range s.Loops() {
		if err := l.Execute(func() { time.Sleep(d) }); err != nil {
			return err
		}
	}
	return nil
}
