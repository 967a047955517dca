//go:build nowconnect_faults

package hub

import "time"

// InjectEngineStop stops the hub's engine behind its back, as a failure of
// gnet would (engine.Server.InjectEngineStop): Done closes and Err wraps
// engine.ErrEngineStopped. Only test builds (tag nowconnect_faults) have
// it. Safe from any goroutine.
func (h *Hub) InjectEngineStop() error { return h.srv.InjectEngineStop() }

// InjectLoopStall blocks every event loop of the hub for d
// (engine.Server.InjectLoopStall). Only test builds have it.
func (h *Hub) InjectLoopStall(d time.Duration) error { return h.srv.InjectLoopStall(d) }
