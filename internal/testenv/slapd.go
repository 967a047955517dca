package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/internal/ldapdemo"
)

// Fixed identity of the seeded directory (see internal/ldapdemo, which runs it).
const (
	BaseDN  = ldapdemo.BaseDN
	AdminDN = ldapdemo.AdminDN
	AdminPW = ldapdemo.AdminPW
	// Groups is the number of seeded groupOfNames entries cn=group00..group09.
	Groups = ldapdemo.Groups
	// DescriptionLen is the length in bytes of every seeded user's description value.
	DescriptionLen = ldapdemo.DescriptionLen
)

const (
	// ldapCommandTimeout bounds one ldapsearch run, and a slapd start with its seeding.
	ldapCommandTimeout = 2 * time.Minute
)

// Slapd is a real OpenLDAP server on a random loopback port, seeded with a fixed directory
// (internal/ldapdemo runs it):
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
// searches return every entry.
type Slapd struct {
	Addr    string // "127.0.0.1:PORT"
	URL     string // "ldap://127.0.0.1:PORT"
	BaseDN  string // "dc=example,dc=org"
	AdminDN string // "cn=admin,dc=example,dc=org"
	AdminPW string // "admin"
	Users   int    // number of seeded users
	// LDAPSURL is "ldaps://127.0.0.1:PORT" when the server has a certificate
	// (StartSlapdTLS), else empty.
	LDAPSURL string

	certFile, keyFile string // StartSlapdTLS's certificate
	ldapsPort         int

	dir  string // slapd.conf and the database, kept across Stop/Start
	port int
	srv  *ldapdemo.Server
	out  *SyncBuffer // slapd's output, logged when the test fails
}

// UserDN returns the DN of seeded user i.
func (s *Slapd) UserDN(i int) string { return UserDN(i) }

// UserDN returns the DN of seeded user i: uid=userNNNN,ou=people,dc=example,dc=org.
func UserDN(i int) string { return ldapdemo.UserDN(i) }

// UserPassword returns the clear-text password of seeded user i: "passwordNNNN".
func UserPassword(i int) string { return ldapdemo.UserPassword(i) }

// UserDescription returns the description value of seeded user i (DescriptionLen bytes).
func UserDescription(i int) string { return ldapdemo.UserDescription(i) }

// StartSlapd starts a seeded slapd (see Slapd) with its configuration and mdb database in
// t.TempDir(), listening on ldap://127.0.0.1:PORT/ with a random free port (up to 5 ports
// are tried if slapd cannot bind). It waits up to 15s for an anonymous ldapsearch of the
// base to be answered, seeds the directory with ldapadd, and registers a cleanup that
// stops slapd and reaps it. It fails the test if slapd, ldapsearch or ldapadd is missing.
func StartSlapd(t testing.TB, users int) *Slapd {
	t.Helper()
	s := newSlapd(t, users, "", "")
	if err := s.startOn(0); err != nil {
		t.Fatalf("testenv: slapd: %v", err)
	}
	return s
}

// StartSlapdTLS is StartSlapd with a server certificate (PEM files): the
// ldap:// listener offers StartTLS, and LDAPSURL serves TLS from the first byte.
func StartSlapdTLS(t testing.TB, users int, certFile, keyFile string) *Slapd {
	t.Helper()
	s := newSlapd(t, users, certFile, keyFile)
	var err error
	for range 3 { // the ldaps port is chosen before slapd binds it: another process may take it first
		s.ldapsPort = FreePort(t)
		if err = s.startOn(0); err == nil {
			s.LDAPSURL = fmt.Sprintf("ldaps://127.0.0.1:%d", s.ldapsPort)
			return s
		}
		if !errors.Is(err, errExitedEarly) {
			break
		}
	}
	t.Fatalf("testenv: slapd with TLS: %v", err)
	return nil
}

// newSlapd checks the tools and returns a Slapd in t.TempDir(), not yet
// started, stopped at the test's end.
func newSlapd(t testing.TB, users int, certFile, keyFile string) *Slapd {
	t.Helper()
	if users < 0 {
		t.Fatalf("testenv: negative slapd user count %d", users)
	}
	lookBinary(t, "slapd", "/usr/sbin/slapd")
	lookBinary(t, "ldapsearch", "/usr/bin/ldapsearch")
	lookBinary(t, "ldapadd", "/usr/bin/ldapadd")
	s := &Slapd{BaseDN: BaseDN, AdminDN: AdminDN, AdminPW: AdminPW, Users: users, dir: t.TempDir(), out: &SyncBuffer{},
		certFile: certFile, keyFile: keyFile}
	t.Cleanup(func() { s.stop(t) })
	return s
}

// Stop stops slapd (SIGTERM, then SIGKILL after 5s) and reaps it; the database stays.
// It is a no-op if slapd is not running.
func (s *Slapd) Stop(t testing.TB) {
	t.Helper()
	s.stop(t)
}

