package e2e

import (
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/hub"
	"github.com/nowconnect/nowconnect/internal/testenv"
)

// echoRoundTrip writes msg on c and reads it back.
func echoRoundTrip(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatalf("write: %v", err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
		t.Fatalf("echo: %q %v", buf, err)
	}
}

// TestIdleTimeout: with timeouts.idle set, a stream that moves no bytes
// either way for that long is closed by the hub (the client sees its
// connection end, the agent gets RST and closes the target), and a stream
// that keeps talking outlives the timeout.
func TestIdleTimeout(t *testing.T) {
	leakCheck(t)
	const idle = 400 * time.Millisecond
	var targetsClosed atomic.Int64
	echo := startServer(t, func(c net.Conn) {
		_, _ = io.Copy(c, c)
		targetsClosed.Add(1)
	})
	th := startHub(t, []string{"svc"}, func(c *hub.Config) { c.IdleTimeout = idle })
	startAgent(t, th, "a1", map[string]string{"svc": echo.Addr()})
	waitAgents(t, th, 1)

	quiet, err := net.Dial("tcp", th.Addr["svc"])
	if err != nil {
		t.Fatal(err)
	}
	defer quiet.Close()
	busy, err := net.Dial("tcp", th.Addr["svc"])
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	echoRoundTrip(t, busy, "hello")
	// The hub's last activity on quiet is no earlier than this write, so
	// it may close quiet no earlier than idle after it.
	lastQuiet := time.Now()
	echoRoundTrip(t, quiet, "hello")

	ended := make(chan error, 1)
	go func() { // quietReader: returns when the hub ends the stream
		_ = quiet.SetReadDeadline(time.Now().Add(20 * time.Second))
		var b [1]byte
		_, err := quiet.Read(b[:])
		ended <- err
	}()
	var endErr error
wait:
	for {
		select {
		case endErr = <-ended:
			break wait
		default:
		}
		echoRoundTrip(t, busy, "still here")
		time.Sleep(50 * time.Millisecond) // the busy client's pace, not synchronisation
	}
	if errors.Is(endErr, os.ErrDeadlineExceeded) {
		t.Fatal("the idle stream was not closed within 20s")
	}
	if endErr == nil {
		t.Fatal("the idle stream received bytes")
	}
	if since := time.Since(lastQuiet); since < idle {
		t.Fatalf("the idle stream was closed after %v, before the %v timeout", since, idle)
	}
	// The busy stream is older than the timeout and still works.
	echoRoundTrip(t, busy, "after the idle one ended")
	testenv.WaitFor(t, 10*time.Second, "the agent closed the idle stream's target",
		func() bool { return targetsClosed.Load() == 1 })
	if v := metricValue(t, th, `nowconnect_tcp_rst_total{connector="svc",event="sent"}`); v != 1 {
		t.Fatalf("rst sent = %v, want 1", v)
	}
	if v := metricValue(t, th, `nowconnect_tcp_active_connections{connector="svc"}`); v != 1 {
		t.Fatalf("active connections = %v, want 1 (the busy one)", v)
	}
}
