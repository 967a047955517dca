package testenv

import (
	"context"
	"errors"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func countDN(ldif string) int {
	n := 0
	for _, line := range strings.Split(ldif, "\n") {
		if strings.HasPrefix(line, "dn: ") {
			n++
		}
	}
	return n
}

func TestSlapdSeededAndConcurrentSearches(t *testing.T) {
	t.Parallel()
	const users = 50
	s := StartSlapd(t, users)
	if s.Users != users || s.BaseDN != BaseDN || s.AdminDN != AdminDN || s.AdminPW != AdminPW {
		t.Fatalf("unexpected Slapd fields: %+v", s)
	}
	if !strings.HasPrefix(s.Addr, "127.0.0.1:") || s.URL != "ldap://"+s.Addr {
		t.Fatalf("unexpected address: Addr=%q URL=%q", s.Addr, s.URL)
	}

	out := LDAPSearch(t, s.Addr, s.BaseDN, "(objectClass=inetOrgPerson)")
	if got := countDN(out); got != users {
		t.Fatalf("inetOrgPerson entries: got %d dn: lines, want %d\n%s", got, users, out)
	}
	if !strings.Contains(out, "description: "+UserDescription(7)+"\n") {
		t.Fatalf("user0007's description missing or wrapped/base64-encoded:\n%s", out)
	}
	if len(UserDescription(7)) != DescriptionLen {
		t.Fatalf("description length %d, want %d", len(UserDescription(7)), DescriptionLen)
	}

	groups := LDAPSearch(t, s.URL, "ou=groups,"+s.BaseDN, "(objectClass=groupOfNames)", "member")
	if got := countDN(groups); got != Groups {
		t.Fatalf("groups: got %d, want %d\n%s", got, Groups, groups)
	}
	if got := strings.Count(groups, "member: "); got != users {
		t.Fatalf("group members: got %d, want %d", got, users)
	}

	one := LDAPSearch(t, s.Addr, s.BaseDN, "(uid=user0042)", "mail")
	want := "dn: " + UserDN(42) + "\nmail: user0042@example.org\n"
	if strings.TrimSpace(one) != strings.TrimSpace(want) {
		t.Fatalf("uid=user0042: got %q, want %q", one, want)
	}

	// A seeded user can bind with its password.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := RunLDAPSearch(ctx, s.Addr, UserDN(3), UserPassword(3), s.BaseDN, "(uid=user0003)", "cn"); err != nil {
		t.Fatalf("bind as user0003: %v", err)
	}
	if _, err := RunLDAPSearch(ctx, s.Addr, UserDN(3), "wrong", s.BaseDN, "(uid=user0003)", "cn"); err == nil {
		t.Fatal("bind with a wrong password succeeded")
	}

	const workers = 16
	outs := make([]string, workers)
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			outs[i], errs[i] = RunLDAPSearch(ctx, s.Addr, s.AdminDN, s.AdminPW, s.BaseDN, "(objectClass=inetOrgPerson)")
		}()
	}
	wg.Wait()
	for i := range workers {
		if errs[i] != nil {
			t.Fatalf("search %d: %v", i, errs[i])
		}
		if outs[i] != out {
			t.Fatalf("search %d returned different output (%d bytes vs %d)", i, len(outs[i]), len(out))
		}
	}
}

func TestSlapdStopStart(t *testing.T) {
	t.Parallel()
	s := StartSlapd(t, 3)
	addr := s.Addr
	s.Stop(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := RunLDAPSearch(ctx, addr, "", "", BaseDN, "(uid=user0001)"); err == nil {
		t.Fatal("search succeeded against a stopped slapd")
	}
	s.Start(t)
	if s.Addr != addr {
		t.Fatalf("restarted on %s, want %s", s.Addr, addr)
	}
	out, err := RunLDAPSearch(ctx, addr, "", "", BaseDN, "(objectClass=inetOrgPerson)", "uid")
	if err != nil {
		t.Fatal(err)
	}
	if got := countDN(out); got != 3 {
		t.Fatalf("after restart: %d users, want 3 (data kept)\n%s", got, out)
	}
}

func TestRedisStartStopRestart(t *testing.T) {
	t.Parallel()
	r := StartRedis(t)
	if !strings.HasPrefix(r.Addr, "127.0.0.1:") || r.URL != "redis://"+r.Addr+"/0" {
		t.Fatalf("unexpected address: Addr=%q URL=%q", r.Addr, r.URL)
	}
	if err := r.Ping(); err != nil {
		t.Fatalf("PING: %v", err)
	}
	addr := r.Addr
	r.Stop(t)
	if err := r.Ping(); err == nil {
		t.Fatal("PING answered after Stop")
	}
	r.Stop(t) // idempotent
	r.Start(t)
	if r.Addr != addr {
		t.Fatalf("restarted on %s, want %s", r.Addr, addr)
	}
	if err := r.Ping(); err != nil {
		t.Fatalf("PING after restart: %v", err)
	}
}

func TestProcess(t *testing.T) {
	t.Parallel()
	p := StartProcess(t, "sh", []string{"-c", `echo "ready $TESTENV_X"; echo oops >&2; exec tail -f /dev/null`}, []string{"TESTENV_X=42"})
	p.WaitForOutput(t, "ready 42", 10*time.Second)
	p.WaitForOutput(t, "oops", 10*time.Second)
	if _, err := p.Wait(10 * time.Millisecond); err == nil {
		t.Fatal("Wait returned nil error for a running process")
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code, err := p.Wait(10 * time.Second); err == nil || code != -1 {
		t.Fatalf("killed by SIGTERM: got code %d err %v", code, err)
	}
	if err := p.Signal(os.Interrupt); err != os.ErrProcessDone {
		t.Fatalf("Signal after exit: %v", err)
	}

	q := StartProcess(t, "sh", []string{"-c", "echo bye; exit 3"}, nil)
	if code, err := q.Wait(10 * time.Second); err != nil || code != 3 {
		t.Fatalf("exit 3: got code %d err %v", code, err)
	}
	if q.Output() != "bye\n" {
		t.Fatalf("output %q", q.Output())
	}
}

func TestFreePortAndWaitFor(t *testing.T) {
	t.Parallel()
	port := FreePort(t)
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		t.Fatalf("FreePort %d not bindable: %v", port, err)
	}
	l.Close()
	n := 0
	WaitFor(t, 5*time.Second, "counter", func() bool { n++; return n == 3 })
}

// A port taken by someone else makes the servers exit early, which StartSlapd and
// StartRedis answer by trying another port.
func TestPortTakenIsDetected(t *testing.T) {
	t.Parallel()
	s := StartSlapd(t, 0)
	r := StartRedis(t)
	s.Stop(t)
	r.Stop(t)
	for _, addr := range []string{s.Addr, r.Addr} {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
	}
	if err := s.startOn(s.port); !errors.Is(err, errExitedEarly) {
		t.Fatalf("slapd on a taken port: %v", err)
	}
	if err := r.startOn(r.port); !errors.Is(err, errExitedEarly) {
		t.Fatalf("redis-server on a taken port: %v", err)
	}
}
