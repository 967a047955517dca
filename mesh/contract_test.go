package mesh_test

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/nowconnect/nowconnect/internal/testenv"
	"github.com/nowconnect/nowconnect/mesh"
)

// shortTTL is the OwnerTTL / HubTTL of the expiry cases: long enough for a heartbeat
// every few polls under -race on a loaded box, short enough to keep the suite quick.
const shortTTL = 400 * time.Millisecond

// contract is the behaviour both implementations share; TestContract runs every case
// against each backend on a fresh store.
var contract = []struct {
	name string
	run  func(t *testing.T, e env)
}{
	{"claim returns increasing epochs and sets the owner", func(t *testing.T, e env) {
		a := e.open(t, cfg("hub-a", nil))
		before := uint64(time.Now().UnixMilli())
		e1 := claim(t, a, "agent-1", 0)
		if e1 < before {
			t.Fatalf("epoch %d below the server time %d ms: the time floor is missing", e1, before)
		}
		if got := owner(t, a, "agent-1"); got != (mesh.Owner{ReplicaID: "hub-a", Epoch: e1}) {
			t.Fatalf("Owner = %+v, want hub-a at %d", got, e1)
		}
		if got := owner(t, a, "agent-unknown"); got != (mesh.Owner{}) {
			t.Fatalf("Owner of an unclaimed agent = %+v, want none", got)
		}
		e2 := claim(t, a, "agent-1", 0)
		if e2 <= e1 {
			t.Fatalf("second claim epoch %d <= first %d", e2, e1)
		}
		if e3 := claim(t, a, "agent-1", e2+1000); e3 != e2+1001 {
			t.Fatalf("claim with hint %d = %d, want hint+1", e2+1000, e3)
		}
	}},

	{"heartbeat keeps ownership past the TTL, which ends it without one", func(t *testing.T, e env) {
		c := cfg("hub-a", nil)
		c.OwnerTTL = shortTTL
		a := e.open(t, c)
		ep := claim(t, a, "agent-1", 0)
		tick := time.NewTicker(shortTTL / 8)
		defer tick.Stop()
		for start := time.Now(); time.Since(start) < 3*shortTTL; <-tick.C {
			if !heartbeat(t, a, "agent-1", ep) {
				t.Fatalf("heartbeat lost ownership after %v (TTL %v)", time.Since(start), shortTTL)
			}
		}
		if got := owner(t, a, "agent-1"); got.Epoch != ep {
			t.Fatalf("Owner after heartbeats = %+v, want epoch %d", got, ep)
		}
		testenv.WaitFor(t, 5*time.Second, "owner entry expired", func() bool {
			return owner(t, a, "agent-1") == mesh.Owner{}
		})
		if owned, err := a.Heartbeat(ctx(t), "agent-1", ep); owned || !errors.Is(err, mesh.ErrOwnerGone) {
			t.Fatalf("heartbeat of an expired ownership = %v, %v; want ErrOwnerGone (nobody owns it)", owned, err)
		}
		if owner(t, a, "agent-1") != (mesh.Owner{}) {
			t.Fatal("heartbeat revived an expired ownership")
		}
	}},

	{"fencing: a newer claim by another replica wins", func(t *testing.T, e env) {
		a, b := e.open(t, cfg("hub-a", nil)), e.open(t, cfg("hub-b", nil))
		ea := claim(t, a, "agent-1", 0)
		eb := claim(t, b, "agent-1", 0)
		if eb <= ea {
			t.Fatalf("B's epoch %d <= A's %d", eb, ea)
		}
		if owned, err := a.Heartbeat(ctx(t), "agent-1", ea); owned || err != nil {
			t.Fatalf("A's heartbeat after B claimed the agent = %v, %v; want fenced out (false, nil)", owned, err)
		}
		if !heartbeat(t, b, "agent-1", eb) {
			t.Fatal("B's heartbeat does not own the agent it claimed")
		}
		if heartbeat(t, b, "agent-1", ea) {
			t.Fatal("B's heartbeat owns the agent at A's older epoch")
		}
		wantErr(t, "A.AddConnectors at a fenced epoch", a.AddConnectors(ctx(t), "agent-1", ea, []string{"ldap"}), mesh.ErrNotOwner)
		wantErr(t, "A.Release at a fenced epoch", a.Release(ctx(t), "agent-1", ea), mesh.ErrNotOwner)
		if got := owner(t, a, "agent-1"); got != (mesh.Owner{ReplicaID: "hub-b", Epoch: eb}) {
			t.Fatalf("Owner = %+v, want hub-b at %d", got, eb)
		}
		if got := agents(t, a, "ldap"); len(got) != 0 {
			t.Fatalf("a fenced AddConnectors was recorded: %+v", got)
		}
		ea2 := claim(t, a, "agent-1", 0)
		if ea2 <= eb {
			t.Fatalf("A's reclaim epoch %d <= B's %d", ea2, eb)
		}
		if heartbeat(t, b, "agent-1", eb) {
			t.Fatal("B's heartbeat still owns the agent after A claimed it back")
		}
	}},

	{"release is compare-and-delete", func(t *testing.T, e env) {
		a := e.open(t, cfg("hub-a", nil))
		ep := claim(t, a, "agent-1", 0)
		addConnectors(t, a, "agent-1", ep, "ldap")
		if err := a.Release(ctx(t), "agent-1", ep); err != nil {
			t.Fatalf("Release: %v", err)
		}
		if got := owner(t, a, "agent-1"); got != (mesh.Owner{}) {
			t.Fatalf("Owner after release = %+v", got)
		}
		if got := agents(t, a, "ldap"); len(got) != 0 {
			t.Fatalf("Agents after release = %+v", got)
		}
		if heartbeat(t, a, "agent-1", ep) {
			t.Fatal("heartbeat owns a released agent")
		}
		wantErr(t, "second Release", a.Release(ctx(t), "agent-1", ep), mesh.ErrNotOwner)
		if e2 := claim(t, a, "agent-1", 0); e2 <= ep {
			t.Fatalf("claim after release %d <= %d: the stored epoch was lost", e2, ep)
		}
	}},

	{"agents of a connector follow the current epoch's connectors", func(t *testing.T, e env) {
		a, b := e.open(t, cfg("hub-a", nil)), e.open(t, cfg("hub-b", nil))
		ex := claim(t, a, "agent-x", 0)
		addConnectors(t, a, "agent-x", ex, "ldap", "ad")
		ey := claim(t, b, "agent-y", 0)
		addConnectors(t, b, "agent-y", ey, "ldap")
		x := mesh.AgentInfo{AgentID: "agent-x", Owner: mesh.Owner{ReplicaID: "hub-a", Epoch: ex}}
		y := mesh.AgentInfo{AgentID: "agent-y", Owner: mesh.Owner{ReplicaID: "hub-b", Epoch: ey}}
		wantAgents(t, a, "ldap", x, y)
		wantAgents(t, b, "ad", x)
		wantAgents(t, a, "dns")

		addConnectors(t, a, "agent-x", ex, "dns") // adds within the epoch
		wantAgents(t, a, "dns", x)
		wantAgents(t, a, "ldap", x, y)

		// B takes agent-x over; under its epoch the agent serves only what B adds.
		bx := claim(t, b, "agent-x", 0)
		wantAgents(t, a, "ad")
		wantAgents(t, a, "ldap", y)
		addConnectors(t, b, "agent-x", bx, "ad")
		wantAgents(t, a, "ad", mesh.AgentInfo{AgentID: "agent-x", Owner: mesh.Owner{ReplicaID: "hub-b", Epoch: bx}})
		wantAgents(t, a, "ldap", y)
		addConnectors(t, b, "agent-x", bx) // no connectors: only the fence check
		wantErr(t, "AddConnectors at the old epoch", a.AddConnectors(ctx(t), "agent-x", ex, nil), mesh.ErrNotOwner)
	}},

	{"expired agents leave Owner and Agents, and Sweep prunes them", func(t *testing.T, e env) {
		c := cfg("hub-a", nil)
		c.OwnerTTL = shortTTL
		a := e.open(t, c)
		ex := claim(t, a, "agent-x", 0)
		addConnectors(t, a, "agent-x", ex, "ldap")
		ey := claim(t, a, "agent-y", 0)
		addConnectors(t, a, "agent-y", ey, "ldap")
		if n := sweep(t, a); n != 0 {
			t.Fatalf("Sweep with everything live removed %d", n)
		}
		// agent-y keeps heartbeating (on every poll); agent-x stops.
		testenv.WaitFor(t, 5*time.Second, "agent-x expired", func() bool {
			if !heartbeat(t, a, "agent-y", ey) {
				t.Fatal("agent-y lost ownership while heartbeating")
			}
			return owner(t, a, "agent-x") == mesh.Owner{}
		})
		y := mesh.AgentInfo{AgentID: "agent-y", Owner: mesh.Owner{ReplicaID: "hub-a", Epoch: ey}}
		wantAgents(t, a, "ldap", y)
		heartbeat(t, a, "agent-y", ey)
		if n := sweep(t, a); n != 1 {
			t.Fatalf("Sweep removed %d, want agent-x's one membership", n)
		}
		heartbeat(t, a, "agent-y", ey)
		if n := sweep(t, a); n != 0 {
			t.Fatalf("second Sweep removed %d, want 0", n)
		}
		wantAgents(t, a, "ldap", y)
	}},

	{"hubs publish with a TTL and Sweep prunes expired ones", func(t *testing.T, e env) {
		ca, cb := cfg("hub-a", nil), cfg("hub-b", nil)
		ca.HubTTL, cb.HubTTL = shortTTL, shortTTL
		a, b := e.open(t, ca), e.open(t, cb)
		for _, p := range []struct {
			r   mesh.Registry
			url string
		}{{a, "wss://a.example/mesh"}, {b, "wss://b.example/mesh"}} {
			if err := p.r.PublishHub(ctx(t), p.url); err != nil {
				t.Fatalf("PublishHub(%s): %v", p.url, err)
			}
		}
		want := map[string]string{"hub-a": "wss://a.example/mesh", "hub-b": "wss://b.example/mesh"}
		if got := hubs(t, b); !reflect.DeepEqual(got, want) {
			t.Fatalf("Hubs = %v, want %v", got, want)
		}
		publishA := func() {
			if err := a.PublishHub(ctx(t), "wss://a.example/mesh"); err != nil {
				t.Fatalf("PublishHub: %v", err)
			}
		}
		testenv.WaitFor(t, 5*time.Second, "hub-b expired", func() bool {
			publishA()
			return reflect.DeepEqual(hubs(t, a), map[string]string{"hub-a": "wss://a.example/mesh"})
		})
		publishA()
		if n := sweep(t, a); n != 1 {
			t.Fatalf("Sweep removed %d, want hub-b's entry", n)
		}
		publishA()
		if n := sweep(t, a); n != 0 {
			t.Fatalf("second Sweep removed %d, want 0", n)
		}
		wantErr(t, "PublishHub(\"\")", a.PublishHub(ctx(t), ""), mesh.ErrInvalidArgument)
	}},

	{"ClearOwn removes a previous run's entries of the same replica only", func(t *testing.T, e env) {
		old := e.open(t, cfg("hub-a", nil))
		b := e.open(t, cfg("hub-b", nil))
		ex := claim(t, old, "agent-x", 0)
		addConnectors(t, old, "agent-x", ex, "ldap")
		claim(t, old, "agent-y", 0)
		ey := claim(t, b, "agent-y", 0) // B took agent-y over meanwhile
		ez := claim(t, b, "agent-z", 0)
		addConnectors(t, b, "agent-z", ez, "ldap")
		for _, r := range []mesh.Registry{old, b} {
			if err := r.PublishHub(ctx(t), "wss://"+map[mesh.Registry]string{old: "a", b: "b"}[r]+"/mesh"); err != nil {
				t.Fatalf("PublishHub: %v", err)
			}
		}
		old.Close() // the previous run ends without releasing (a crash)

		a := e.open(t, cfg("hub-a", nil))
		if err := a.ClearOwn(ctx(t)); err != nil {
			t.Fatalf("ClearOwn: %v", err)
		}
		if got := owner(t, a, "agent-x"); got != (mesh.Owner{}) {
			t.Fatalf("agent-x still owned after ClearOwn: %+v", got)
		}
		if got := owner(t, a, "agent-y"); got != (mesh.Owner{ReplicaID: "hub-b", Epoch: ey}) {
			t.Fatalf("ClearOwn touched hub-b's agent-y: %+v", got)
		}
		if got := owner(t, a, "agent-z"); got != (mesh.Owner{ReplicaID: "hub-b", Epoch: ez}) {
			t.Fatalf("ClearOwn touched hub-b's agent-z: %+v", got)
		}
		wantAgents(t, a, "ldap", mesh.AgentInfo{AgentID: "agent-z", Owner: mesh.Owner{ReplicaID: "hub-b", Epoch: ez}})
		if got := hubs(t, a); !reflect.DeepEqual(got, map[string]string{"hub-b": "wss://b/mesh"}) {
			t.Fatalf("Hubs after ClearOwn = %v, want only hub-b", got)
		}
		if n := sweep(t, a); n != 1 {
			t.Fatalf("Sweep after ClearOwn removed %d, want agent-x's membership", n)
		}
		if e2 := claim(t, a, "agent-x", 0); e2 <= ex {
			t.Fatalf("claim after ClearOwn %d <= %d", e2, ex)
		}
		if err := a.ClearOwn(ctx(t)); err != nil {
			t.Fatalf("second ClearOwn: %v", err)
		}
	}},

	{"FLUSHALL: the hint and the time floor keep epochs increasing", func(t *testing.T, e env) {
		a := e.open(t, cfg("hub-a", nil))
		e1 := claim(t, a, "agent-1", 0)
		e.flushAll(t)
		if got := owner(t, a, "agent-1"); got != (mesh.Owner{}) {
			t.Fatalf("Owner after FLUSHALL = %+v", got)
		}
		e2 := claim(t, a, "agent-1", e1)
		if e2 <= e1 {
			t.Fatalf("claim with hint after FLUSHALL %d <= %d", e2, e1)
		}
		// Without a hint the server time alone carries it once a millisecond passed.
		e.flushAll(t)
		testenv.WaitFor(t, 5*time.Second, "clock past the last epoch", func() bool {
			return uint64(time.Now().UnixMilli()) > e2
		})
		if e3 := claim(t, a, "agent-1", 0); e3 <= e2 {
			t.Fatalf("claim without hint after FLUSHALL %d <= %d", e3, e2)
		}
	}},

	{"a hint above the server time (clock stepped back) wins", func(t *testing.T, e env) {
		a := e.open(t, cfg("hub-a", nil))
		hint := uint64(time.Now().Add(time.Hour).UnixMilli())
		if got := claim(t, a, "agent-1", hint); got != hint+1 {
			t.Fatalf("claim with hint %d = %d, want hint+1", hint, got)
		}
		if got := claim(t, a, "agent-1", 0); got != hint+2 {
			t.Fatalf("next claim = %d, want stored+1 = %d", got, hint+2)
		}
		e.flushAll(t) // the stored epoch is lost and the clock is an hour behind
		if got := claim(t, a, "agent-1", hint+2); got != hint+3 {
			t.Fatalf("claim after FLUSHALL with hint %d = %d, want hint+1", hint+2, got)
		}
		if got := claim(t, a, "agent-1", mesh.MaxHint); got != mesh.MaxHint+1 {
			t.Fatalf("claim with MaxHint = %d, want %d", got, uint64(mesh.MaxHint+1))
		}
		_, err := a.Claim(ctx(t), "agent-1", 0)
		wantErr(t, "claim past 2^53-1", err, mesh.ErrEpochOverflow)
	}},

	{"invalid arguments are refused", func(t *testing.T, e env) {
		c := cfg("hub-a", nil)
		a := e.open(t, c)
		ep := claim(t, a, "agent-1", 0)
		_, err := a.Claim(ctx(t), "", 0)
		wantErr(t, "Claim(\"\")", err, mesh.ErrInvalidArgument)
		_, err = a.Claim(ctx(t), "agent-1", mesh.MaxHint+1)
		wantErr(t, "Claim above MaxHint", err, mesh.ErrInvalidArgument)
		_, err = a.Heartbeat(ctx(t), "agent-1", 0)
		wantErr(t, "Heartbeat at epoch 0", err, mesh.ErrInvalidArgument)
		wantErr(t, "Release at epoch 0", a.Release(ctx(t), "agent-1", 0), mesh.ErrInvalidArgument)
		wantErr(t, "AddConnectors with an empty connector", a.AddConnectors(ctx(t), "agent-1", ep, []string{"ldap", ""}), mesh.ErrInvalidArgument)
		_, err = a.Agents(ctx(t), "")
		wantErr(t, "Agents(\"\")", err, mesh.ErrInvalidArgument)
		_, _, err = a.Owner(ctx(t), "")
		wantErr(t, "Owner(\"\")", err, mesh.ErrInvalidArgument)
		if got := agents(t, a, "ldap"); len(got) != 0 {
			t.Fatalf("a refused AddConnectors recorded %+v", got)
		}
	}},

	{"metrics count operations and failures", func(t *testing.T, e env) {
		c := cfg("hub-a", nil)
		a := e.open(t, c)
		if got := metric(t, c, `nowconnect_registry_up`); got != 1 {
			t.Fatalf("nowconnect_registry_up = %v, want 1", got)
		}
		ep := claim(t, a, "agent-1", 0)
		claim(t, a, "agent-1", 0) // fences ep
		wantErr(t, "Release at the fenced epoch", a.Release(ctx(t), "agent-1", ep), mesh.ErrNotOwner)
		_, err := a.Claim(ctx(t), "", 0)
		wantErr(t, "Claim(\"\")", err, mesh.ErrInvalidArgument)
		if got := metric(t, c, `nowconnect_registry_op_seconds_count{op="claim"}`); got != 3 {
			t.Fatalf("claim op_seconds count = %v, want 3", got)
		}
		if got := metric(t, c, `nowconnect_registry_errors_total{op="claim"}`); got != 1 {
			t.Fatalf("claim errors = %v, want 1 (the invalid one)", got)
		}
		if got := metric(t, c, `nowconnect_registry_errors_total{op="release"}`); got != 0 {
			t.Fatalf("release errors = %v, want 0: ErrNotOwner is an answer", got)
		}
		if got := metric(t, c, `nowconnect_registry_op_seconds_bucket{op="claim",le="5"}`); got != 3 {
			t.Fatalf("claim histogram bucket le=5 = %v, want 3", got)
		}
	}},

	{"Close stops the registry", func(t *testing.T, e env) {
		c := cfg("hub-a", nil)
		a := e.open(t, c)
		a.Close()
		if a.Healthy() {
			t.Fatal("Healthy after Close")
		}
		_, err := a.Claim(ctx(t), "agent-1", 0)
		wantErr(t, "Claim after Close", err, mesh.ErrClosed)
		if got := metric(t, c, `nowconnect_registry_up`); got != 0 {
			t.Fatalf("nowconnect_registry_up after Close = %v, want 0", got)
		}
		a.Close() // idempotent
	}},

	{"watch: every replica's AddConnectors notifies; cancel and Close end it", func(t *testing.T, e env) {
		cb := cfg("hub-b", nil)
		a, b := e.open(t, cfg("hub-a", nil)), e.open(t, cb)
		got := make(chan string, 64)
		watch := func(ctx context.Context) <-chan error {
			done := make(chan error, 1)
			go func() { done <- b.Watch(ctx, func(id string) { got <- id }) }() // joined through done
			return done
		}
		ended := func(done <-chan error, want error) {
			t.Helper()
			select {
			case err := <-done:
				if !errors.Is(err, want) {
					t.Fatalf("Watch returned %v, want %v", err, want)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("Watch still running 5s after it should have ended (%v)", want)
			}
		}
		wctx, cancel := context.WithCancel(context.Background())
		done := watch(wctx)
		ep := claim(t, a, "agent-1", 0)
		// The subscription starts asynchronously: publish until one arrives.
		testenv.WaitFor(t, 5*time.Second, "hub-b notified of hub-a's agent", func() bool {
			addConnectors(t, a, "agent-1", ep, "ldap")
			for {
				select {
				case id := <-got:
					if id != "agent-1" {
						t.Fatalf("notified of %q, want agent-1", id)
					}
					return true
				case <-time.After(50 * time.Millisecond):
					return false
				}
			}
		})
		cancel()
		ended(done, context.Canceled)
		done = watch(context.Background())
		b.Close()
		ended(done, mesh.ErrClosed)
		if v := metric(t, cb, `nowconnect_registry_notifications_total`); v < 1 {
			t.Errorf("nowconnect_registry_notifications_total = %v after a notification", v)
		}
		if v := metric(t, cb, `nowconnect_registry_errors_total{op="watch"}`); v != 0 {
			t.Errorf(`nowconnect_registry_errors_total{op="watch"} = %v: a cancel or a Close is no failure`, v)
		}
		if err := b.Watch(context.Background(), func(string) {}); !errors.Is(err, mesh.ErrClosed) {
			t.Fatalf("Watch on a closed registry = %v, want ErrClosed", err)
		}
	}},
}

func TestContract(t *testing.T) {
	testenv.CheckGoroutines(t)
	for _, b := range backends {
		for _, c := range contract {
			t.Run(b.name+"/"+c.name, func(t *testing.T) {
				c.run(t, b.newEnv(t))
			})
		}
	}
}

// wantAgents fails unless Agents(connector) is exactly want, in agent id order.
func wantAgents(t testing.TB, r mesh.Registry, connector string, want ...mesh.AgentInfo) {
	t.Helper()
	got := agents(t, r, connector)
	if len(got) == 0 && len(want) == 0 {
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Agents(%q) = %+v, want %+v", connector, got, want)
	}
}
