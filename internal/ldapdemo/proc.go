package ldapdemo

import (
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// process is a child in its own process group whose output is kept in a bounded buffer.
type process struct {
	cmd  *exec.Cmd
	out  *tailBuffer
	done chan struct{} // closed once the child has exited and been reaped
	err  error         // cmd.Wait's result; read only after done is closed
}

// spawn starts name in its own process group. Its waitLoop goroutine is owned by the
// process: it ends when the child exits, which stop guarantees.
func spawn(name string, args ...string) (*process, error) {
	p := &process{out: &tailBuffer{limit: outputLimit}, done: make(chan struct{})}
	cmd := exec.Command(name, args...)
	cmd.Stdout = p.out
	cmd.Stderr = p.out
	cmd.SysProcAttr = procAttr()
	// A grandchild holding the output pipe must not block Wait forever.
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p.cmd = cmd
	go p.waitLoop()
	return p, nil
}

func (p *process) waitLoop() {
	p.err = p.cmd.Wait()
	close(p.done)
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the group, waits up to grace, then SIGKILLs the group; it always
// reaps the child. It is idempotent.
func (p *process) stop(grace time.Duration) {
	if !p.exited() {
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
		t := time.NewTimer(grace)
		select {
		case <-p.done:
		case <-t.C:
		}
		t.Stop()
	}
	// Whatever the leader did, nobody of its group may outlive it (ESRCH is expected).
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// tailBuffer keeps the last limit bytes written to it; safe for concurrent use.
type tailBuffer struct {
	mu    sync.Mutex
	limit int
	buf   []byte
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if over := len(b.buf) - b.limit; over > 0 {
		b.buf = append(b.buf[:0], b.buf[over:]...)
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}
