package bench

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Targets are the built-in servers the gateway (and the direct path) talk
// to. They run in the runner process on 127.0.0.1:0, goroutine per
// connection with one buffer each, allocated once.
//
//	sink    reads and counts everything (upload throughput)
//	source  writes as fast as the client reads (download throughput, slow consumer)
//	echo    echoes (readiness checks)
//	once    echoes one byte and closes (connection setup: the server closes
//	        first, so TIME_WAIT lands on the server side and a fast setup
//	        loop does not exhaust the client's ephemeral ports)
//	rr      reads a fixed-size request, answers a fixed-size response
//
// Idle memory uses a separate echo server in a child process (see
// ChildMain), so that the runner's descriptors are only the client side.
type Targets struct {
	Sink, Source, Echo, Once, RR string // addresses

	SinkBytes   atomic.Int64 // bytes read by sink, all connections
	SourceBytes atomic.Int64 // bytes written by source, all connections

	reqSize, respSize int
	resp              []byte
	srcBuf            []byte
	lns               []net.Listener
	mu                sync.Mutex
	conns             map[net.Conn]struct{}
	wg                sync.WaitGroup
	closed            atomic.Bool
}

const ioBuf = 256 << 10

// StartTargets starts the targets.
func StartTargets(reqSize, respSize int) (*Targets, error) {
	t := &Targets{reqSize: reqSize, respSize: respSize, conns: map[net.Conn]struct{}{}}
	t.resp = make([]byte, respSize)
	for i := range t.resp {
		t.resp[i] = byte('a' + i%26)
	}
	t.srcBuf = make([]byte, ioBuf)
	for i := range t.srcBuf {
		t.srcBuf[i] = byte(i)
	}
	for _, s := range []struct {
		addr *string
		fn   func(net.Conn)
	}{{&t.Sink, t.sink}, {&t.Source, t.source}, {&t.Echo, t.echo}, {&t.Once, t.once}, {&t.RR, t.rr}} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Close()
			return nil, err
		}
		t.lns = append(t.lns, ln)
		*s.addr = ln.Addr().String()
		t.wg.Add(1)
		go t.serve(ln, s.fn)
	}
	return t, nil
}

func (t *Targets) serve(ln net.Listener, fn func(net.Conn)) {
	defer t.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			if t.closed.Load() {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			time.Sleep(5 * time.Millisecond) // EMFILE and friends: back off
			continue
		}
		t.mu.Lock()
		if t.closed.Load() {
			t.mu.Unlock()
			_ = c.Close()
			return
		}
		t.conns[c] = struct{}{}
		t.wg.Add(1)
		t.mu.Unlock()
		go func() {
			defer t.wg.Done()
			fn(c)
			t.mu.Lock()
			delete(t.conns, c)
			t.mu.Unlock()
			_ = c.Close()
		}()
	}
}

func (t *Targets) sink(c net.Conn) {
	buf := make([]byte, ioBuf)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			t.SinkBytes.Add(int64(n))
		}
		if err != nil {
			return
		}
	}
}

func (t *Targets) source(c net.Conn) {
	go func() { // notice the client's close even while writes block
		_, _ = io.Copy(io.Discard, c)
		_ = c.Close()
	}()
	for {
		n, err := c.Write(t.srcBuf)
		t.SourceBytes.Add(int64(n))
		if err != nil {
			return
		}
	}
}

func (t *Targets) echo(c net.Conn) {
	buf := make([]byte, 32<<10)
	_, _ = io.CopyBuffer(struct{ io.Writer }{c}, struct{ io.Reader }{c}, buf)
}

func (t *Targets) rr(c net.Conn) {
	req := make([]byte, t.reqSize)
	for {
		if _, err := io.ReadFull(c, req); err != nil {
			return
		}
		if _, err := c.Write(t.resp); err != nil {
			return
		}
	}
}

func (t *Targets) once(c net.Conn) {
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return
	}
	_, _ = c.Write(b[:])
}

// Close stops the targets and closes every connection.
func (t *Targets) Close() {
	t.mu.Lock()
	t.closed.Store(true)
	for c := range t.conns {
		_ = c.Close()
	}
	t.mu.Unlock()
	for _, ln := range t.lns {
		_ = ln.Close()
	}
	t.wg.Wait()
}

// ---------------------------------------------------------------------------
// Child process: the echo target of the idle-memory scenario.

// childEnv names the role of a re-executed runner (or test binary).
const childEnv = "NC_BENCH_CHILD"

// ChildMain runs the child role when this process was started as one (the
// environment variable NC_BENCH_CHILD is set) and then exits; otherwise it
// returns at once. Call it first thing in main (and in TestMain).
func ChildMain() {
	role := os.Getenv(childEnv)
	if role == "" {
		return
	}
	if role != "echo" {
		fmt.Fprintf(os.Stderr, "nc-bench child: unknown role %q\n", role)
		os.Exit(2)
	}
	raiseNoFile()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "nc-bench child:", err)
		os.Exit(1)
	}
	fmt.Printf("addr=%s\n", ln.Addr())
	go func() { // the parent holds our stdin: EOF means it is gone
		_, _ = io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			time.Sleep(5 * time.Millisecond)
			continue
		}
		go func() {
			defer c.Close()
			var b [64]byte // idle connections: keep the per-connection cost small
			for {
				n, err := c.Read(b[:])
				if n > 0 {
					if _, err := c.Write(b[:n]); err != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
	}
}

// childProc is a running child target.
type childProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	Addr  string
	Pid   int
}

// startChild re-executes exe in the given role and waits for its address.
func startChild(exe, role string) (*childProc, error) {
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), childEnv+"="+role)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &childProc{cmd: cmd, stdin: stdin, Pid: cmd.Process.Pid}
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "addr="); ok {
				select {
				case line <- a:
				default:
				}
			}
		}
	}()
	select {
	case p.Addr = <-line:
		return p, nil
	case <-time.After(10 * time.Second):
		p.Close()
		return nil, fmt.Errorf("child %s: no address within 10s", role)
	}
}

// Close stops the child.
func (p *childProc) Close() {
	_ = p.stdin.Close()
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		_ = syscall.Kill(-p.Pid, syscall.SIGKILL)
		<-done
	}
}

// raiseNoFile raises RLIMIT_NOFILE to the hard limit. Setting it
// explicitly also makes children (hub, agent) inherit the raised limit.
func raiseNoFile() uint64 {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return 0
	}
	r.Cur = r.Max
	_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &r)
	_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r)
	return r.Cur
}
