package ldapdemo

import (
	"context"
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"
)

func search(t *testing.T, url, base, filter string) (*ldap.SearchResult, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := dial(ctx, url)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.Search(ldap.NewSearchRequest(base, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases, 0, 0, false, filter, []string{"uid", "description", "member"}, nil))
}

// TestStartSeedRestartClose: the seeded directory is there, a user can bind, data survives
// a restart on the same port, a taken port is ErrExitedEarly, and Close removes the
// directory Start created.
func TestStartSeedRestartClose(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := Start(ctx, Options{Users: 25})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	res, err := search(t, s.URL, BaseDN, "(objectClass=inetOrgPerson)")
	if err != nil || len(res.Entries) != 25 {
		t.Fatalf("users: %v, %v", res, err)
	}
	if got := res.Entries[7].GetAttributeValue("description"); got != UserDescription(7) || len(got) != DescriptionLen {
		t.Fatalf("description %q", got)
	}
	groups, err := search(t, s.URL, "ou=groups,"+BaseDN, "(objectClass=groupOfNames)")
	if err != nil || len(groups.Entries) != Groups {
		t.Fatalf("groups: %v, %v", groups, err)
	}
	c, err := dial(ctx, s.URL)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Bind(UserDN(3), UserPassword(3)); err != nil {
		t.Fatalf("bind as user0003: %v", err)
	}
	if err := c.Bind(UserDN(3), "wrong"); !ldap.IsErrorWithCode(err, ldap.LDAPResultInvalidCredentials) {
		t.Fatalf("wrong password: %v", err)
	}
	c.Close()

	if err := s.Restart(ctx); !errors.Is(err, ErrRunning) {
		t.Fatalf("Restart while running: %v", err)
	}
	s.Stop()
	if _, err := search(t, s.URL, BaseDN, "(uid=user0001)"); err == nil {
		t.Fatal("a stopped slapd answered")
	}
	l, err := net.Listen("tcp", s.Addr)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Restart(ctx); !errors.Is(err, ErrExitedEarly) {
		t.Fatalf("restart on a taken port: %v", err)
	}
	l.Close()
	if err := s.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if res, err := search(t, s.URL, BaseDN, "(objectClass=inetOrgPerson)"); err != nil || len(res.Entries) != 25 {
		t.Fatalf("after restart: %v, %v", res, err)
	}
	s.Close()
	if s.Running() {
		t.Fatal("running after Close")
	}
	if _, err := os.Stat(s.dir); !os.IsNotExist(err) {
		t.Fatalf("Close left %s: %v", s.dir, err)
	}
}
