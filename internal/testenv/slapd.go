package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Fixed identity of the seeded directory.
const (
	BaseDN  = "dc=example,dc=org"
	AdminDN = "cn=admin,dc=example,dc=org"
	AdminPW = "admin"
	// Groups is the number of seeded groupOfNames entries cn=group00..group09.
	Groups = 10
	// DescriptionLen is the length in bytes of every seeded user's description value.
	DescriptionLen = 200
)

const (
	slapdStartTimeout = 15 * time.Second
	slapdPortAttempts = 5
	// ldapCommandTimeout bounds one ldapsearch/ldapadd run started by the fatal helpers.
	ldapCommandTimeout = 2 * time.Minute
)

// Slapd is a real OpenLDAP server on a random loopback port, seeded with a fixed directory:
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

	bin  string
	conf string
	port int
	proc *Process
}

// UserDN returns the DN of seeded user i.
func (s *Slapd) UserDN(i int) string { return UserDN(i) }

// UserDN returns the DN of seeded user i: uid=userNNNN,ou=people,dc=example,dc=org.
func UserDN(i int) string { return fmt.Sprintf("uid=%s,ou=people,%s", userUID(i), BaseDN) }

// UserPassword returns the clear-text password of seeded user i: "passwordNNNN".
func UserPassword(i int) string { return fmt.Sprintf("password%04d", i) }

// UserDescription returns the description value of seeded user i (DescriptionLen bytes).
func UserDescription(i int) string {
	const filler = "The quick brown fox jumps over the lazy dog while the gateway relays every byte of this LDAP response unchanged. "
	var b strings.Builder
	fmt.Fprintf(&b, "Seeded directory entry for %s, number %d. ", userUID(i), i)
	for b.Len() < DescriptionLen {
		b.WriteString(filler)
	}
	d := b.String()[:DescriptionLen]
	// No trailing space: ldapsearch would print such a value base64-encoded.
	return d[:DescriptionLen-1] + "."
}

func userUID(i int) string { return fmt.Sprintf("user%04d", i) }

// StartSlapd starts a seeded slapd (see Slapd) with its configuration and mdb database in
// t.TempDir(), listening on ldap://127.0.0.1:PORT/ with a random free port (up to 5 ports
// are tried if slapd cannot bind). It waits up to 15s for an anonymous ldapsearch of the
// base to be answered, seeds the directory with ldapadd, and registers a cleanup that
// stops slapd and reaps it. It fails the test if slapd, ldapsearch or ldapadd is missing.
func StartSlapd(t testing.TB, users int) *Slapd {
	t.Helper()
	if users < 0 {
		t.Fatalf("testenv: StartSlapd: negative user count %d", users)
	}
	bin := lookBinary(t, "slapd", "/usr/sbin/slapd")
	lookBinary(t, "ldapsearch", "/usr/bin/ldapsearch")
	lookBinary(t, "ldapadd", "/usr/bin/ldapadd")

	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	if err := os.Mkdir(dataDir, 0o700); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	conf := filepath.Join(dir, "slapd.conf")
	if err := os.WriteFile(conf, []byte(slapdConf(dir, dataDir)), 0o600); err != nil {
		t.Fatalf("testenv: %v", err)
	}

	s := &Slapd{BaseDN: BaseDN, AdminDN: AdminDN, AdminPW: AdminPW, Users: users, bin: bin, conf: conf}
	t.Cleanup(func() { s.stop(t) })

	var lastErr error
	for attempt := 0; attempt < slapdPortAttempts; attempt++ {
		port, err := freePort()
		if err != nil {
			t.Fatalf("testenv: free port: %v", err)
		}
		if lastErr = s.startOn(port); lastErr == nil {
			break
		}
		if !errors.Is(lastErr, errExitedEarly) {
			t.Fatalf("testenv: slapd: %v", lastErr)
		}
	}
	if lastErr != nil {
		t.Fatalf("testenv: slapd did not start on any of %d ports: %v", slapdPortAttempts, lastErr)
	}

	ctx, cancel := context.WithTimeout(context.Background(), ldapCommandTimeout)
	defer cancel()
	if err := ldapAdd(ctx, s.Addr, AdminDN, AdminPW, seedLDIF(users)); err != nil {
		t.Fatalf("testenv: seeding slapd: %v", err)
	}
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
	if s.proc != nil && !s.proc.Exited() {
		t.Fatalf("testenv: slapd on %s is already running", s.Addr)
	}
	if err := s.startOn(s.port); err != nil {
		t.Fatalf("testenv: restarting slapd on %s: %v", s.Addr, err)
	}
}

func (s *Slapd) stop(t testing.TB) {
	if s.proc == nil {
		return
	}
	s.proc.stop(stopGrace)
	if t.Failed() {
		if out := s.proc.Output(); out != "" {
			t.Logf("testenv: slapd output:\n%s", tail(out, 16<<10))
		}
	}
}

var errExitedEarly = errors.New("exited before answering")

