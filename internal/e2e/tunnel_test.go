package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/internal/testenv"
)

// TestLDAPThroughHub: ldapsearch through the hub returns exactly what a
// direct search returns, also for 64 concurrent searches.
func TestLDAPThroughHub(t *testing.T) {
	leakCheck(t)
	ldap := testenv.StartSlapd(t, 200)
	th := startHub(t, []string{"addomain"})
	startAgent(t, th, "dev-agent-1", map[string]string{"addomain": ldap.Addr})

	direct := testenv.LDAPSearch(t, ldap.Addr, ldap.BaseDN, "(objectClass=*)")
	if n := strings.Count(direct, "dn: "); n < 200 {
		t.Fatalf("direct search returned %d entries, want >= 200", n)
	}
	via := testenv.LDAPSearch(t, th.Addr["addomain"], ldap.BaseDN, "(objectClass=*)")
	if via != direct {
		t.Fatalf("search through the hub differs from direct: %d vs %d bytes", len(via), len(direct))
	}

	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			out, err := testenv.RunLDAPSearch(ctx, th.Addr["addomain"], ldap.AdminDN, ldap.AdminPW, ldap.BaseDN, "(objectClass=*)")
			if err != nil {
				errs <- err
				return
			}
			if out != direct {
				errs <- fmt.Errorf("concurrent search differs: %d vs %d bytes", len(out), len(direct))
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if !contains(th.Logs.String(), `"msg":"agent_connected"`) || !contains(th.Logs.String(), `"msg":"listener_started"`) {
		t.Errorf("hub logs lack listener_started/agent_connected:\n%s", th.Logs.String())
	}
	testenv.WaitFor(t, 10*time.Second, "streams to end", func() bool { return th.ActiveStreams() == 0 })
}

// TestManyStreamsByteExact: 64 concurrent streams of random sizes up to
// 64 MiB both ways over one tunnel, checksummed.
func TestManyStreamsByteExact(t *testing.T) {
	leakCheck(t)
	tgt := startServer(t, exchangeTarget)
	th := startHub(t, []string{"x"})
	startAgent(t, th, "a1", map[string]string{"x": tgt.Addr()})

	const max = 64 << 20
	r := rand.New(rand.NewPCG(1, 2))
	size := func(i int) int64 {
		if i == 0 {
			return max // the largest size is always exercised
		}
		// log-uniform between 1 B and 64 MiB
		return int64(float64(max) / float64(uint64(1)<<r.IntN(27)) * (0.5 + r.Float64()/2))
	}
	type job struct{ up, down int64 }
	jobs := make([]job, 64)
	var total int64
	for i := range jobs {
		jobs[i] = job{up: size(i), down: size(i)}
		if testing.Short() || raceEnabled {
			jobs[i].up /= 4
			jobs[i].down /= 4
		}
		total += jobs[i].up + jobs[i].down
	}
	t.Logf("moving %d MiB in 64 streams", total>>20)
	var wg sync.WaitGroup
	errs := make(chan error, len(jobs))
	for i, j := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := exchange(th.Addr["x"], uint64(i)*7919, j.up, j.down); err != nil {
				errs <- fmt.Errorf("stream %d (up %d, down %d): %w", i, j.up, j.down, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	testenv.WaitFor(t, 10*time.Second, "streams to end", func() bool { return th.ActiveStreams() == 0 })
}

// TestHalfClose: the client half-closes after its request and still gets a
// multi-MiB response sent late; the target half-closing works the other way.
func TestHalfClose(t *testing.T) {
	leakCheck(t)
	const resp = 8 << 20
	// Client half-closes first: the target answers only after EOF.
	late := startServer(t, func(c net.Conn) {
		req, err := io.ReadAll(c) // until the client's FIN
		if err != nil || string(req) != "request" {
			return
		}
		_, _ = io.CopyN(c, newPRNG(42), resp)
	})
	// Target half-closes first: it sends its greeting and FIN, then still
	// reads the client's upload.
	uploaded := make(chan []byte, 1)
	greeter := startServer(t, func(c net.Conn) {
		_, _ = io.CopyN(c, newPRNG(7), resp)
		_ = c.(*net.TCPConn).CloseWrite()
		h := sha256.New()
		_, _ = io.Copy(h, c)
		uploaded <- h.Sum(nil)
	})
	th := startHub(t, []string{"late", "greeter"})
	startAgent(t, th, "a1", map[string]string{"late": late.Addr(), "greeter": greeter.Addr()})

	c, err := net.Dial("tcp", th.Addr["late"])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("request")); err != nil {
		t.Fatal(err)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if err := readSame(c, newPRNG(42), resp); err != nil {
		t.Fatalf("late response after client FIN: %v", err)
	}
	if n, err := io.Copy(io.Discard, c); n != 0 || err != nil {
		t.Fatalf("after the response: %d bytes, err %v; want clean EOF", n, err)
	}

	g, err := net.Dial("tcp", th.Addr["greeter"])
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if err := readSame(g, newPRNG(7), resp); err != nil {
		t.Fatalf("greeting: %v", err)
	}
	if n, err := io.Copy(io.Discard, g); n != 0 || err != nil {
		t.Fatalf("expected EOF after the target's FIN, got %d bytes, %v", n, err)
	}
	// The client→target direction still works after the target's FIN.
	if _, err := io.CopyN(g, newPRNG(9), 4<<20); err != nil {
		t.Fatalf("upload after target FIN: %v", err)
	}
	if err := g.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	want := sha256.New()
	_, _ = io.CopyN(want, newPRNG(9), 4<<20)
	select {
	case got := <-uploaded:
		if !bytes.Equal(got, want.Sum(nil)) {
			t.Fatal("upload after the target's FIN arrived corrupted or short")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the target never saw the client's FIN after its own")
	}
	testenv.WaitFor(t, 10*time.Second, "streams to end", func() bool { return th.ActiveStreams() == 0 })
}
