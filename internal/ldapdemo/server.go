// Package ldapdemo runs a real OpenLDAP slapd on a loopback port, seeded with a fixed demo
// directory, for the tests (through internal/testenv), the CI health gate (`make gate`) and
// development targets:
//
//	s, err := ldapdemo.Start(ctx, ldapdemo.Options{Users: 50})
//	... s.Addr ("127.0.0.1:PORT"), s.URL, s.BaseDN, s.AdminDN, s.AdminPW ...
//	s.Close() // stop slapd and remove its files
//
// The directory (see Server) is seeded over LDAP with github.com/go-ldap/ldap/v3, so only
// the slapd binary is needed (Debian package slapd). slapd runs in the foreground as a
// child in its own process group; on Linux it is killed if this process dies.
package ldapdemo

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/go-ldap/ldap/v3"
)

const (
	// startTimeout bounds the wait for a fresh slapd to answer.
	startTimeout = 15 * time.Second
	// portAttempts is how many free ports Start tries when slapd cannot bind one.
	portAttempts = 5
	// stopGrace is how long slapd gets between SIGTERM and SIGKILL.
	stopGrace = 5 * time.Second
	// outputLimit bounds the slapd output kept for error messages.
	outputLimit = 64 << 10
)

// ErrExitedEarly (wrapped) means slapd exited during start-up, typically because its port
// was taken.
var ErrExitedEarly = errors.New("exited before answering")

// ErrNoSlapd means the slapd binary was not found.
var ErrNoSlapd = errors.New("slapd not installed (Debian package slapd; `make test` installs it)")

// ErrRunning is returned by Restart while slapd runs.
var ErrRunning = errors.New("slapd is already running")

// Options configure Start.
type Options struct {
	// Users is the number of seeded users (uid=user0000..). Default 0.
	Users int
	// Dir holds slapd.conf and the database; it must exist. Default "": a new temporary
	// directory, removed by Close.
	Dir string
	// Port is the loopback port to listen on. Default 0: a free port (up to 5 are tried if
	// slapd cannot bind one).
	Port int
	// Binary is the slapd executable. Default "": /usr/sbin/slapd, else slapd on $PATH.
	Binary string
}

// Server is a running slapd on 127.0.0.1, seeded with:
//
//	dc=example,dc=org                         (dcObject, organization; o: Example)
//	ou=people,dc=example,dc=org
//	ou=groups,dc=example,dc=org
//	uid=userNNNN,ou=people,dc=example,dc=org  NNNN = 0000..Users-1 (%04d), inetOrgPerson:
//	    uid, cn "User NNNN", sn "SurnameNNNN", mail userNNNN@example.org,
//	    userPassword "passwordNNNN" (clear text, so simple binds work),
//	    description: DescriptionLen bytes of deterministic ASCII text
//	cn=groupGG,ou=groups,dc=example,dc=org    GG = 00..09, groupOfNames; members: the
//	    users with index%10 == GG (the admin DN if there is none, as member is required)
//
// The admin (rootdn) has no size limit; the global size limit is lifted too, so anonymous
// searches return every entry. Its methods are safe for concurrent use.
type Server struct {
	// set by Start
	Addr    string // "127.0.0.1:PORT"
	URL     string // "ldap://127.0.0.1:PORT"
	BaseDN  string // BaseDN
	AdminDN string // AdminDN
	AdminPW string // AdminPW
	Users   int    // number of seeded users
	Port    int    // PORT

	bin    string
	dir    string
	conf   string
	ownDir bool // dir was created by Start: Close removes it

	mu   sync.Mutex // guards proc
	proc *process   // nil before the first start
}

// Start starts a seeded slapd (see Server) and returns once it answers LDAP and holds the
// whole directory. ctx bounds the start-up only; the server runs until Stop or Close.
func Start(ctx context.Context, o Options) (*Server, error) {
	if o.Users < 0 {
		return nil, fmt.Errorf("ldapdemo: negative user count %d", o.Users)
	}
	bin, err := findSlapd(o.Binary)
	if err != nil {
		return nil, err
	}
	s := &Server{BaseDN: BaseDN, AdminDN: AdminDN, AdminPW: AdminPW, Users: o.Users, bin: bin, dir: o.Dir}
	if s.dir == "" {
		if s.dir, err = os.MkdirTemp("", "ldapdemo-*"); err != nil {
			return nil, fmt.Errorf("ldapdemo: %w", err)
		}
		s.ownDir = true
	}
	fail := func(err error) (*Server, error) {
		s.Close()
		return nil, err
	}
	dataDir := filepath.Join(s.dir, "data")
	if err := os.Mkdir(dataDir, 0o700); err != nil {
		return fail(fmt.Errorf("ldapdemo: %w", err))
	}
	s.conf = filepath.Join(s.dir, "slapd.conf")
	if err := os.WriteFile(s.conf, []byte(slapdConf(s.dir, dataDir)), 0o600); err != nil {
		return fail(fmt.Errorf("ldapdemo: %w", err))
	}

	if o.Port != 0 {
		err = s.startOn(ctx, o.Port)
	} else {
		for attempt := 0; attempt < portAttempts; attempt++ {
			var port int
			if port, err = freePort(); err != nil {
				return fail(fmt.Errorf("ldapdemo: free port: %w", err))
			}
			if err = s.startOn(ctx, port); err == nil || !errors.Is(err, ErrExitedEarly) {
				break
			}
		}
		if errors.Is(err, ErrExitedEarly) {
			err = fmt.Errorf("did not start on any of %d ports: %w", portAttempts, err)
		}
	}
	if err != nil {
		return fail(fmt.Errorf("ldapdemo: slapd: %w", err))
	}
	if err := seed(ctx, s.URL, o.Users); err != nil {
		return fail(fmt.Errorf("ldapdemo: seeding slapd on %s: %w", s.Addr, err))
	}
	return s, nil
}

