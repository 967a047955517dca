package ldapdemo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

var (
	// ErrNotInstalled: slapd, ldapsearch or ldapadd is missing (the error names which).
	ErrNotInstalled = errors.New("ldapdemo: needs slapd and ldap-utils (apt-get install slapd ldap-utils; `make run` and `make test` install them)")
	// ErrExitedEarly: slapd died before it answered, typically because its port was taken.
	ErrExitedEarly = errors.New("ldapdemo: slapd exited before answering")
)

const (
	startTimeout = 15 * time.Second // slapd up and answering a search
	portAttempts = 5                // free ports tried when Options.Port is 0
	stopGrace    = 5 * time.Second  // between SIGTERM and SIGKILL
	probeTimeout = 5 * time.Second  // one readiness ldapsearch
)

// Options configures Start. The zero value is a directory with no users on a free port in
// a temporary directory.
type Options struct {
	// Users is the number of seeded users uid=user0000.. (see the package doc).
	Users int
	// Dir holds slapd.conf and the mdb database. Empty: a new temporary directory, which
	// Stop removes. A Dir whose database is already seeded (an earlier Start) is served as
	// it is, not seeded again: Stop and Start on the same Dir and Port is a restart.
	Dir string
	// Port is the 127.0.0.1 port to listen on. 0: a free one (up to 5 are tried if slapd
	// loses the race for it); a fixed port is tried once.
	Port int
	// Output receives slapd's stdout and stderr. Nil discards them.
	Output io.Writer
	// ExtraURLs are more listener URLs for slapd's -h, after
	// ldap://127.0.0.1:Port/ (which Addr and URL name), e.g.
	// "pldap://127.0.0.1:PORT/": a listener that expects a PROXY protocol
	// header in front of every connection (OpenLDAP 2.5 or later). Their
	// ports are the caller's to choose. Default none.
	ExtraURLs []string
	// TLSCertFile and TLSKeyFile (PEM; both or neither) give slapd a server
	// certificate: the ldap:// listener then offers StartTLS, and an
	// "ldaps://127.0.0.1:PORT/" in ExtraURLs serves TLS from the first byte.
	TLSCertFile, TLSKeyFile string
	// Debug is slapd's -d level. Default "0": nothing is printed. "stats"
	// prints a line per connection (with the client's address) and per
	// operation to Output.
	Debug string
}

// Server is a running slapd. Its methods are safe for concurrent use.
type Server struct {
	// set by Start
	addr string
	dir  string
	tmp  bool // dir was made by Start; Stop removes it
	cmd  *exec.Cmd
	done chan struct{} // closed once slapd has exited and been reaped (by slapdWaitLoop)

	stopOnce sync.Once
	stopErr  error
}

