package mesh_test

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/nowconnect/nowconnect/internal/testenv"
	"github.com/nowconnect/nowconnect/mesh"
)

// env is one backend the contract runs against: a shared store (a MemoryStore, or a
// redis-server) on which registries with different replica ids meet.
type env interface {
	// open returns a healthy registry on the store; it is closed at cleanup.
	open(t testing.TB, cfg mesh.Config) mesh.Registry
	// flushAll forgets everything, stored epochs included.
	flushAll(t testing.TB)
}

type memoryEnv struct{ store *mesh.MemoryStore }

func (e *memoryEnv) open(t testing.TB, cfg mesh.Config) mesh.Registry {
	t.Helper()
	r, err := mesh.NewMemory(mesh.MemoryConfig{Config: cfg, Store: e.store})
	if err != nil {
		t.Fatalf("NewMemory: %v", err)
	}
	t.Cleanup(r.Close)
	return r
}

func (e *memoryEnv) flushAll(testing.TB) { e.store.FlushAll() }

type redisEnv struct {
	srv *testenv.Redis
	url string // the registry's URL: srv.URL, or with the credentials of an ACL user
}

func (e *redisEnv) open(t testing.TB, cfg mesh.Config) mesh.Registry {
	t.Helper()
	return openRedis(t, cmp.Or(e.url, e.srv.URL), cfg, 0)
}

// aclRules are the ACL rules the README gives the hubs' Redis user: the
// contract runs under them too ("redis-acl").
const aclRules = "resetkeys ~nc:* resetchannels &nc:claims -@all +@read +@write +@scripting +@pubsub +@connection +time"

// newACLEnv is a fresh redis-server whose registry connects as a user with
// aclRules only.
func newACLEnv(t testing.TB) env {
	srv := testenv.StartRedis(t)
	srv.Do(t, append([]string{"ACL", "SETUSER", "nowconnect", "on", ">hub-secret"}, strings.Fields(aclRules)...)...)
	return &redisEnv{srv: srv, url: strings.Replace(srv.URL, "redis://", "redis://nowconnect:hub-secret@", 1)}
}

func (e *redisEnv) flushAll(t testing.TB) { e.srv.FlushAll(t) }

// openRedis returns a Redis registry on url once it is healthy.
func openRedis(t testing.TB, url string, cfg mesh.Config, healthInterval time.Duration) *mesh.Redis {
	t.Helper()
	r, err := mesh.NewRedis(mesh.RedisConfig{Config: cfg, URL: url, HealthInterval: healthInterval})
	if err != nil {
		t.Fatalf("NewRedis: %v", err)
	}
	t.Cleanup(r.Close)
	testenv.WaitFor(t, 5*time.Second, "registry on "+url+" healthy", r.Healthy)
	return r
}

// backends lists the implementations; each newEnv starts a fresh store.
var backends = []struct {
	name   string
	newEnv func(t testing.TB) env
}{
	{"memory", func(testing.TB) env { return &memoryEnv{store: mesh.NewMemoryStore(nil)} }},
	{"redis", func(t testing.TB) env { return &redisEnv{srv: testenv.StartRedis(t)} }},
	{"redis-acl", newACLEnv},
}

// ctx returns a context with a deadline that ends with the test.
func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

// cfg is a Config for replica with its own metrics set and a JSON logger into logs
// (nil: discard).
func cfg(replica string, logs *testenv.SyncBuffer) mesh.Config {
	c := mesh.Config{ReplicaID: replica, Metrics: metrics.NewSet()}
	if logs != nil {
		c.Logger = jsonLogger(logs)
	}
	return c
}

// jsonLogger logs JSON at debug level into logs.
func jsonLogger(logs *testenv.SyncBuffer) *slog.Logger {
	return slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func claim(t testing.TB, r mesh.Registry, agent string, hint uint64) uint64 {
	t.Helper()
	e, err := r.Claim(ctx(t), agent, hint)
	if err != nil {
		t.Fatalf("Claim(%q, %d): %v", agent, hint, err)
	}
	return e
}

// claimEventually is claim for a registry that was just (re)connected: on a
// loaded machine (the race detector, a busy CI host) the first call may
// miss its 1s OpTimeout, which is not what these tests are about; it
// retries ErrUnavailable for up to 10s.
func claimEventually(t testing.TB, r mesh.Registry, agent string, hint uint64) uint64 {
	t.Helper()
	var e uint64
	var err error
	testenv.WaitFor(t, 10*time.Second, "a claim on a healthy registry", func() bool {
		e, err = r.Claim(ctx(t), agent, hint)
		return err == nil || !errors.Is(err, mesh.ErrUnavailable)
	})
	if err != nil {
		t.Fatalf("Claim(%q, %d): %v", agent, hint, err)
	}
	return e
}

// heartbeat reports whether r still owns agent at epoch; no owner at all
// (ErrOwnerGone) is not owning it either.
func heartbeat(t testing.TB, r mesh.Registry, agent string, epoch uint64) bool {
	t.Helper()
	owned, err := r.Heartbeat(ctx(t), agent, epoch)
	if err != nil && !errors.Is(err, mesh.ErrOwnerGone) {
		t.Fatalf("Heartbeat(%q, %d): %v", agent, epoch, err)
	}
	return owned
}

func addConnectors(t testing.TB, r mesh.Registry, agent string, epoch uint64, connectors ...string) {
	t.Helper()
	if err := r.AddConnectors(ctx(t), agent, epoch, connectors); err != nil {
		t.Fatalf("AddConnectors(%q, %d, %v): %v", agent, epoch, connectors, err)
	}
}

// owner returns the owner of agent, or a zero Owner when there is none.
func owner(t testing.TB, r mesh.Registry, agent string) mesh.Owner {
	t.Helper()
	o, found, err := r.Owner(ctx(t), agent)
	if err != nil {
		t.Fatalf("Owner(%q): %v", agent, err)
	}
	if found != (o != mesh.Owner{}) {
		t.Fatalf("Owner(%q) = %+v, found=%v", agent, o, found)
	}
	return o
}

func agents(t testing.TB, r mesh.Registry, connector string) []mesh.AgentInfo {
	t.Helper()
	a, err := r.Agents(ctx(t), connector)
	if err != nil {
		t.Fatalf("Agents(%q): %v", connector, err)
	}
	return a
}

func hubs(t testing.TB, r mesh.Registry) map[string]string {
	t.Helper()
	h, err := r.Hubs(ctx(t))
	if err != nil {
		t.Fatalf("Hubs: %v", err)
	}
	return h
}

func sweep(t testing.TB, r mesh.Registry) int {
	t.Helper()
	n, err := r.Sweep(ctx(t))
	if err != nil {
		t.Fatalf("Sweep: %v", err)
	}
	return n
}

// wantErr fails unless err wraps target.
func wantErr(t testing.TB, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: err = %v, want %v", what, err, target)
	}
}

// metric reads one series of a registry's metrics set.
func metric(t testing.TB, c mesh.Config, series string) float64 {
	t.Helper()
	return testenv.Metric(t, c.Metrics.WritePrometheus, series)
}

// logged reports whether logs hold a JSON record with msg event that contains every
// one of the substrings.
func logged(logs *testenv.SyncBuffer, event string, substrings ...string) bool {
	for _, line := range strings.Split(logs.String(), "\n") {
		if !strings.Contains(line, `"msg":"`+event+`"`) {
			continue
		}
		ok := true
		for _, s := range substrings {
			ok = ok && strings.Contains(line, s)
		}
		if ok {
			return true
		}
	}
	return false
}
