package loadtest

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/internal/testenv"
)

const testUsers = 100

func baseConfig(s *testenv.Slapd, sc Scenario) Config {
	return Config{
		URL:          s.URL,
		BaseDN:       s.BaseDN,
		BindDN:       s.AdminDN,
		BindPW:       s.AdminPW,
		Scenario:     sc,
		Concurrency:  4,
		Duration:     time.Second,
		Warmup:       100 * time.Millisecond,
		UserCount:    testUsers,
		GroupCount:   testenv.Groups,
		MaxErrorRate: 0,
		Seed:         42,
	}
}

func run(t *testing.T, cfg Config) *Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := Run(ctx, cfg)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	return res
}

func requireClean(t *testing.T, res *Result) {
	t.Helper()
	var md bytes.Buffer
	if err := res.WriteMarkdown(&md); err != nil {
		t.Fatal(err)
	}
	if res.Totals.Errors != 0 || len(res.Errors) != 0 || !res.Passed {
		t.Fatalf("errors %d, passed %v, classes %+v\n%s", res.Totals.Errors, res.Passed, res.Errors, md.String())
	}
	if res.Totals.Succeeded == 0 || res.Latency.Count != res.Totals.Succeeded || res.Latency.P50 <= 0 ||
		res.Latency.P99 < res.Latency.P50 || res.Latency.Max < res.Latency.P999 {
		t.Fatalf("implausible result %+v %+v", res.Totals, res.Latency)
	}
	t.Logf("%s: %d ops, %.0f ops/s, p50 %s p99 %s, benign %d (20: %d, 16: %d)", res.Config.Scenario, res.Totals.Ops,
		res.Totals.Rate, fmtDur(res.Latency.P50), fmtDur(res.Latency.P99), res.Totals.Benign, res.Totals.Benign20, res.Totals.Benign16)
}

// Each scenario against a real slapd: ~1 s at concurrency 4, zero errors.
func TestScenariosAgainstSlapd(t *testing.T) {
	t.Parallel()
	s := testenv.StartSlapd(t, testUsers)
	for _, tc := range []struct {
		name string
		mod  func(*Config)
	}{
		{"bind-search", func(c *Config) { c.Scenario = BindSearch }},
		{"search", func(c *Config) { c.Scenario = Search }},
		{"group-write", func(c *Config) { c.Scenario = GroupWrite }},
		{"mixed", func(c *Config) { c.Scenario = Mixed; c.Mix = map[Scenario]int{BindSearch: 1, Search: 1, GroupWrite: 1} }},
		{"search-reconnect", func(c *Config) { c.Scenario = Search; c.Reconnect = true; c.Duration = 500 * time.Millisecond }},
		{"bind-search-anonymous-admin", func(c *Config) {
			c.Scenario = BindSearch
			c.BindDN, c.BindPW = "", ""
			c.Duration = 300 * time.Millisecond
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := baseConfig(s, "")
			tc.mod(&cfg)
			res := run(t, cfg)
			requireClean(t, res)
			if cfg.Scenario == Mixed {
				if len(res.Scenarios) != 3 {
					t.Fatalf("mixed: breakdown %+v", res.Scenarios)
				}
				for _, sc := range res.Scenarios {
					if sc.Totals.Succeeded == 0 {
						t.Fatalf("mixed: no %s op", sc.Scenario)
					}
				}
			}
		})
	}
	// group-write never removed a membership that existed before: every seeded member
	// is still there.
	out := testenv.LDAPSearch(t, s.Addr, "ou=groups,"+s.BaseDN, "(objectClass=groupOfNames)", "member")
	if got := strings.Count(out, "member: "); got != testUsers {
		t.Fatalf("group members after the runs: %d, want the %d seeded ones\n%s", got, testUsers, out)
	}
}