// Start starts slapd on 127.0.0.1, waits (up to 15s, or until ctx ends) until it answers
// an anonymous search, and seeds the directory unless its base entry exists already.
// ctx bounds the start only: the server runs until Stop. slapd is in its own process
// group (a Ctrl-C meant for the caller does not reach it; the caller stops it, after
// whatever uses it) and, on Linux, is killed if the calling process dies.
func Start(ctx context.Context, o Options) (*Server, error) {
	if o.Users < 0 {
		return nil, fmt.Errorf("ldapdemo: negative user count %d", o.Users)
	}
	if o.Port < 0 || o.Port > 65535 {
		return nil, fmt.Errorf("ldapdemo: port %d out of range 0..65535", o.Port)
	}
	var missing []string
	bin, err := findBinary("slapd", "/usr/sbin/slapd")
	if err != nil {
		missing = append(missing, "slapd")
	}
	for _, tool := range []string{"ldapsearch", "ldapadd"} {
		if _, err := findBinary(tool, "/usr/bin/"+tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%w (missing: %s)", ErrNotInstalled, strings.Join(missing, ", "))
	}

	s := &Server{dir: o.Dir}
	if s.dir == "" {
		if s.dir, err = os.MkdirTemp("", "nowconnect-ldapdemo-"); err != nil {
			return nil, fmt.Errorf("ldapdemo: %w", err)
		}
		s.tmp = true
	}
	dataDir := filepath.Join(s.dir, "data")
	conf := filepath.Join(s.dir, "slapd.conf")
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		s.Stop()
		return nil, fmt.Errorf("ldapdemo: %w", err)
	}
	if (o.TLSCertFile == "") != (o.TLSKeyFile == "") {
		s.Stop()
		return nil, fmt.Errorf("ldapdemo: TLSCertFile and TLSKeyFile go together (got %q and %q)", o.TLSCertFile, o.TLSKeyFile)
	}
	if err := os.WriteFile(conf, []byte(slapdConf(s.dir, dataDir, o.TLSCertFile, o.TLSKeyFile)), 0o600); err != nil {
		s.Stop()
		return nil, fmt.Errorf("ldapdemo: %w", err)
	}

	attempts := portAttempts
	if o.Port != 0 {
		attempts = 1
	}
	var seeded bool
	for i := 0; i < attempts; i++ {
		port := o.Port
		if port == 0 {
			if port, err = freePort(); err != nil {
				s.Stop()
				return nil, fmt.Errorf("ldapdemo: free port: %w", err)
			}
		}
		if seeded, err = s.startOn(ctx, bin, conf, port, o); err == nil || !errors.Is(err, ErrExitedEarly) {
			break
		}
	}
	if err != nil {
		s.Stop()
		if attempts > 1 && errors.Is(err, ErrExitedEarly) {
			return nil, fmt.Errorf("ldapdemo: slapd did not start on any of %d ports: %w", attempts, err)
		}
		return nil, err
	}
	if !seeded {
		if err := ldapAdd(ctx, s.URL(), seedLDIF(o.Users)); err != nil {
			s.Stop()
			return nil, fmt.Errorf("ldapdemo: seeding: %w", err)
		}
	}
	return s, nil
}

// Addr returns "127.0.0.1:PORT".
func (s *Server) Addr() string { return s.addr }

// URL returns "ldap://127.0.0.1:PORT".
func (s *Server) URL() string { return "ldap://" + s.addr }

// Done is closed once slapd has exited, stopped or not.
func (s *Server) Done() <-chan struct{} { return s.done }

// Stop stops slapd (SIGTERM to its group, SIGKILL after 5s) and reaps it, then removes
// the directory if Start created it (a caller's Dir and its database stay). It is
// idempotent; the error is that of removing the directory.
func (s *Server) Stop() error {
	s.stopOnce.Do(func() {
		if s.cmd != nil {
			terminate(s.cmd.Process)
			timer := time.NewTimer(stopGrace)
			select {
			case <-s.done:
			case <-timer.C:
			}
			timer.Stop()
			kill(s.cmd.Process) // and anything left in its group
			<-s.done
		}
		if s.tmp {
			s.stopErr = os.RemoveAll(s.dir)
		}
	})
	return s.stopErr
}

