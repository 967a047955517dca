package mesh_test

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/internal/testenv"
	"github.com/nowconnect/nowconnect/mesh"
)

// TestRedisPausedServerDetected: a redis-server that accepts but never answers
// (SIGSTOP) makes the registry unhealthy within 5s; after SIGCONT it is healthy again
// within 5s, without a restart; nowconnect_registry_up and the log follow. The
// measured times are logged (three cycles).
func TestRedisPausedServerDetected(t *testing.T) {
	testenv.CheckGoroutines(t)
	srv := testenv.StartRedis(t)
	logs := &testenv.SyncBuffer{}
	c := cfg("hub-a", logs)
	r := openRedis(t, srv.URL, c, 0) // the defaults: HealthInterval 1s, OpTimeout 1s
	seen := claimEventually(t, r, "agent-1", 0)
	if got := metric(t, c, `nowconnect_registry_up`); got != 1 {
		t.Fatalf("nowconnect_registry_up = %v, want 1", got)
	}

	for cycle := 1; cycle <= 3; cycle++ {
		srv.Pause(t)
		paused := time.Now()
		// An operation against the hung server fails with ErrUnavailable (at OpTimeout,
		// or at once once the health check noticed), it does not hang.
		_, _, err := r.Owner(ctx(t), "agent-1")
		wantErr(t, "Owner while paused", err, mesh.ErrUnavailable)
		testenv.WaitFor(t, 5*time.Second, "registry unhealthy after SIGSTOP", func() bool { return !r.Healthy() })
		detected := time.Since(paused)
		if got := metric(t, c, `nowconnect_registry_up`); got != 0 {
			t.Fatalf("nowconnect_registry_up while paused = %v, want 0", got)
		}
		_, err = r.Claim(ctx(t), "agent-1", seen)
		wantErr(t, "Claim while unhealthy", err, mesh.ErrUnavailable)

		srv.Resume(t)
		resumed := time.Now()
		testenv.WaitFor(t, 5*time.Second, "registry healthy after SIGCONT", r.Healthy)
		recovered := time.Since(resumed)
		if got := metric(t, c, `nowconnect_registry_up`); got != 1 {
			t.Fatalf("nowconnect_registry_up after SIGCONT = %v, want 1", got)
		}
		e := claimEventually(t, r, "agent-1", seen)
		if e <= seen {
			t.Fatalf("epoch after the outage %d <= %d", e, seen)
		}
		seen = e
		t.Logf("cycle %d: SIGSTOP detected after %v, SIGCONT recovered after %v", cycle, detected.Round(time.Millisecond), recovered.Round(time.Millisecond))
	}
	if !logged(logs, "registry_degraded", `"reason":"ping: `) {
		t.Fatalf("no registry_degraded with a ping reason in the log:\n%s", logs)
	}
	if !logged(logs, "registry_recovered", `"down_for":`) {
		t.Fatalf("no registry_recovered in the log:\n%s", logs)
	}
	if got := metric(t, c, `nowconnect_registry_errors_total{op="ping"}`); got < 3 {
		t.Fatalf("ping errors = %v, want at least one per outage", got)
	}
}

// TestRedisDownAtStart: NewRedis neither fails nor blocks when nothing listens; the
// registry reports unhealthy and ops fail with ErrUnavailable until redis-server comes
// up on that port, then it becomes healthy by itself and ops work.
func TestRedisDownAtStart(t *testing.T) {
	testenv.CheckGoroutines(t)
	srv := testenv.StartRedis(t)
	srv.Stop(t) // its port is free now; Start reuses it
	logs := &testenv.SyncBuffer{}
	c := cfg("hub-a", logs)
	r, err := mesh.NewRedis(mesh.RedisConfig{Config: c, URL: srv.URL})
	if err != nil {
		t.Fatalf("NewRedis with Redis down: %v", err)
	}
	t.Cleanup(r.Close)
	if r.Healthy() {
		t.Fatal("healthy with nothing listening")
	}
	_, err = r.Claim(ctx(t), "agent-1", 0)
	wantErr(t, "Claim with Redis down", err, mesh.ErrUnavailable)
	testenv.WaitFor(t, 5*time.Second, "registry_degraded logged", func() bool {
		return logged(logs, "registry_degraded", `"reason":"connect: `)
	})
	if got := metric(t, c, `nowconnect_registry_up`); got != 0 {
		t.Fatalf("nowconnect_registry_up = %v, want 0", got)
	}

	srv.Start(t)
	started := time.Now()
	testenv.WaitFor(t, 5*time.Second, "registry healthy once redis-server is up", r.Healthy)
	t.Logf("healthy %v after redis-server answered PING", time.Since(started).Round(time.Millisecond))
	e := claim(t, r, "agent-1", 0)
	addConnectors(t, r, "agent-1", e, "ldap")
	wantAgents(t, r, "ldap", mesh.AgentInfo{AgentID: "agent-1", Owner: mesh.Owner{ReplicaID: "hub-a", Epoch: e}})
	if !logged(logs, "registry_recovered") {
		t.Fatalf("no registry_recovered in the log:\n%s", logs)
	}

	// A registry that never connects closes cleanly too (CheckGoroutines).
	never, err := mesh.NewRedis(mesh.RedisConfig{Config: cfg("hub-b", nil), URL: fmt.Sprintf("redis://127.0.0.1:%d/0", testenv.FreePort(t))})
	if err != nil {
		t.Fatalf("NewRedis: %v", err)
	}
	never.Close()
}

