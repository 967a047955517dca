package e2e

import (
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/internal/testenv"
)

// exitFailure is the exit code of a command that returned an error
// (cmd/nowconnect/usage.go).
const exitFailure = 1

// TestEngineStopExits: "No deaf hub". A real hub process whose gnet engine
// stops without Stop (injected with SIGUSR2 in the fault build) exits at
// once, non-zero, saying why, so that its supervisor restarts it: `cloud`
// (the hub alone) and `up` (hub and agent in one process).
func TestEngineStopExits(t *testing.T) {
	echo := startServer(t, func(c net.Conn) { _, _ = io.Copy(c, c) })
	t.Run("cloud", func(t *testing.T) {
		control := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
		listen := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
		h := testenv.StartProcess(t, testenv.FaultBinary(t), []string{"cloud", "--config", cloudConfig(t, control, listen, "")}, nil)
		h.WaitForOutput(t, `"msg":"fault_injection_armed"`, 10*time.Second) // until then SIGUSR2 kills
		startPremise(t, testenv.Binary(t), control, "a1", map[string]string{"svc": echo.Addr()}, "--tunnels", "1")
		h.WaitForOutput(t, `"msg":"agent_connected"`, 10*time.Second)
		injectEngineStop(t, h, listen)
	})
	t.Run("up", func(t *testing.T) {
		control := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
		listen := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
		h := testenv.StartProcess(t, testenv.FaultBinary(t), []string{"up", "--control", control, "--forward", listen + "=" + echo.Addr()}, nil)
		h.WaitForOutput(t, `"msg":"fault_injection_armed"`, 10*time.Second)
		h.WaitForOutput(t, `"msg":"agent_connected"`, 10*time.Second)
		injectEngineStop(t, h, listen)
	})
}

// injectEngineStop checks a round trip through listen, stops h's engine
// behind its back (SIGUSR2) and wants h to exit at once with exitFailure,
// saying why once.
func injectEngineStop(t *testing.T, h *testenv.Process, listen string) {
	t.Helper()
	if err := echoOnce(listen, 5*time.Second); err != nil {
		t.Fatalf("round trip through the hub before the fault: %v", err)
	}
	if err := h.Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	sent := time.Now()
	code, err := h.Wait(3 * time.Second)
	took := time.Since(sent)
	if err != nil {
		t.Fatalf("hub after the engine stopped: %v", err)
	}
	t.Logf("exited %v after SIGUSR2, code %d", took.Round(time.Millisecond), code)
	if code != exitFailure {
		t.Errorf("exit code %d, want %d", code, exitFailure)
	}
	out := h.Output()
	for _, want := range []string{`"msg":"fault_injected"`, `"msg":"engine_failed"`, "hub failed: engine: event loops stopped unexpectedly"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "event loops stopped unexpectedly"); n != 2 { // the engine_failed line and the exit message
		t.Errorf("the cause is given %d times, want 2 (once per line):\n%s", n, out)
	}
}
