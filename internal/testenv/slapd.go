package testenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/internal/ldapdemo"
)

// Fixed identity of the seeded directory (see ldapdemo).
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
	// ldapCommandTimeout bounds one ldapsearch run started by the fatal helpers, and the
	// start-up (and seeding) of a slapd.
	ldapCommandTimeout = 2 * time.Minute
)

// Slapd is a real OpenLDAP server on a random loopback port, seeded with a fixed directory
// (ldapdemo.Server documents it):
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

	port int
	srv  *ldapdemo.Server
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
// are tried if slapd cannot bind). It waits up to 15s for slapd to answer, seeds the
// directory, and registers a cleanup that stops slapd and reaps it. It fails the test if
// slapd, ldapsearch or ldapadd is missing.
func StartSlapd(t testing.TB, users int) *Slapd {
	t.Helper()
	if users < 0 {
		t.Fatalf("testenv: StartSlapd: negative user count %d", users)
	}
	bin := lookBinary(t, "slapd", "/usr/sbin/slapd")
	lookBinary(t, "ldapsearch", "/usr/bin/ldapsearch")
	lookBinary(t, "ldapadd", "/usr/bin/ldapadd")

	ctx, cancel := context.WithTimeout(context.Background(), ldapCommandTimeout)
	defer cancel()
	srv, err := ldapdemo.Start(ctx, ldapdemo.Options{Users: users, Dir: t.TempDir(), Binary: bin})
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	s := &Slapd{Addr: srv.Addr, URL: srv.URL, BaseDN: BaseDN, AdminDN: AdminDN, AdminPW: AdminPW, Users: users, port: srv.Port, srv: srv}
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
	if s.srv.Running() {
		t.Fatalf("testenv: slapd on %s is already running", s.Addr)
	}
	if err := s.startOn(s.port); err != nil {
		t.Fatalf("testenv: restarting slapd on %s: %v", s.Addr, err)
	}
}

func (s *Slapd) stop(t testing.TB) {
	s.srv.Stop()
	if t.Failed() {
		if out := s.srv.Output(); out != "" {
			t.Logf("testenv: slapd output:\n%s", tail(out, 16<<10))
		}
	}
}

// errExitedEarly (wrapped) means a server died during start-up, typically because its
// port was taken: try another one.
var errExitedEarly = ldapdemo.ErrExitedEarly

// startOn restarts the stopped slapd on port, which must be its own, and waits for it to
// answer. errExitedEarly (wrapped) means slapd died during start-up.
func (s *Slapd) startOn(port int) error {
	if port != s.port {
		return fmt.Errorf("slapd on %s cannot move to port %d", s.Addr, port)
	}
	ctx, cancel := context.WithTimeout(context.Background(), ldapCommandTimeout)
	defer cancel()
	return s.srv.Restart(ctx)
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