// startOn runs slapd on port and waits until it answers. It reports whether the base
// entry exists already. ErrExitedEarly (wrapped) means slapd died during start-up,
// typically because the port was taken: try another one.
func (s *Server) startOn(ctx context.Context, bin, conf string, port int, o Options) (seeded bool, err error) {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	url := "ldap://" + addr
	debug := o.Debug
	if debug == "" {
		debug = "0"
	}
	// -d keeps slapd in the foreground, attached to us; -d 0 prints no debug output. (With
	// -d 0 slapd prints nothing even when it fails to bind; it just exits with status 1.)
	cmd := exec.Command(bin, "-f", conf, "-h", strings.Join(append([]string{url + "/"}, o.ExtraURLs...), " "), "-d", debug)
	cmd.Stdout, cmd.Stderr = o.Output, o.Output
	cmd.SysProcAttr = procAttr()
	cmd.WaitDelay = 2 * time.Second // a grandchild holding the output open cannot block Wait
	if err := cmd.Start(); err != nil {
		return false, fmt.Errorf("ldapdemo: start slapd: %w", err)
	}
	done := make(chan struct{})
	gone, cancelGone := context.WithCancel(context.Background()) // ends when slapd exits
	var waitErr error
	go func() { // slapdWaitLoop: reaps slapd; Stop and the caller wait on done
		waitErr = cmd.Wait()
		cancelGone()
		close(done)
	}()
	s.cmd, s.done = cmd, done

	exited := func() bool {
		select {
		case <-done:
			return true
		default:
			return false
		}
	}
	// Up means: a TCP connect succeeds and an anonymous base search of the suffix gets an
	// LDAP answer. Before seeding the base entry does not exist, so "No such object" (32)
	// counts as answered.
	deadline := time.Now().Add(startTimeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if exited() {
			break
		}
		if code := probe(ctx, gone, addr); code == 0 || code == 32 {
			seeded = code == 0
			break
		}
		if !time.Now().Before(deadline) {
			s.Stop()
			return false, fmt.Errorf("ldapdemo: slapd on %s not answering after %v", addr, startTimeout)
		}
		select {
		case <-ctx.Done():
			s.Stop()
			return false, fmt.Errorf("ldapdemo: starting slapd on %s: %w", addr, ctx.Err())
		case <-tick.C:
		}
	}
	// A probe answered by whoever holds a taken port does not count: slapd exits at once
	// when it cannot bind.
	if exited() {
		s.cmd, s.done = nil, nil
		return false, fmt.Errorf("slapd on %s: %w (%v)", addr, ErrExitedEarly, waitErr)
	}
	s.addr = addr
	return seeded, nil
}

// probe runs one readiness check and returns ldapsearch's exit code (-1: no answer). It
// gives up as soon as gone ends (slapd exited), so it never waits on whoever holds a
// taken port.
func probe(ctx, gone context.Context, addr string) int {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	stop := context.AfterFunc(gone, cancel)
	defer stop()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return -1
	}
	c.Close()
	code, _ := runTool(ctx, nil, "ldapsearch", "-x", "-LLL", "-H", "ldap://"+addr, "-b", BaseDN, "-s", "base", "(objectClass=*)", "1.1")
	return code
}

// ldapAdd feeds ldif to `ldapadd -x` as the admin.
func ldapAdd(ctx context.Context, url, ldif string) error {
	code, out := runTool(ctx, strings.NewReader(ldif), "ldapadd", "-x", "-H", url, "-D", AdminDN, "-w", AdminPW)
	if code != 0 {
		return fmt.Errorf("ldapadd: exit %d: %s", code, tail(strings.TrimSpace(out), 4<<10))
	}
	return nil
}

// runTool runs an OpenLDAP client tool and returns its exit code (-1 if it could not run
// or was killed) and its combined output.
func runTool(ctx context.Context, stdin io.Reader, name string, args ...string) (int, string) {
	path, err := findBinary(name, "/usr/bin/"+name)
	if err != nil {
		return -1, err.Error()
	}
	cmd := exec.CommandContext(ctx, path, args...)
	// LDAPNOINIT keeps /etc/ldap/ldap.conf and ~/.ldaprc (BASE, URI, TLS) out of it.
	cmd.Env = append(os.Environ(), "LDAPNOINIT=1")
	cmd.Stdin = stdin
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() >= 0 {
			return ee.ExitCode(), string(out)
		}
		return -1, string(out) + "\n" + err.Error()
	}
	return 0, string(out)
}

// findBinary finds an executable: the first existing candidate path, else $PATH (a
// non-root PATH often lacks /usr/sbin).
func findBinary(name string, candidates ...string) (string, error) {
	for _, c := range candidates {
		if fi, err := os.Stat(c); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return c, nil
		}
	}
	return exec.LookPath(name)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		return 0, err
	}
	return port, nil
}

// tail returns at most the last n bytes of s.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}
