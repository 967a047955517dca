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
