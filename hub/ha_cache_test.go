package hub

import (
	"slices"
	"testing"
	"time"
)

// TestKeepMissing: when a registry read lists no agent for a connector (as
// after a restart that lost every entry), the previous read's agents stay in
// the routing cache for two heartbeat intervals from their first absence,
// then go. A read that lists any agent is taken as it is: entries it lacks
// go at once (clients must not be sent to an agent that left while a listed
// one serves). One that moved is taken from the read; one invalidated
// meanwhile is not brought back.
func TestKeepMissing(t *testing.T) {
	o := &owners{cfg: HAConfig{HeartbeatInterval: time.Second},
		remote: map[string][]Ownership{}, missing: map[missingKey]time.Time{}}
	t0 := time.Unix(1000, 0)
	a := Ownership{AgentID: "a", ReplicaID: "hub-a", Epoch: 1}
	b := Ownership{AgentID: "b", ReplicaID: "hub-b", Epoch: 2}
	ids := func(l []Ownership) []string {
		var out []string
		for _, x := range l {
			out = append(out, x.AgentID+"@"+x.ReplicaID)
		}
		slices.Sort(out)
		return out
	}
	step := func(at time.Duration, read []Ownership, want ...string) {
		t.Helper()
		got := o.keepMissingLocked("ldap", read, t0.Add(at))
		o.remote["ldap"] = got
		if !slices.Equal(ids(got), want) {
			t.Fatalf("at %v, read %v: cache %v, want %v", at, ids(read), ids(got), want)
		}
	}
	step(0, []Ownership{a, b}, "a@hub-a", "b@hub-b")
	// The registry restarted empty: both kept.
	step(500*time.Millisecond, nil, "a@hub-a", "b@hub-b")
	step(1500*time.Millisecond, nil, "a@hub-a", "b@hub-b")
	// a is claimed again (a new epoch): the read lists an agent, so b, still
	// missing, goes at once, and its grace record with it.
	a2 := Ownership{AgentID: "a", ReplicaID: "hub-a", Epoch: 3}
	step(1900*time.Millisecond, []Ownership{a2}, "a@hub-a")
	if got := o.remote["ldap"]; got[0] != a2 {
		t.Fatalf("a's entry %+v, want the new read %+v", got[0], a2)
	}
	if len(o.missing) != 0 {
		t.Fatalf("grace records left: %v", o.missing)
	}
	// Empty again: a is kept two intervals from its first absence, then goes.
	step(2000*time.Millisecond, nil, "a@hub-a")
	step(3900*time.Millisecond, nil, "a@hub-a")
	step(4100*time.Millisecond, nil)
	if len(o.missing) != 0 {
		t.Fatalf("grace records left after the grace: %v", o.missing)
	}
	// A normal departure: b left while a stays listed; b goes at once.
	step(5000*time.Millisecond, []Ownership{a2, b}, "a@hub-a", "b@hub-b")
	step(5100*time.Millisecond, []Ownership{a2}, "a@hub-a")
	// b moved to hub-c: the new entry replaces the old at once.
	bc := Ownership{AgentID: "b", ReplicaID: "hub-c", Epoch: 4}
	step(6000*time.Millisecond, []Ownership{a2, bc}, "a@hub-a", "b@hub-c")
	// Invalidated (removed from the cache), then an empty read: not brought back.
	o.remote["ldap"] = []Ownership{a2} // invalidate("b")
	step(6200*time.Millisecond, nil, "a@hub-a")
}

// TestEpochOfReclaimed: streams opened with an epoch this hub claimed again
// from are welcome (also while the new claim is being made); other epochs
// get the current one (the caller refuses them, stale_epoch); a hub fenced
// out welcomes none.
func TestEpochOfReclaimed(t *testing.T) {
	c := &claim{agentID: "a", epoch: 5, owned: true}
	o := &owners{claims: map[string]*claim{"a": c}}
	check := func(what string, e, want uint64, wantOK bool) {
		t.Helper()
		if got, ok := o.epochOf("a", e); got != want || ok != wantOK {
			t.Errorf("%s: epochOf(a, %d) = %d, %v; want %d, %v", what, e, got, ok, want, wantOK)
		}
	}
	check("owned", 5, 5, true)
	check("owned, another epoch", 4, 5, true)
	// reclaim: the claim is being made again.
	c.epoch, c.owned, c.reclaimed = 0, false, []uint64{5}
	check("reclaiming, the old epoch", 5, 5, true)
	check("reclaiming, another epoch", 7, 0, false)
	c.epoch, c.owned = 9, true
	check("claimed again, the new epoch", 9, 9, true)
	check("claimed again, the old epoch", 5, 5, true)
	check("claimed again, another epoch", 6, 9, true)
	c.lost = true
	check("fenced out", 5, 0, false)
	check("fenced out, the current epoch", 9, 0, false)
	if _, ok := o.epochOf("b", 1); ok {
		t.Error("an agent without a claim is owned")
	}
}
