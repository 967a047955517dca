package hub

import (
	"slices"
	"testing"
	"time"
)

// TestKeepMissing: an agent one registry read lacks stays in the routing
// cache for two heartbeat intervals from its first absence, then goes; one
// that comes back (or moved: a new entry) is taken as read; one that was
// invalidated meanwhile is not brought back.
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
	// a is claimed again (a new epoch), b still missing.
	a2 := Ownership{AgentID: "a", ReplicaID: "hub-a", Epoch: 3}
	step(1900*time.Millisecond, []Ownership{a2}, "a@hub-a", "b@hub-b")
	if got := o.remote["ldap"]; got[0] != a2 {
		t.Fatalf("a's entry %+v, want the new read %+v", got[0], a2)
	}
	// Two intervals after b's first absence it goes, and stays gone.
	step(2500*time.Millisecond, []Ownership{a2}, "a@hub-a")
	step(3000*time.Millisecond, []Ownership{a2}, "a@hub-a")
	if len(o.missing) != 0 {
		t.Fatalf("grace records left: %v", o.missing)
	}
	// b moved to hub-c: the new entry replaces the old at once.
	o.remote["ldap"] = []Ownership{a2, b}
	bc := Ownership{AgentID: "b", ReplicaID: "hub-c", Epoch: 4}
	step(4000*time.Millisecond, []Ownership{a2, bc}, "a@hub-a", "b@hub-c")
	// Invalidated (removed from the cache) while missing: not brought back.
	step(5000*time.Millisecond, []Ownership{a2}, "a@hub-a", "b@hub-c")
	o.remote["ldap"] = []Ownership{a2} // invalidate("b")
	step(5200*time.Millisecond, []Ownership{a2}, "a@hub-a")
	if len(o.missing) != 0 {
		t.Fatalf("grace records left after the invalidation: %v", o.missing)
	}
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