// TestRedisEpochsSurviveRestart: after redis-server restarts without persistence the
// same registry reconnects by itself and epochs keep increasing (the time floor and the
// hint), for every agent.
func TestRedisEpochsSurviveRestart(t *testing.T) {
	testenv.CheckGoroutines(t)
	srv := testenv.StartRedis(t)
	r := openRedis(t, srv.URL, cfg("hub-a", nil), 100*time.Millisecond)
	seen := map[string]uint64{}
	for i := range 20 {
		agent := "agent-" + strconv.Itoa(i)
		seen[agent] = claim(t, r, agent, 0)
		seen[agent] = claim(t, r, agent, 0) // stored+1 may run ahead of the clock
	}
	srv.Stop(t)
	testenv.WaitFor(t, 5*time.Second, "unhealthy while redis-server is down", func() bool { return !r.Healthy() })
	_, err := r.Claim(ctx(t), "agent-0", seen["agent-0"])
	wantErr(t, "Claim while down", err, mesh.ErrUnavailable)
	srv.Start(t)
	testenv.WaitFor(t, 5*time.Second, "healthy after the restart", r.Healthy)
	if got := srv.Do(t, "DBSIZE"); got != int64(0) {
		t.Fatalf("DBSIZE after restart = %v: the server kept data", got)
	}
	for agent, last := range seen {
		if e := claim(t, r, agent, last); e <= last {
			t.Fatalf("%s: epoch after restart %d <= %d", agent, e, last)
		}
	}
}

// TestRedisKeyLayout pins the documented keys, their types and TTLs.
func TestRedisKeyLayout(t *testing.T) {
	srv := testenv.StartRedis(t)
	r := openRedis(t, srv.URL, cfg("hub-a", nil), 0)
	e := claim(t, r, "agent-1", 0)
	addConnectors(t, r, "agent-1", e, "ldap")
	if err := r.PublishHub(ctx(t), "wss://a.example/mesh"); err != nil {
		t.Fatalf("PublishHub: %v", err)
	}
	es := strconv.FormatUint(e, 10)
	ttl := func(key string) int64 { return srv.Do(t, "PTTL", key).(int64) }
	for _, c := range []struct {
		args []string
		want any
	}{
		{[]string{"GET", "nc:{a:agent-1}:epoch"}, es},
		{[]string{"GET", "nc:{a:agent-1}:owner"}, "hub-a|" + es},
		{[]string{"HGET", "nc:{a:agent-1}:connectors", "ldap"}, es},
		{[]string{"ZSCORE", "nc:{c:ldap}:agents", "agent-1"}, es},
		{[]string{"SISMEMBER", "nc:{idx}:connectors", "ldap"}, int64(1)},
		{[]string{"SISMEMBER", "nc:{r:hub-a}:agents", "agent-1"}, int64(1)},
		{[]string{"HGET", "nc:{hubs}:urls", "hub-a"}, "wss://a.example/mesh"},
	} {
		if got := srv.Do(t, c.args...); got != c.want {
			t.Errorf("%s = %#v, want %#v", strings.Join(c.args, " "), got, c.want)
		}
	}
	if got := ttl("nc:{a:agent-1}:epoch"); got != -1 {
		t.Errorf("epoch key PTTL = %d, want -1 (persistent)", got)
	}
	for _, key := range []string{"nc:{a:agent-1}:owner", "nc:{a:agent-1}:connectors"} {
		if got := ttl(key); got <= 0 || got > mesh.DefaultOwnerTTL.Milliseconds() {
			t.Errorf("%s PTTL = %d, want within (0, OwnerTTL]", key, got)
		}
	}
	exp, err := strconv.ParseInt(srv.Do(t, "ZSCORE", "nc:{hubs}:expiry", "hub-a").(string), 10, 64)
	if err != nil || exp <= time.Now().UnixMilli() || exp > time.Now().Add(mesh.DefaultHubTTL).UnixMilli() {
		t.Errorf("hub expiry %d (%v) not within HubTTL from now", exp, err)
	}
	if got := srv.Do(t, "DBSIZE"); got != int64(8) {
		t.Errorf("DBSIZE = %v, want the 8 documented keys", got)
	}
}

