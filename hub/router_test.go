package hub

import (
	"testing"

	"github.com/nowconnect/nowconnect/engine"
)

// TestPickAgent: a stream another hub forwards goes to a tunnel of its agent
// without overdue OPENs, then to the least active, and between equals to the
// one on the loop that reads the link.
func TestPickAgent(t *testing.T) {
	near, far := &engine.Loop{}, &engine.Loop{}
	type tun struct {
		loop    *engine.Loop
		active  int32
		suspect bool
	}
	for _, c := range []struct {
		name string
		tuns []tun
		want int
	}{
		{"least active", []tun{{far, 3, false}, {near, 1, false}}, 1},
		{"least active, far", []tun{{near, 2, false}, {far, 1, false}}, 1},
		{"equals: the near loop", []tun{{far, 1, false}, {near, 1, false}}, 1},
		{"equals: the near loop first", []tun{{near, 1, false}, {far, 1, false}}, 0},
		{"a suspect one only when alone", []tun{{near, 0, true}, {far, 5, false}}, 1},
		{"a suspect one, listed second", []tun{{far, 5, false}, {near, 0, true}}, 0},
		{"all suspect: least active", []tun{{far, 5, true}, {near, 2, true}}, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			var r router
			r.init()
			ts := make([]*tunnel, len(c.tuns))
			for i, x := range c.tuns {
				tn := &tunnel{connectors: []string{"ldap"}}
				tn.agentID, tn.loop = "agent-1", x.loop
				tn.active.Store(x.active)
				tn.suspect.Store(x.suspect)
				r.add(tn)
				ts[i] = tn
			}
			other := &tunnel{connectors: []string{"ldap"}}
			other.agentID, other.loop = "agent-2", near
			r.add(other)
			got := r.pickAgent("ldap", "agent-1", near)
			if got != &ts[c.want].lane {
				for i, tn := range ts {
					if got == &tn.lane {
						t.Fatalf("picked tunnel %d, want %d", i, c.want)
					}
				}
				t.Fatalf("picked another agent's tunnel, want %d", c.want)
			}
			if n := ts[c.want].active.Load(); n != c.tuns[c.want].active+1 {
				t.Errorf("picked tunnel's active = %d, want it counted", n)
			}
		})
	}
}