// Start restarts a stopped slapd on the same port with the same data. It fails the test
// if slapd is running, if the port has been taken meanwhile, or if slapd does not answer
// within 15s.
func (s *Slapd) Start(t testing.TB) {
	t.Helper()
	if s.srv != nil {
		select {
		case <-s.srv.Done():
		default:
			t.Fatalf("testenv: slapd on %s is already running", s.Addr)
		}
	}
	if err := s.startOn(s.port); err != nil {
		t.Fatalf("testenv: restarting slapd on %s: %v", s.Addr, err)
	}
}

func (s *Slapd) stop(t testing.TB) {
	if s.srv == nil {
		return
	}
	_ = s.srv.Stop() // the directory is the test's: Stop keeps it
	if t.Failed() {
		if out := s.out.String(); out != "" {
			t.Logf("testenv: slapd output:\n%s", tail(out, 16<<10))
		}
	}
}

var errExitedEarly = errors.New("exited before answering")

// startOn runs slapd on port (0: a free one) with the test's directory, seeding it on the
// first start. errExitedEarly (wrapped) means slapd died during start-up, typically
// because the port was taken.
func (s *Slapd) startOn(port int) error {
	ctx, cancel := context.WithTimeout(context.Background(), ldapCommandTimeout)
	defer cancel()
	o := ldapdemo.Options{Users: s.Users, Dir: s.dir, Port: port, Output: s.out, TLSCertFile: s.certFile, TLSKeyFile: s.keyFile}
	if s.ldapsPort != 0 {
		o.ExtraURLs = []string{fmt.Sprintf("ldaps://127.0.0.1:%d/", s.ldapsPort)}
	}
	srv, err := ldapdemo.Start(ctx, o)
	if err != nil {
		if errors.Is(err, ldapdemo.ErrExitedEarly) {
			return fmt.Errorf("%w: %w", errExitedEarly, err)
		}
		return err
	}
	_, p, _ := net.SplitHostPort(srv.Addr())
	s.port, _ = strconv.Atoi(p)
	s.srv, s.Addr, s.URL = srv, srv.Addr(), srv.URL()
	return nil
}

// LDAPSearch runs the real client,
//
//	ldapsearch -x -LLL -o ldif-wrap=no -H ldap://addr -b base -D AdminDN -w AdminPW filter attrs...
//
// against addr ("host:port", e.g. a gateway listener in front of a Slapd, or a full
// ldap:// URL) and returns its stdout. A non-zero exit fails the test with stderr.
func LDAPSearch(t testing.TB, addr, base, filter string, attrs ...string) string {
	t.Helper()
	lookBinary(t, "ldapsearch", "/usr/bin/ldapsearch")
	ctx, cancel := context.WithTimeout(context.Background(), ldapCommandTimeout)
	defer cancel()
	out, err := RunLDAPSearch(ctx, addr, AdminDN, AdminPW, base, filter, attrs...)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return out
}

// RunLDAPSearch is LDAPSearch without the test: safe to call from any goroutine. An empty
// bindDN searches anonymously. It returns stdout, or an error carrying the exit status and
// stderr; cancelling ctx kills ldapsearch.
func RunLDAPSearch(ctx context.Context, addr, bindDN, bindPW, base, filter string, attrs ...string) (string, error) {
	args := []string{"-x", "-LLL", "-o", "ldif-wrap=no", "-H", ldapURL(addr), "-b", base}
	if bindDN != "" {
		args = append(args, "-D", bindDN, "-w", bindPW)
	}
	args = append(args, filter)
	args = append(args, attrs...)
	code, stdout, stderr := runLDAPTool(ctx, "ldapsearch", args...)
	if code != 0 {
		return stdout, fmt.Errorf("ldapsearch -H %s -b %q %q: exit %d: %s", ldapURL(addr), base, filter, code, strings.TrimSpace(stderr))
	}
	return stdout, nil
}

// runLDAPTool runs an OpenLDAP client tool and returns its exit code (-1 if it could not
// run or was killed), stdout and stderr.
func runLDAPTool(ctx context.Context, name string, args ...string) (code int, stdout, stderr string) {
	path, err := findBinary(name, "/usr/bin/"+name)
	if err != nil {
		return -1, "", fmt.Sprintf("%s not installed: %s", name, installHint)
	}
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = ldapEnv()
	var out, errb SyncBuffer
	cmd.Stdout = &out
	cmd.Stderr = &errb
	cmd.WaitDelay = 2 * time.Second
	err = cmd.Run()
	code = 0
	if err != nil {
		code = -1
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		}
		if code == -1 {
			errb.Write([]byte("\n" + err.Error()))
		}
	}
	return code, out.String(), errb.String()
}

// ldapEnv keeps the client tools from reading /etc/ldap/ldap.conf and ~/.ldaprc, whose
// BASE/URI/TLS settings would otherwise leak into the tests.
func ldapEnv() []string { return append(os.Environ(), "LDAPNOINIT=1") }

func ldapURL(addr string) string {
	if strings.Contains(addr, "://") {
		return addr
	}
	return "ldap://" + addr
}
