package e2e

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/internal/testenv"
)

// TestAgentKilled: the agent process dies; its clients are closed within a
// second; a restarted agent reconnects and new connections work.
func TestAgentKilled(t *testing.T) {
	bin := testenv.Binary(t)
	src := startServer(t, func(c net.Conn) {
		_, _ = c.Write([]byte("hello\n"))
		_, _ = io.Copy(io.Discard, c) // hold the stream open
	})
	th := startHub(t, []string{"svc"})
	tokFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokFile, []byte(token(t, "proc-agent", []string{"svc"})+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"premise", "--cloud", "ws://" + th.Control + "/tunnel", "--agent-id", "proc-agent",
		"--token-file", tokFile, "--connector", "svc=" + src.Addr()}
	p := testenv.StartProcess(t, bin, args, nil)
	waitAgents(t, th, 1)
	p.WaitForOutput(t, "connection open", 10*time.Second)

	conns := make([]net.Conn, 4)
	for i := range conns {
		c, err := net.Dial("tcp", th.Addr["svc"])
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		buf := make([]byte, 6)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hello\n" {
			t.Fatalf("stream %d: %q %v", i, buf, err)
		}
		conns[i] = c
	}
	if err := p.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	for i, c := range conns {
		_ = c.SetReadDeadline(killed.Add(5 * time.Second))
		n, err := c.Read(make([]byte, 1))
		if err == nil || n != 0 {
			t.Fatalf("stream %d still open after the agent died", i)
		}
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatalf("stream %d hung after the agent died", i)
		}
	}
	if d := time.Since(killed); d > time.Second {
		t.Fatalf("clients closed %v after the agent died; want < 1s", d)
	}
	waitAgents(t, th, 0)

	p2 := testenv.StartProcess(t, bin, args, nil)
	waitAgents(t, th, 1)
	_ = p2
	c, err := net.Dial("tcp", th.Addr["svc"])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 6)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hello\n" {
		t.Fatalf("after restart: %q %v", buf, err)
	}
}

// TestTwoAgentsShareConnector: streams spread over both agents; when one
// goes, new streams all go to the other.
func TestTwoAgentsShareConnector(t *testing.T) {
	leakCheck(t)
	src := startServer(t, func(c net.Conn) {
		_, _ = c.Write([]byte("hi"))
		_, _ = io.Copy(io.Discard, c)
	})
	th := startHub(t, []string{"svc"})
	a1 := startAgent(t, th, "agent-1", map[string]string{"svc": src.Addr()})
	a2 := startAgent(t, th, "agent-2", map[string]string{"svc": src.Addr()})
	waitAgents(t, th, 2)

	open := func(n int) []net.Conn {
		var cs []net.Conn
		for i := 0; i < n; i++ {
			c, err := net.Dial("tcp", th.Addr["svc"])
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			buf := make([]byte, 2)
			if _, err := io.ReadFull(c, buf); err != nil {
				t.Fatalf("stream %d: %v", i, err)
			}
			cs = append(cs, c)
		}
		return cs
	}
	first := open(10)
	testenv.WaitFor(t, 5*time.Second, "streams spread over both agents", func() bool {
		return a1.ActiveStreams() == 5 && a2.ActiveStreams() == 5
	})
	a1.Stop(t)
	waitAgents(t, th, 1)
	// agent-1's five streams are gone with it; agent-2's stay.
	testenv.WaitFor(t, 5*time.Second, "hub counts agent-2's streams only", func() bool {
		return th.ActiveStreams() == 5 && a2.ActiveStreams() == 5
	})
	_ = first
	open(6)
	testenv.WaitFor(t, 5*time.Second, fmt.Sprintf("new streams on agent-2 (has %d)", a2.ActiveStreams()), func() bool {
		return a2.ActiveStreams() == 5+6
	})
}