// Two group-write runs at once on the same user and group collide: adds answer 20 and
// deletes 16, which are successes, counted as benign.
func TestGroupWriteConcurrentRunsCountBenignCodes(t *testing.T) {
	t.Parallel()
	s := testenv.StartSlapd(t, 20)
	cfg := baseConfig(s, GroupWrite)
	cfg.UserOffset, cfg.UserCount, cfg.GroupCount = 1, 1, 1 // user0001 ↔ group00 (not a seeded pair)
	cfg.Concurrency = 2
	// The other run's transient membership may be visible to this run's preflight.
	cfg.AllowExisting = true
	var wg sync.WaitGroup
	results := make([]*Result, 2)
	errs := make([]error, 2)
	for i := range results {
		wg.Go(func() {
			c := cfg
			c.Seed = uint64(i + 1)
			results[i], errs[i] = Run(context.Background(), c)
		})
	}
	wg.Wait()
	var b20, b16 uint64
	for i, res := range results {
		if errs[i] != nil {
			t.Fatalf("run %d: %v", i, errs[i])
		}
		requireClean(t, res)
		if res.Totals.Benign != res.Totals.Benign20+res.Totals.Benign16 {
			t.Fatalf("benign %d != %d + %d", res.Totals.Benign, res.Totals.Benign20, res.Totals.Benign16)
		}
		b20 += res.Totals.Benign20
		b16 += res.Totals.Benign16
	}
	if b20 == 0 || b16 == 0 {
		t.Fatalf("benign codes: 20 seen %d times, 16 seen %d times; want both > 0", b20, b16)
	}
	var md bytes.Buffer
	if err := results[0].WriteMarkdown(&md); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(md.String(), "benign 20 (typeOrValueExists, add)") {
		t.Fatalf("report lacks the benign columns:\n%s", md.String())
	}
}

// Open loop: the offered rate is achieved within ±10%.
func TestOpenLoopAchievesOfferedRate(t *testing.T) {
	t.Parallel()
	s := testenv.StartSlapd(t, testUsers)
	cfg := baseConfig(s, Search)
	cfg.Rate = 400
	cfg.Concurrency = 8
	cfg.Duration = 1500 * time.Millisecond
	res := run(t, cfg)
	requireClean(t, res)
	if r := res.Totals.Rate; r < 360 || r > 440 {
		t.Fatalf("achieved %.1f ops/s, offered 400 (±10%%)", r)
	}
	if n := res.Totals.Ops; n < 540 || n > 660 {
		t.Fatalf("%d ops in 1.5 s at 400/s", n)
	}
}

// Open loop does not hide a stall (no coordinated omission): ops due while the path is
// frozen are still issued afterwards and carry their queueing time as latency.
func TestOpenLoopStallShowsInLatency(t *testing.T) {
	t.Parallel()
	s := testenv.StartSlapd(t, testUsers)
	const stall = 300 * time.Millisecond
	cfg := baseConfig(s, Search)
	cfg.Rate = 200
	cfg.Concurrency = 2
	cfg.Warmup = 0
	cfg.Duration = time.Second
	// Freeze the path as soon as both workers are connected (the preflight is the first
	// connection), i.e. right when the clock starts.
	p := startGateProxy(t, s.Addr, 1+cfg.Concurrency, stall)
	cfg.URL = "ldap://" + p
	res := run(t, cfg)
	requireClean(t, res)
	if n := res.Totals.Ops; n < 180 || n > 220 {
		t.Fatalf("%d ops, want ~200: ops due during the stall must still be issued", n)
	}
	if res.Latency.P99 < stall/2 || res.Latency.Max < stall*2/3 {
		t.Fatalf("p99 %s, max %s after a %s stall: queueing time hidden", fmtDur(res.Latency.P99), fmtDur(res.Latency.Max), stall)
	}
}

// Cancelling the context (what SIGINT does) ends the run early with a full result.
func TestCancelStopsCleanlyWithResult(t *testing.T) {
	t.Parallel()
	s := testenv.StartSlapd(t, testUsers)
	cfg := baseConfig(s, Search)
	cfg.Warmup = 0
	cfg.Duration = time.Minute
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cfg.Progress = cancelOnWrite{cancel}
	cfg.ProgressInterval = 100 * time.Millisecond
	begin := time.Now()
	res, err := Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if el := time.Since(begin); el > 20*time.Second {
		t.Fatalf("cancelled run took %v", el)
	}
	if !res.Interrupted || res.Window <= 0 || res.Window > 20*time.Second {
		t.Fatalf("interrupted %v window %v", res.Interrupted, res.Window)
	}
	requireClean(t, res)
	var md bytes.Buffer
	if err := res.WriteMarkdown(&md); err != nil || !strings.Contains(md.String(), "Interrupted") {
		t.Fatalf("report: %v\n%s", err, md.String())
	}
}

type cancelOnWrite struct{ cancel context.CancelFunc }

func (c cancelOnWrite) Write(p []byte) (int, error) { c.cancel(); return len(p), nil }

