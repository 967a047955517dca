package hub

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/nowconnect/nowconnect/engine"
	"github.com/nowconnect/nowconnect/internal/logmask"
)

// router maps connectors to the tunnels that serve them, grouped by agent.
// It is the only hub state shared between event loops.
//
// pick spreads new streams over agents first (the agent with the fewest
// active streams, whatever its number of tunnels), then over that agent's
// tunnels (fewest active streams), and skips a tunnel that owes an answer
// and has been silent (suspect: a frozen agent) while any other tunnel can
// serve the connector.
type router struct {
	mu      sync.Mutex
	byConn  map[string][]*tunnel   // guarded by mu: tunnels serving a connector
	tunnels map[*tunnel]struct{}   // guarded by mu: every routable tunnel
	byAgent map[string]*agentState // guarded by mu: agents with at least one routable tunnel
	pending map[*tunnel]struct{}   // guarded by mu: tunnels before HELLO (closed by Stop too)
}

// agentState is what the tunnels of one agent id share.
type agentState struct {
	id      string
	active  atomic.Int32 // streams on all its tunnels
	tunnels int          // guarded by router.mu
}

func (r *router) init() {
	r.byConn = make(map[string][]*tunnel)
	r.tunnels = make(map[*tunnel]struct{})
	r.byAgent = make(map[string]*agentState)
	r.pending = make(map[*tunnel]struct{})
}

// opened records a tunnel before its HELLO, so that Stop closes it.
func (r *router) opened(t *tunnel) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pending[t] = struct{}{}
}

// add makes t eligible for its connectors and returns its agent's state.
func (r *router) add(t *tunnel) *agentState {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.pending, t)
	a := r.byAgent[t.agentID]
	if a == nil {
		a = &agentState{id: t.agentID}
		r.byAgent[t.agentID] = a
	}
	a.tunnels++
	t.agent = a
	r.tunnels[t] = struct{}{}
	for _, c := range t.connectors {
		r.byConn[c] = append(r.byConn[c], t)
	}
	return a
}

// remove makes t ineligible at once.
func (r *router) remove(t *tunnel) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.pending, t)
	if _, ok := r.tunnels[t]; !ok {
		return
	}
	delete(r.tunnels, t)
	if a := t.agent; a != nil {
		if a.tunnels--; a.tunnels == 0 && r.byAgent[a.id] == a {
			delete(r.byAgent, a.id)
		}
	}
	for _, c := range t.connectors {
		ts := r.byConn[c]
		for i, x := range ts {
			if x == t {
				ts = append(ts[:i], ts[i+1:]...)
				break
			}
		}
		if len(ts) == 0 {
			delete(r.byConn, c)
		} else {
			r.byConn[c] = ts
		}
	}
}

// pick returns the lane for a new stream of connector and counts the
// stream on it (and on its agent), or nil when no agent serves it.
func (r *router) pick(connector string) *lane {
	r.mu.Lock()
	defer r.mu.Unlock()
	var best *tunnel
	var bestSuspect bool
	var bestAgent, bestTunnel int32
	for _, t := range r.byConn[connector] {
		if t.barred.Load() {
			continue
		}
		suspect := t.suspect.Load()
		an, tn := t.agent.active.Load(), t.active.Load()
		better := best == nil ||
			(bestSuspect && !suspect) ||
			(bestSuspect == suspect && (an < bestAgent || an == bestAgent && tn < bestTunnel))
		if better {
			best, bestSuspect, bestAgent, bestTunnel = t, suspect, an, tn
		}
	}
	if best == nil {
		return nil
	}
	best.active.Add(1)
	best.agent.active.Add(1)
	return &best.lane
}

// pickAgent returns the lane of a tunnel of agentID that serves connector
// (for a stream another hub forwards), counted, or nil: one without overdue
// OPENs first, then the least active; between equals, one on near, the loop
// that reads the link (its frames then need no handoff, meshread.go).
func (r *router) pickAgent(connector, agentID string, near *engine.Loop) *lane {
	r.mu.Lock()
	defer r.mu.Unlock()
	var best *tunnel
	better := func(t *tunnel) bool {
		if bs, ts := best.suspect.Load(), t.suspect.Load(); bs != ts {
			return bs
		}
		if ba, ta := best.active.Load(), t.active.Load(); ba != ta {
			return ta < ba
		}
		return t.loop == near && best.loop != near
	}
	for _, t := range r.byConn[connector] {
		if t.agentID != agentID || t.barred.Load() {
			continue
		}
		if best == nil || better(t) {
			best = t
		}
	}
	if best == nil {
		return nil
	}
	best.active.Add(1)
	best.agent.active.Add(1)
	return &best.lane
}

// agents returns how many agents serve connector (an agent with several
// tunnels counts once).
func (r *router) agents(connector string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for i, t := range r.byConn[connector] {
		seen := false
		for _, u := range r.byConn[connector][:i] {
			if u.agent == t.agent {
				seen = true
				break
			}
		}
		if !seen {
			n++
		}
	}
	return n
}

func (r *router) agentCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.byAgent)
}

func (r *router) tunnelCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.tunnels)
}

// all returns the routable tunnels.
func (r *router) all() []*tunnel {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*tunnel, 0, len(r.tunnels))
	for t := range r.tunnels {
		out = append(out, t)
	}
	return out
}

// everyTunnel returns the routable tunnels and those still in their
// handshake.
func (r *router) everyTunnel() []*tunnel {
	out := r.all()
	r.mu.Lock()
	defer r.mu.Unlock()
	for t := range r.pending {
		out = append(out, t)
	}
	return out
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort()
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

func allowed(list []netip.Prefix, ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, p := range list {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// maskAddr renders a client address for logs, hiding the host part when
// configured.
func (h *Hub) maskAddr(ap netip.AddrPort) string {
	if !h.mask.Load() {
		return ap.String()
	}
	return logmask.Addr(ap)
}
