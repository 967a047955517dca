//go:build linux && nowconnect_faults

package main

import (
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nowconnect/nowconnect/hub"
)

// Fault injection, only in test builds (tag nowconnect_faults, built by
// testenv.FaultBinary): a test breaks a running hub from outside, in ways
// nothing else can.
//
//	SIGUSR2  stop the hub's gnet engine behind its back (hub.Hub.InjectEngineStop):
//	         the process must exit non-zero at once ("hub failed").
//	SIGUSR1  block every event loop for stallFor (hub.Hub.InjectLoopStall), as a
//	         process starved of CPU: its tunnels must survive if their agents spoke.

// stallFor is how long SIGUSR1 blocks the event loops.
const stallFor = 2 * time.Second

// Log events of fault injection.
const (
	evFaultArmed    = "fault_injection_armed"
	evFaultInjected = "fault_injected"
	evFaultFailed   = "fault_injection_failed"
)

func init() { faultHooks = armFaults }

// armFaults injects a fault into h for every SIGUSR2 until stop is called.
// It says so in the log (a test build must not pass for the real one); a
// signal that comes before that line kills the process, as SIGUSR2 does.
func armFaults(h *hub.Hub, log *slog.Logger) (stop func()) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGUSR2, syscall.SIGUSR1)
	log.Warn(evFaultArmed, "signals", "SIGUSR2 SIGUSR1", "build", "nowconnect_faults")
	quit, done := make(chan struct{}), make(chan struct{})
	go faultLoop(h, log, sig, quit, done) // joined by stop
	return func() {
		signal.Stop(sig)
		close(quit)
		<-done
	}
}

// faultLoop runs the fault of each signal on sig until quit is closed, then
// closes done.
func faultLoop(h *hub.Hub, log *slog.Logger, sig <-chan os.Signal, quit <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	for {
		select {
		case <-quit:
			return
		case s := <-sig:
			if s == syscall.SIGUSR1 {
				log.Warn(evFaultInjected, "fault", "loop_stall", "signal", "SIGUSR1", "for", stallFor.String())
				if err := h.InjectLoopStall(stallFor); err != nil {
					log.Error(evFaultFailed, "fault", "loop_stall", "err", err.Error())
				}
				continue
			}
			log.Warn(evFaultInjected, "fault", "engine_stop", "signal", "SIGUSR2")
			if err := h.InjectEngineStop(); err != nil {
				log.Error(evFaultFailed, "fault", "engine_stop", "err", err.Error())
			}
		}
	}
}