// Gates: an impossible p99 SLO fails; errors beyond the budget fail.
func TestGatesFail(t *testing.T) {
	t.Parallel()
	s := testenv.StartSlapd(t, testUsers)
	cfg := baseConfig(s, Search)
	cfg.Duration = 300 * time.Millisecond
	cfg.SLOP99 = time.Nanosecond
	res := run(t, cfg)
	if res.Passed || res.ExitCode() != 1 || len(res.Failed()) != 1 || res.Failed()[0].Name != "p99 latency" {
		t.Fatalf("passed %v, failed %+v", res.Passed, res.Failed())
	}

	// Users beyond the seeded ones do not exist: their binds fail with 49.
	cfg = baseConfig(s, BindSearch)
	cfg.Duration = 300 * time.Millisecond
	cfg.UserCount = 2 * testUsers
	cfg.MaxErrorRate = 0.1
	res = run(t, cfg)
	if res.Passed || res.ExitCode() != 1 || res.Totals.Errors == 0 {
		t.Fatalf("passed %v, totals %+v", res.Passed, res.Totals)
	}
	if len(res.Errors) == 0 || res.Errors[0].Class != "LDAP 49 invalidCredentials" || res.Errors[0].Step != "bind" {
		t.Fatalf("error classes %+v", res.Errors)
	}
	if rate := res.Totals.ErrorRate; rate < 0.3 || rate > 0.7 {
		t.Fatalf("error rate %v, want ~0.5", rate)
	}
}

func TestConfigAndPreflightErrors(t *testing.T) {
	t.Parallel()
	s := testenv.StartSlapd(t, 5)
	good := baseConfig(s, BindSearch)
	good.UserCount = 5
	cases := map[string]func(*Config){
		"no url":          func(c *Config) { c.URL = "" },
		"bad scenario":    func(c *Config) { c.Scenario = "nope" },
		"zero conc":       func(c *Config) { c.Concurrency = 0 },
		"write anonymous": func(c *Config) { c.Scenario = GroupWrite; c.BindDN = ""; c.BindPW = "" },
		"bad template":    func(c *Config) { c.UserDNTmpl = "uid={who}" },
		"wrong admin pw":  func(c *Config) { c.Scenario = Search; c.BindPW = "wrong" },
		"wrong user pw":   func(c *Config) { c.UserPWTmpl = "nope{i}" },
		"no such base":    func(c *Config) { c.Scenario = Search; c.BaseDN = "dc=nope" },
		"unreachable":     func(c *Config) { c.URL = "ldap://" + closedAddr(t) },
		"no group":        func(c *Config) { c.Scenario = GroupWrite; c.GroupCount = testenv.Groups + 1 },
		// With 5 users, group00 holds only user0000: the single pair is a real membership.
		"only members": func(c *Config) { c.Scenario = GroupWrite; c.UserCount = 1; c.GroupCount = 1 },
		"metrics url":  func(c *Config) { c.MetricsURL = "http://" + closedAddr(t) + "/metrics" },
	}
	for name, mod := range cases {
		cfg := good
		mod(&cfg)
		_, err := Run(context.Background(), cfg)
		if !errors.Is(err, ErrConfig) {
			t.Errorf("%s: err %v, want ErrConfig", name, err)
		}
	}
}

func closedAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// startGateProxy forwards TCP to target. Once it has accepted freezeAt connections it
// stops forwarding for d, then resumes. Every goroutine ends in cleanup.
func startGateProxy(t *testing.T, target string, freezeAt int, d time.Duration) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu     sync.Mutex
		open   = make(chan struct{}) // closed while forwarding is allowed
		conns  []net.Conn
		wg     sync.WaitGroup
		thawer *time.Timer
	)
	close(open)
	gate := func() <-chan struct{} { mu.Lock(); defer mu.Unlock(); return open }
	pipe := func(dst, src net.Conn) {
		defer wg.Done()
		defer dst.Close()
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				<-gate()
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}
	wg.Add(1)
	go func() { // accept loop
		defer wg.Done()
		accepted := 0
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, up)
			accepted++
			if accepted == freezeAt {
				frozen := make(chan struct{})
				open = frozen
				thawer = time.AfterFunc(d, func() { close(frozen) })
			}
			mu.Unlock()
			wg.Add(2)
			go pipe(up, c)
			go pipe(c, up)
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		if thawer != nil && thawer.Stop() {
			close(open)
		}
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return l.Addr().String()
}
