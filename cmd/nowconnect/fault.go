//go:build linux && nowconnect_faults

package main

import (
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/nowconnect/nowconnect/hub"
)

// Fault injection, only in test builds (tag nowconnect_faults, built by
// testenv.FaultBinary): a test breaks a running hub from outside, in ways
// nothing else can.
//
//	SIGUSR2  stop the hub's gnet engine behind its back (hub.Hub.InjectEngineStop):
//	         the process must exit non-zero at once ("hub failed").

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
	signal.Notify(sig, syscall.SIGUSR2)
	log.Warn(evFaultArmed, "signals", "SIGUSR2", "build", "nowconnect_faults")
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
		case <-sig:
			log.Warn(evFaultInjected, "fault", "engine_stop", "signal", "SIGUSR2")
			if err := h.InjectEngineStop(); err != nil {
				log.Error(evFaultFailed, "fault", "engine_stop", "err", err.Error())
			}
		}
	}
}
