package testenv

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/internal/resp"
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

	bin    string
	dir    string
	port   int
	proc   *Process
	paused bool // SIGSTOPped by Pause and not yet resumed
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

// Pid returns the process id of the running redis-server (it changes on Start).
func (r *Redis) Pid() int { return r.proc.Pid() }

// Pause sends SIGSTOP: redis-server keeps its port and the kernel still accepts
// connections into the backlog, but nothing is read or answered (a hung server). Cleanup
// and Stop continue a paused server before stopping it.
func (r *Redis) Pause(t testing.TB) {
	t.Helper()
	if err := r.proc.Signal(syscall.SIGSTOP); err != nil {
		t.Fatalf("testenv: SIGSTOP redis-server on %s: %v", r.Addr, err)
	}
	r.paused = true
}

// Resume sends SIGCONT to a paused redis-server.
func (r *Redis) Resume(t testing.TB) {
	t.Helper()
	if err := r.proc.Signal(syscall.SIGCONT); err != nil {
		t.Fatalf("testenv: SIGCONT redis-server on %s: %v", r.Addr, err)
	}
	r.paused = false
}

// FlushAll runs FLUSHALL: every key of every database is gone, as after a restart
// without persistence.
func (r *Redis) FlushAll(t testing.TB) {
	t.Helper()
	if got := r.Do(t, "FLUSHALL"); got != "OK" {
		t.Fatalf("testenv: FLUSHALL on %s answered %v", r.Addr, got)
	}
}

// Do sends one command over a fresh RESP2 connection (5s deadline) and returns the
// reply: string (simple or bulk), int64, nil (null bulk or array), or []any (in which an
// error reply, as in an EXEC answer, is a resp.ErrorReply). An error reply or a failed
// exchange fails the test.
//
//	r.Do(t, "PTTL", "some-key")   // int64(-1): no TTL
//	r.Do(t, "INFO", "clients")    // "# Clients\r\nconnected_clients:1\r\n…"
func (r *Redis) Do(t testing.TB, args ...string) any {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	v, err := redisDo(ctx, r.Addr, args...)
	if err != nil {
		t.Fatalf("testenv: redis %s on %s: %v", strings.Join(args, " "), r.Addr, err)
	}
	return v
}

func (r *Redis) stop(t testing.TB) {
	if r.proc == nil {
		return
	}
	if r.paused {
		// A stopped process keeps SIGTERM pending: continue it so it can exit cleanly.
		_ = r.proc.Signal(syscall.SIGCONT)
		r.paused = false
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
	v, err := redisDo(ctx, addr, "PING")
	if err != nil {
		return err
	}
	if v != "PONG" {
		return fmt.Errorf("redis PING on %s answered %v", addr, v)
	}
	return nil
}

// respLimits bound a reply Do accepts (a test never needs more).
var respLimits = resp.Limits{MaxBulk: 64 << 20, MaxArray: 1 << 20, MaxDepth: 16}

// redisDo sends one command as a RESP array of bulk strings over a fresh connection and
// parses the reply; an error reply is returned as an error. Cancelling ctx aborts it.
func redisDo(ctx context.Context, addr string, args ...string) (any, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		if err := c.SetDeadline(dl); err != nil {
			return nil, err
		}
	}
	if _, err := c.Write(resp.AppendCommand(nil, args...)); err != nil {
		return nil, err
	}
	v, err := resp.Read(bufio.NewReader(c), respLimits)
	if e, ok := v.(resp.ErrorReply); ok {
		return nil, fmt.Errorf("error reply: %s", e)
	}
	return v, err
}
