package ldapdemo_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/internal/ldapdemo"
	"github.com/nowconnect/nowconnect/internal/testenv"
)

func countDN(ldif string) int { return strings.Count("\n"+ldif, "\ndn: ") }

// TestStartSearchStop: a seeded directory answers the real ldapsearch anonymously, and
// Stop closes the port, reaps slapd and removes the temporary directory.
func TestStartSearchStop(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := ldapdemo.Start(ctx, ldapdemo.Options{Users: 4})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Stop() })
	if !strings.HasPrefix(s.Addr(), "127.0.0.1:") || s.URL() != "ldap://"+s.Addr() {
		t.Fatalf("Addr %q URL %q", s.Addr(), s.URL())
	}
	out, err := testenv.RunLDAPSearch(ctx, s.URL(), "", "", ldapdemo.BaseDN, "(objectClass=inetOrgPerson)", "mail")
	if err != nil {
		t.Fatal(err)
	}
	if n := countDN(out); n != 4 || !strings.Contains(out, "mail: user0003@example.org") {
		t.Fatalf("%d users, want 4:\n%s", n, out)
	}
	if _, err := testenv.RunLDAPSearch(ctx, s.Addr(), ldapdemo.UserDN(2), ldapdemo.UserPassword(2), ldapdemo.BaseDN, "(uid=user0002)", "cn"); err != nil {
		t.Fatalf("bind as a seeded user: %v", err)
	}
	groups, err := testenv.RunLDAPSearch(ctx, s.Addr(), ldapdemo.AdminDN, ldapdemo.AdminPW, "ou=groups,"+ldapdemo.BaseDN, "(objectClass=groupOfNames)", "cn")
	if err != nil || countDN(groups) != ldapdemo.Groups {
		t.Fatalf("groups: %v\n%s", err, groups)
	}
	conf := readConfDir(t, s)
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.Done():
	default:
		t.Fatal("Done not closed after Stop")
	}
	if c, err := net.Dial("tcp", s.Addr()); err == nil {
		c.Close()
		t.Fatal("port still open after Stop")
	}
	if _, err := os.Stat(conf); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("temporary directory left behind: %v", err)
	}
	if err := s.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
}

// readConfDir finds the directory slapd was started from, through its pid file's
// neighbour: the process's command line names slapd.conf.
func readConfDir(t *testing.T, s *ldapdemo.Server) string {
	t.Helper()
	matches, _ := filepath.Glob(filepath.Join(os.TempDir(), "nowconnect-ldapdemo-*", "slapd.conf"))
	for _, m := range matches {
		b, err := os.ReadFile(filepath.Join(filepath.Dir(m), "slapd.args"))
		if err == nil && strings.Contains(string(b), s.URL()+"/") {
			return filepath.Dir(m)
		}
	}
	t.Fatalf("no temporary directory serves %s", s.URL())
	return ""
}

// TestRestartKeepsData: Stop and Start on the same Dir and Port serves the same database
// without seeding it again (a second ldapadd would fail on existing entries), and keeps a
// caller's Dir.
func TestRestartKeepsData(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	s, err := ldapdemo.Start(ctx, ldapdemo.Options{Users: 2, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Stop() })
	_, port, _ := net.SplitHostPort(s.Addr())
	p, _ := strconv.Atoi(port)
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "slapd.conf")); err != nil {
		t.Fatalf("caller's Dir not kept: %v", err)
	}
	s2, err := ldapdemo.Start(ctx, ldapdemo.Options{Users: 2, Dir: dir, Port: p})
	if err != nil {
		t.Fatalf("restart: %v", err)
	}
	t.Cleanup(func() { _ = s2.Stop() })
	if s2.Addr() != s.Addr() {
		t.Fatalf("restarted on %s, want %s", s2.Addr(), s.Addr())
	}
	out, err := testenv.RunLDAPSearch(ctx, s2.Addr(), "", "", ldapdemo.BaseDN, "(objectClass=inetOrgPerson)", "uid")
	if err != nil || countDN(out) != 2 {
		t.Fatalf("after restart: %v\n%s", err, out)
	}
}

// TestFixedPortTaken: a fixed port held by someone else is ErrExitedEarly, not a hang and
// not a directory served by the other listener.
func TestFixedPortTaken(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := ldapdemo.Start(ctx, ldapdemo.Options{Port: l.Addr().(*net.TCPAddr).Port})
	if err == nil {
		_ = s.Stop()
		t.Fatal("started on a taken port")
	}
	if !errors.Is(err, ldapdemo.ErrExitedEarly) {
		t.Fatalf("error %v, want ErrExitedEarly", err)
	}
}

// TestBadOptionsAndCancel: bad options are refused by name; a cancelled start returns
// the context's error.
func TestBadOptionsAndCancel(t *testing.T) {
	t.Parallel()
	if _, err := ldapdemo.Start(context.Background(), ldapdemo.Options{Users: -1}); err == nil || !strings.Contains(err.Error(), "user count") {
		t.Fatalf("negative users: %v", err)
	}
	if _, err := ldapdemo.Start(context.Background(), ldapdemo.Options{Port: 70000}); err == nil || !strings.Contains(err.Error(), "port 70000") {
		t.Fatalf("bad port: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if s, err := ldapdemo.Start(ctx, ldapdemo.Options{}); !errors.Is(err, context.Canceled) {
		if s != nil {
			_ = s.Stop()
		}
		t.Fatalf("cancelled start: %v", err)
	}
}

// TestExtraURLsAndDebug: ExtraURLs adds listeners, Debug "stats" logs every
// connection with its peer address to Output.
func TestExtraURLsAndDebug(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out := &testenv.SyncBuffer{}
	extra := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	s, err := ldapdemo.Start(ctx, ldapdemo.Options{Users: 1, Output: out, Debug: "stats", ExtraURLs: []string{"ldap://" + extra + "/"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Stop() })
	if res, err := testenv.RunLDAPSearch(ctx, extra, "", "", ldapdemo.BaseDN, "(uid=user0000)", "uid"); err != nil || countDN(res) != 1 {
		t.Fatalf("search on the extra listener: %v\n%s", err, res)
	}
	testenv.WaitFor(t, 5*time.Second, "an ACCEPT line for the extra listener", func() bool {
		return strings.Contains(out.String(), "ACCEPT from IP=127.0.0.1:") && strings.Contains(out.String(), "(IP="+extra+")")
	})
}
