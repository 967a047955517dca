package testenv

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	redisStartTimeout = 10 * time.Second
	redisPortAttempts = 5
)

// Redis is a real redis-server on a random loopback port, with no persistence and its
// working directory in t.TempDir(). Stop and Start restart it on the same port (its data
// is lost: nothing is saved).
type Redis struct {
	Addr string // "127.0.0.1:PORT"
	URL  string // "redis://127.0.0.1:PORT/0"

	bin  string
	dir  string
	port int
	proc *Process
}

// StartRedis starts redis-server --port P --bind 127.0.0.1 --save "" --appendonly no
// --dir <tempdir> on a random free port (up to 5 ports are tried), waits up to 10s for
// PING to answer PONG, and registers a cleanup that stops and reaps it. It fails the test
// if redis-server is missing.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	r := &Redis{bin: lookBinary(t, "redis-server", "/usr/bin/redis-server"), dir: t.TempDir()}
	t.Cleanup(func() { r.stop(t) })
	var lastErr error
	for attempt := 0; attempt < redisPortAttempts; attempt++ {
		port, err := freePort()
		if err != nil {
			t.Fatalf("testenv: free port: %v", err)
		}
		if lastErr = r.startOn(port); lastErr == nil {
			return r
		}
		if !errors.Is(lastErr, errExitedEarly) {
			break
		}
	}
	t.Fatalf("testenv: redis-server did not start: %v", lastErr)
	return nil
}

// Stop stops redis-server (SIGTERM, then SIGKILL after 5s) and reaps it. It is a no-op if
// it is not running.
func (r *Redis) Stop(t testing.TB) {
	t.Helper()
	r.stop(t)
}

// Start restarts a stopped redis-server on the same port, and waits for PONG. It fails the
// test if it is running, if the port has been taken meanwhile, or after 10s.
func (r *Redis) Start(t testing.TB) {
	t.Helper()
	if r.proc != nil && !r.proc.Exited() {
		t.Fatalf("testenv: redis-server on %s is already running", r.Addr)
	}
	if err := r.startOn(r.port); err != nil {
		t.Fatalf("testenv: restarting redis-server on %s: %v", r.Addr, err)
	}
}

// Ping sends PING over a fresh RESP connection and returns nil on +PONG.
func (r *Redis) Ping() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	return redisPing(ctx, r.Addr)
}

func (r *Redis) stop(t testing.TB) {
	if r.proc == nil {
		return
	}
	r.proc.stop(stopGrace)
	if t.Failed() {
		if out := r.proc.Output(); out != "" {
			t.Logf("testenv: redis-server output:\n%s", tail(out, 16<<10))
		}
	}
}

func (r *Redis) startOn(port int) error {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	args := []string{
		"--port", strconv.Itoa(port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--dir", r.dir,
		"--daemonize", "no",
	}
	p, err := spawn(r.bin, args, nil, r.dir)
	if err != nil {
		return err
	}
	r.proc = p
	ready := poll(redisStartTimeout, func() bool {
		ctx, cancel := p.untilExit(time.Second)
		defer cancel()
		return p.Exited() || redisPing(ctx, addr) == nil
	})
	if p.Exited() {
		code, werr := p.Wait(0)
		return fmt.Errorf("redis-server on %s %w (exit %d, %v); output: %q", addr, errExitedEarly, code, werr, tail(p.Output(), 4<<10))
	}
	if !ready {
		p.stop(stopGrace)
		return fmt.Errorf("redis-server on %s did not answer PONG within %v; output: %q", addr, redisStartTimeout, tail(p.Output(), 4<<10))
	}
	r.port = port
	r.Addr = addr
	r.URL = "redis://" + addr + "/0"
	return nil
}

// redisPing speaks raw RESP: *1 $4 PING, expecting +PONG (-LOADING etc. is an error).
// Cancelling ctx aborts the exchange.
func redisPing(ctx context.Context, addr string) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		if err := c.SetDeadline(dl); err != nil {
			return err
		}
	}
	if _, err := c.Write([]byte("*1\r\n$4\r\nPING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line = strings.TrimRight(line, "\r\n"); line != "+PONG" {
		return fmt.Errorf("redis PING on %s answered %q", addr, line)
	}
	return nil
}