// TestNewRedisConfigErrors: bad configs are refused with the field named, and the
// URL's password never appears in the error.
func TestNewRedisConfigErrors(t *testing.T) {
	for _, c := range []struct {
		name string
		cfg  mesh.RedisConfig
		want string
	}{
		{"no replica id", mesh.RedisConfig{URL: "redis://127.0.0.1:1/0"}, "RedisConfig.ReplicaID"},
		{"replica id with |", mesh.RedisConfig{Config: mesh.Config{ReplicaID: "a|b"}, URL: "redis://127.0.0.1:1/0"}, "RedisConfig.ReplicaID"},
		{"replica id with a space", mesh.RedisConfig{Config: mesh.Config{ReplicaID: "a b"}, URL: "redis://127.0.0.1:1/0"}, "RedisConfig.ReplicaID"},
		{"negative OwnerTTL", mesh.RedisConfig{Config: mesh.Config{ReplicaID: "a", OwnerTTL: -time.Second}, URL: "redis://127.0.0.1:1/0"}, "RedisConfig.OwnerTTL"},
		{"sub-ms OpTimeout", mesh.RedisConfig{Config: mesh.Config{ReplicaID: "a", OpTimeout: time.Microsecond}, URL: "redis://127.0.0.1:1/0"}, "RedisConfig.OpTimeout"},
		{"negative HealthInterval", mesh.RedisConfig{Config: mesh.Config{ReplicaID: "a"}, URL: "redis://127.0.0.1:1/0", HealthInterval: -1}, "RedisConfig.HealthInterval"},
		{"no URL", mesh.RedisConfig{Config: mesh.Config{ReplicaID: "a"}}, "RedisConfig.URL is required"},
		{"http URL", mesh.RedisConfig{Config: mesh.Config{ReplicaID: "a"}, URL: "http://127.0.0.1:1"}, "RedisConfig.URL"},
		{"unknown parameter", mesh.RedisConfig{Config: mesh.Config{ReplicaID: "a"}, URL: "redis://127.0.0.1:1/0?client_cache=1"}, `query parameter "client_cache"`},
		{"bad port with a password", mesh.RedisConfig{Config: mesh.Config{ReplicaID: "a"}, URL: "redis://u:s3cret@127.0.0.1:x/0"}, "RedisConfig.URL"},
		{"bad db with a password", mesh.RedisConfig{Config: mesh.Config{ReplicaID: "a"}, URL: "redis://u:s3cret@127.0.0.1:1/zero"}, "RedisConfig.URL"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r, err := mesh.NewRedis(c.cfg)
			if err == nil {
				r.Close()
				t.Fatal("accepted")
			}
			if !errors.Is(err, mesh.ErrInvalidConfig) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want ErrInvalidConfig naming %q", err, c.want)
			}
			if strings.Contains(err.Error(), "s3cret") {
				t.Fatalf("error leaks the password: %v", err)
			}
		})
	}
	if _, err := mesh.NewMemory(mesh.MemoryConfig{}); !errors.Is(err, mesh.ErrInvalidConfig) || !strings.Contains(err.Error(), "MemoryConfig.ReplicaID") {
		t.Fatalf("NewMemory without a replica id: %v", err)
	}
	// Honoured parameters are accepted (the registry just stays unhealthy: nothing listens).
	r, err := mesh.NewRedis(mesh.RedisConfig{Config: mesh.Config{ReplicaID: "a"}, URL: "redis://127.0.0.1:1/0?dial_timeout=200ms&client_name=x&protocol=2"})
	if err != nil {
		t.Fatalf("supported parameters refused: %v", err)
	}
	r.Close()
}

