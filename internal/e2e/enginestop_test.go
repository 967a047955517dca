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

// TestLoopStallKeepsTunnels: every event loop of a real hub process blocks
// for 2 s (SIGUSR1 in the fault build: a hub starved of CPU), twice its
// tunnel ping_timeout, while its agent keeps pinging every 200 ms. When the
// loops resume, the tick queued meanwhile runs before the loop reads the
// socket; the agent's pings are waiting there, so the tunnel is not silent
// (internal/inq) and stays up. Without that check the hub closed both
// tunnels as ping_timeout.
func TestLoopStallKeepsTunnels(t *testing.T) {
	echo := startServer(t, func(c net.Conn) { _, _ = io.Copy(c, c) })
	ports := testenv.FreePorts(t, 2)
	control, listen := fmt.Sprintf("127.0.0.1:%d", ports[0]), fmt.Sprintf("127.0.0.1:%d", ports[1])
	h := testenv.StartProcess(t, testenv.FaultBinary(t), []string{"cloud", "--config",
		cloudConfig(t, control, listen, "\n[tunnel]\nping_interval = \"200ms\"\nping_timeout = \"1s\"\n")}, nil)
	h.WaitForOutput(t, `"msg":"fault_injection_armed"`, 10*time.Second) // until then SIGUSR1 kills
	startPremiseConfig(t, control, "steady", echo.Addr(), 200*time.Millisecond, time.Minute)
	testenv.WaitFor(t, 10*time.Second, "the agent's 2 tunnels", func() bool {
		return strings.Count(h.Output(), `"msg":"agent_connected"`) == 2
	})
	if err := echoOnce(listen, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := h.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	h.WaitForOutput(t, `"fault":"loop_stall"`, 5*time.Second)
	// A client sent now is served once the loops run again: not before the
	// stall's end, which shows the stall happened.
	sent := time.Now()
	if err := echoOnce(listen, 10*time.Second); err != nil {
		t.Fatalf("echo across the stall: %v", err)
	}
	if took := time.Since(sent); took < time.Second {
		t.Fatalf("a client was served %v into a 2 s stall: the loops did not stall", took)
	}
	for range 5 {
		if err := echoOnce(listen, 5*time.Second); err != nil {
			t.Fatalf("echo after the stall: %v", err)
		}
	}
	if out := h.Output(); strings.Contains(out, `"msg":"agent_disconnected"`) || strings.Contains(out, `"msg":"fault_injection_failed"`) {
		t.Fatalf("the hub closed a tunnel of an agent that kept pinging through the stall:\n%s", out)
	}
}