// startOn runs slapd on port and waits for it to answer. errExitedEarly (wrapped) means
// slapd died during start-up, typically because the port was taken: try another one.
func (s *Slapd) startOn(port int) error {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	url := "ldap://" + addr
	// -d 0 keeps slapd in the foreground, attached to us, with no debug output. (With
	// -d 0 slapd prints nothing even when it fails to bind; it just exits with status 1.)
	p, err := spawn(s.bin, []string{"-f", s.conf, "-h", url + "/", "-d", "0"}, nil, "")
	if err != nil {
		return err
	}
	s.proc = p

	// Up means: a TCP connect succeeds and an anonymous base search of the suffix gets an
	// LDAP answer. Before seeding the base entry does not exist, so "No such object" (32)
	// counts as answered; 255 is "can't contact LDAP server".
	ready := poll(slapdStartTimeout, func() bool {
		if p.Exited() {
			return true
		}
		ctx, cancel := p.untilExit(5 * time.Second)
		defer cancel()
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return false
		}
		c.Close()
		code, _, _ := runLDAPTool(ctx, "ldapsearch", "-x", "-LLL", "-H", url, "-b", BaseDN, "-s", "base", "(objectClass=*)", "1.1")
		return code == 0 || code == 32
	})
	if p.Exited() {
		code, werr := p.Wait(0)
		return fmt.Errorf("slapd on %s %w (exit %d, %v); output: %q", addr, errExitedEarly, code, werr, p.Output())
	}
	if !ready {
		p.stop(stopGrace)
		return fmt.Errorf("slapd on %s not answering after %v; output: %q", addr, slapdStartTimeout, p.Output())
	}
	s.port = port
	s.Addr = addr
	s.URL = url
	return nil
}

func slapdConf(dir, dataDir string) string {
	var b strings.Builder
	for _, schema := range []string{"core", "cosine", "inetorgperson", "nis"} {
		fmt.Fprintf(&b, "include /etc/ldap/schema/%s.schema\n", schema)
	}
	// Debian builds the backends as modules.
	b.WriteString("modulepath /usr/lib/ldap\nmoduleload back_mdb\n")
	fmt.Fprintf(&b, "pidfile %s\nargsfile %s\n", filepath.Join(dir, "slapd.pid"), filepath.Join(dir, "slapd.args"))
	b.WriteString("loglevel 0\nsizelimit unlimited\n\n")
	b.WriteString("database mdb\n")
	fmt.Fprintf(&b, "suffix %q\nrootdn %q\nrootpw %s\n", BaseDN, AdminDN, AdminPW)
	fmt.Fprintf(&b, "directory %s\n", dataDir)
	// 1 GiB map (sparse, allocated on demand); skip fsync: a test database is disposable.
	b.WriteString("maxsize 1073741824\ndbnosync\n")
	b.WriteString("index objectClass eq\nindex uid eq\n")
	return b.String()
}

// seedLDIF returns the LDIF of the whole seeded directory (see Slapd).
func seedLDIF(users int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "dn: %s\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n", BaseDN)
	fmt.Fprintf(&b, "dn: ou=people,%s\nobjectClass: organizationalUnit\nou: people\n\n", BaseDN)
	fmt.Fprintf(&b, "dn: ou=groups,%s\nobjectClass: organizationalUnit\nou: groups\n\n", BaseDN)
	for i := 0; i < users; i++ {
		uid := userUID(i)
		fmt.Fprintf(&b, "dn: %s\nobjectClass: inetOrgPerson\nuid: %s\ncn: User %04d\nsn: Surname%04d\nmail: %s@example.org\nuserPassword: %s\ndescription: %s\n\n",
			UserDN(i), uid, i, i, uid, UserPassword(i), UserDescription(i))
	}
	for g := 0; g < Groups; g++ {
		fmt.Fprintf(&b, "dn: cn=group%02d,ou=groups,%s\nobjectClass: groupOfNames\ncn: group%02d\n", g, BaseDN, g)
		members := 0
		for i := g; i < users; i += Groups {
			fmt.Fprintf(&b, "member: %s\n", UserDN(i))
			members++
		}
		if members == 0 {
			fmt.Fprintf(&b, "member: %s\n", AdminDN)
		}
		b.WriteString("\n")
	}
	return b.String()
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

// ldapAdd feeds ldif to `ldapadd -x` on stdin.
func ldapAdd(ctx context.Context, addr, bindDN, bindPW, ldif string) error {
	path, err := findBinary("ldapadd", "/usr/bin/ldapadd")
	if err != nil {
		return fmt.Errorf("ldapadd not installed: %s", installHint)
	}
	cmd := exec.CommandContext(ctx, path, "-x", "-H", ldapURL(addr), "-D", bindDN, "-w", bindPW)
	cmd.Env = ldapEnv()
	cmd.Stdin = strings.NewReader(ldif)
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("ldapadd: %v: %s", err, tail(strings.TrimSpace(string(out)), 4<<10))
	}
	return nil
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