// TestRedisWatchAcrossRestart: a Watch ends with an error, not a hang, when
// redis-server goes away; after the restart a new one gets notifications
// again (the hub's watchLoop re-subscribes like this); and with the server
// frozen, a Watch still ends at once by its context or by Close, and by
// itself once the health check finds the server silent.
func TestRedisWatchAcrossRestart(t *testing.T) {
	testenv.CheckGoroutines(t)
	srv := testenv.StartRedis(t)
	a := openRedis(t, srv.URL, cfg("hub-a", nil), 100*time.Millisecond)
	cb := cfg("hub-b", nil)
	b := openRedis(t, srv.URL, cb, 100*time.Millisecond)
	type sub struct {
		got   chan string
		ended chan error // every Watch call's result (the latest 16)
		done  chan error // Watch's last result, once the subscription ended
	}
	// subscribe watches b, once, or again after every failure as watchLoop does
	// (right after a restart, a subscription may fail on a connection of the
	// old server), until ctx ends or b closes.
	subscribe := func(ctx context.Context, again bool) sub {
		s := sub{got: make(chan string, 64), ended: make(chan error, 16), done: make(chan error, 1)}
		go func() { // watchLoop, joined through done
			for {
				err := b.Watch(ctx, func(id string) {
					select {
					case s.got <- id:
					default: // a test that stopped listening must not block the subscription
					}
				})
				select {
				case s.ended <- err:
				default:
				}
				if !again || ctx.Err() != nil || errors.Is(err, mesh.ErrClosed) {
					s.done <- err
					return
				}
				select {
				case <-ctx.Done():
				case <-time.After(100 * time.Millisecond):
				}
			}
		}()
		return s
	}
	notified := func(s sub, agent string) {
		t.Helper()
		testenv.WaitFor(t, 5*time.Second, "hub-b notified of "+agent, func() bool {
			e := claimEventually(t, a, agent, 0)
			addConnectors(t, a, agent, e, "ldap")
			for {
				select {
				case id := <-s.got:
					if id == agent {
						return true
					}
				case <-time.After(50 * time.Millisecond):
					return false
				}
			}
		})
	}
	ends := func(what string, s sub, want error) {
		t.Helper()
		start := time.Now()
		select {
		case err := <-s.done:
			if want == nil && (err == nil || errors.Is(err, mesh.ErrClosed)) || want != nil && !errors.Is(err, want) {
				t.Fatalf("Watch after %s = %v, want %v", what, err, cmp.Or(want, errors.New("a failure")))
			}
			t.Logf("%s ended the Watch in %v: %v", what, time.Since(start).Round(time.Millisecond), err)
		case <-time.After(5 * time.Second):
			t.Fatalf("Watch still running 5s after %s", what)
		}
	}
	testenv.WaitFor(t, 5*time.Second, "healthy", b.Healthy)
	first := subscribe(context.Background(), false)
	notified(first, "agent-1")
	srv.Stop(t)
	ends("redis-server stopped", first, nil)
	if v := metric(t, cb, `nowconnect_registry_errors_total{op="watch"}`); v != 1 {
		t.Errorf(`nowconnect_registry_errors_total{op="watch"} = %v after the server stopped, want 1`, v)
	}

	srv.Start(t)
	testenv.WaitFor(t, 5*time.Second, "healthy after the restart", b.Healthy)
	wctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	byCtx := subscribe(wctx, true)
	byClose := subscribe(context.Background(), true)
	notified(byCtx, "agent-2")
	notified(byClose, "agent-3")
	for len(byClose.ended) > 0 { // the failures before it was subscribed
		<-byClose.ended
	}

	srv.Pause(t)
	defer srv.Resume(t)
	cancel()
	ends("cancel, redis-server frozen", byCtx, context.Canceled)
	// Left alone, a subscription to a frozen server would hear nothing for as
	// long as its connection stays up: it ends with the health check's verdict
	// (and is taken again, failing, until Redis answers).
	paused := time.Now()
	select {
	case err := <-byClose.ended:
		if !errors.Is(err, mesh.ErrUnavailable) {
			t.Fatalf("a live subscription to a frozen server ended with %v, want ErrUnavailable", err)
		}
		t.Logf("the health check ended the subscription %v after the freeze: %v", time.Since(paused).Round(time.Millisecond), err)
	case <-time.After(5 * time.Second):
		t.Fatal("a subscription to a frozen server still running 5s after the freeze")
	}
	go b.Close() // joined by openRedis's cleanup (Close is idempotent)
	ends("Close, redis-server frozen", byClose, mesh.ErrClosed)
}