// Stop stops slapd (SIGTERM to its process group, SIGKILL after 5s) and reaps it; the
// database stays, so Restart brings the same directory back. It is a no-op when slapd is
// not running.
func (s *Server) Stop() {
	s.mu.Lock()
	p := s.proc
	s.mu.Unlock()
	if p != nil {
		p.stop(stopGrace)
	}
}

// Close stops slapd and removes its directory if Start created it.
func (s *Server) Close() {
	s.Stop()
	if s.ownDir {
		_ = os.RemoveAll(s.dir)
	}
}

// Restart starts a stopped slapd again on the same port with the same data and waits for
// it to answer. It returns ErrRunning while slapd runs, and an error wrapping
// ErrExitedEarly if the port has been taken meanwhile.
func (s *Server) Restart(ctx context.Context) error {
	if s.Running() {
		return fmt.Errorf("ldapdemo: %s: %w", s.Addr, ErrRunning)
	}
	return s.startOn(ctx, s.Port)
}

// Running reports whether slapd is running.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.proc != nil && !s.proc.exited()
}

// Output returns the last 64 KiB slapd wrote to stdout and stderr (it runs with -d 0, so
// usually nothing).
func (s *Server) Output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return ""
	}
	return s.proc.out.String()
}

// startOn runs slapd on port and waits for it to answer an LDAP search. An error wrapping
// ErrExitedEarly means slapd died during start-up, typically because the port was taken.
func (s *Server) startOn(ctx context.Context, port int) error {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	url := "ldap://" + addr
	// -d 0 keeps slapd in the foreground, attached to us, with no debug output. (With -d 0
	// slapd prints nothing even when it fails to bind; it just exits with status 1.)
	p, err := spawn(s.bin, "-f", s.conf, "-h", url+"/", "-d", "0")
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.proc = p
	s.mu.Unlock()

	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if p.exited() {
			return fmt.Errorf("slapd on %s %w (%v); output: %q", addr, ErrExitedEarly, p.err, p.out.String())
		}
		if answers(ctx, url) {
			break
		}
		select {
		case <-ctx.Done():
			p.stop(stopGrace)
			return fmt.Errorf("slapd on %s not answering: %w; output: %q", addr, ctx.Err(), p.out.String())
		case <-tick.C:
		}
	}
	s.Port, s.Addr, s.URL = port, addr, url
	return nil
}

// answers reports whether slapd answers an anonymous base search of the suffix. Before
// seeding the base entry does not exist, so noSuchObject (32) counts as an answer.
func answers(ctx context.Context, url string) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c, err := dial(ctx, url)
	if err != nil {
		return false
	}
	defer c.Close()
	_, err = c.Search(ldap.NewSearchRequest(BaseDN, ldap.ScopeBaseObject, ldap.NeverDerefAliases, 0, 0, false, "(objectClass=*)", []string{"1.1"}, nil))
	return err == nil || ldap.IsErrorWithCode(err, ldap.LDAPResultNoSuchObject)
}

// seed adds the demo directory as the admin.
func seed(ctx context.Context, url string, users int) error {
	c, err := dial(ctx, url)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Bind(AdminDN, AdminPW); err != nil {
		return fmt.Errorf("bind %s: %w", AdminDN, err)
	}
	for _, r := range seedEntries(users) {
		if err := c.Add(r); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("add %s: %w", r.DN, err)
		}
	}
	return nil
}

// dial connects an LDAP client whose operations end when ctx does.
func dial(ctx context.Context, url string) (*ldap.Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", url[len("ldap://"):])
	if err != nil {
		return nil, err
	}
	c := ldap.NewConn(nc, false)
	c.Start()
	if dl, ok := ctx.Deadline(); ok {
		c.SetTimeout(time.Until(dl))
	}
	// go-ldap operations take no context: closing the connection ends them. (After a
	// normal Close this second Close is a no-op.)
	context.AfterFunc(ctx, func() { c.Close() })
	return c, nil
}

func findSlapd(bin string) (string, error) {
	if bin != "" {
		return bin, nil
	}
	if fi, err := os.Stat("/usr/sbin/slapd"); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
		return "/usr/sbin/slapd", nil
	}
	p, err := exec.LookPath("slapd")
	if err != nil {
		return "", ErrNoSlapd
	}
	return p, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	return port, l.Close()
}
