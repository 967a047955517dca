package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/internal/testenv"
)

// Never alive and deaf: an engine that ends without Stop, or a listener
// that dies, fails the server (Done closes, Err says why) so that the
// process exits; a Stop does neither.

// failDeadline bounds how long a failure may take to close Done, and Stop
// to return after it.
const failDeadline = 3 * time.Second

// notFound answers every control-port request with 404.
type notFound struct{}

func (notFound) Route(*Request) Response { return Response{Status: 404} }

// startServer runs a server with one event loop on a random control port;
// its logs go to the returned buffer. A cleanup stops it.
func startServer(t *testing.T) (*Server, *testenv.SyncBuffer) {
	t.Helper()
	logs := &testenv.SyncBuffer{}
	s, err := NewServer(Options{
		Control:    "127.0.0.1:0",
		EventLoops: 1,
		Logger:     slog.New(slog.NewJSONHandler(logs, nil)),
	}, notFound{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = s.Stop(ctx)
	})
	return s, logs
}

// waitDone waits up to failDeadline for Done and returns how long it took.
func waitDone(t *testing.T, s *Server, since time.Time) time.Duration {
	t.Helper()
	select {
	case <-s.Done():
		return time.Since(since)
	case <-time.After(failDeadline):
		t.Fatalf("Done not closed %v after the fault (Err: %v)", failDeadline, s.Err())
		return 0
	}
}

// stopAfterFailure checks that Stop still returns, promptly, once the
// server failed.
func stopAfterFailure(t *testing.T, s *Server) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), failDeadline)
	defer cancel()
	start := time.Now()
	err := s.Stop(ctx)
	if ctx.Err() != nil {
		t.Fatalf("Stop after the failure did not return within %v: %v", failDeadline, err)
	}
	t.Logf("Stop after the failure returned in %v: %v", time.Since(start).Round(time.Millisecond), err)
}

func TestEngineStopBehindBackFails(t *testing.T) {
	testenv.CheckGoroutines(t)
	s, logs := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), failDeadline)
	defer cancel()
	start := time.Now()
	if err := s.stopEngine(ctx); err != nil {
		t.Fatalf("stopEngine: %v", err)
	}
	took := waitDone(t, s, start)
	t.Logf("Done closed %v after the engine was stopped", took.Round(time.Microsecond))
	if err := s.Err(); !errors.Is(err, ErrEngineStopped) {
		t.Fatalf("Err() = %v, want %v", err, ErrEngineStopped)
	}
	if !strings.Contains(logs.String(), `"msg":"engine_failed"`) {
		t.Errorf("no engine_failed in the log:\n%s", logs)
	}
	if err := s.stopEngine(ctx); !errors.Is(err, ErrStopped) {
		t.Errorf("stopEngine again = %v, want %v", err, ErrStopped)
	}
	stopAfterFailure(t, s)
	if err := s.Err(); !errors.Is(err, ErrEngineStopped) {
		t.Errorf("Err() after Stop = %v, want %v", err, ErrEngineStopped)
	}
}

func TestEngineControlListenerDiesFails(t *testing.T) {
	testenv.CheckGoroutines(t)
	s, logs := startServer(t)
	s.mu.Lock()
	ctl := s.control
	s.mu.Unlock()
	start := time.Now()
	if err := ctl.ln.Close(); err != nil { // behind Listener.Close's back
		t.Fatal(err)
	}
	took := waitDone(t, s, start)
	t.Logf("Done closed %v after the control listener died", took.Round(time.Microsecond))
	err := s.Err()
	if !errors.Is(err, net.ErrClosed) || !strings.Contains(err.Error(), "listener control") {
		t.Fatalf("Err() = %v, want the control listener closed (net.ErrClosed)", err)
	}
	if errors.Is(err, ErrEngineStopped) {
		t.Errorf("Err() = %v: the engine did not stop", err)
	}
	if !strings.Contains(logs.String(), `"msg":"engine_failed"`) {
		t.Errorf("no engine_failed in the log:\n%s", logs)
	}
	stopAfterFailure(t, s)
}

func TestEngineStopIsNoFailure(t *testing.T) {
	testenv.CheckGoroutines(t)
	s, logs := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), failDeadline)
	defer cancel()
	start := time.Now()
	if err := s.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	t.Logf("Stop returned in %v", time.Since(start).Round(time.Millisecond))
	// The engine and the acceptLoop have returned (Stop waited for them):
	// whatever they would fail has been failed already.
	select {
	case <-s.Done():
		t.Fatalf("Done closed by Stop (Err: %v)", s.Err())
	default:
	}
	if err := s.Err(); err != nil {
		t.Errorf("Err() after Stop = %v, want nil", err)
	}
	if strings.Contains(logs.String(), "engine_failed") {
		t.Errorf("engine_failed logged by Stop:\n%s", logs)
	}
}

// A started engine leaves a P beyond its event loops, so that idle loops
// blocked in epoll_wait do not hold every P from the netpoller's goroutines
// (reserveProcs).
func TestEngineReservesAProc(t *testing.T) {
	old := runtime.GOMAXPROCS(1) // one P, one loop: the loop would hold it
	t.Cleanup(func() { runtime.GOMAXPROCS(old) })
	startServer(t)
	if got := runtime.GOMAXPROCS(0); got != 2 {
		t.Fatalf("GOMAXPROCS %d after starting one event loop on one P, want 2", got)
	}
	if Procs() != 2 {
		t.Fatalf("Procs() = %d, want 2", Procs())
	}
}

// Event loops default to the Ps the process started with, not to the host's
// CPUs: a process (or container) given fewer CPUs than the host has gets that
// many loops, also after an engine raised GOMAXPROCS. The test binary runs
// again with GOMAXPROCS=1 to see it (on a host of 2 CPUs or more, where
// NumCPU would say otherwise).
func TestEngineDefaultLoops(t *testing.T) {
	if os.Getenv("NC_ENGINE_TEST_CHILD") == "loops" {
		startServer(t) // one loop: raises GOMAXPROCS to 2, which must not count
		s, err := NewServer(Options{Control: "127.0.0.1:0"}, notFound{})
		if err != nil {
			t.Fatal(err)
		}
		fmt.Printf("gomaxprocs=%d loops=%d\n", runtime.GOMAXPROCS(0), s.numLoops())
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestEngineDefaultLoops$", "-test.v")
	cmd.Env = append(os.Environ(), "NC_ENGINE_TEST_CHILD=loops", "GOMAXPROCS=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "gomaxprocs=2 loops=1\n") {
		t.Fatalf("with GOMAXPROCS=1 on %d CPUs the default is not one loop:\n%s", runtime.NumCPU(), out)
	}
}
