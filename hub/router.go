package hub

import (
	"net"
	"net/netip"
	"sync"
)

// router maps connectors to the tunnels that serve them. It is the only hub
// state shared between event loops. A stream's other end is a local agent's
// tunnel today; a mesh link to a peer hub plugs in here later.
type router struct {
	mu      sync.Mutex
	byConn  map[string][]*tunnel // guarded by mu
	tunnels map[*tunnel]struct{} // guarded by mu
}

func (r *router) init() {
	r.byConn = make(map[string][]*tunnel)
	r.tunnels = make(map[*tunnel]struct{})
}

// add makes t eligible for its connectors.
func (r *router) add(t *tunnel) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tunnels[t] = struct{}{}
	for _, c := range t.connectors {
		r.byConn[c] = append(r.byConn[c], t)
	}
}

// remove makes t ineligible at once.
func (r *router) remove(t *tunnel) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.tunnels[t]; !ok {
		return
	}
	delete(r.tunnels, t)
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

// pick returns the tunnel with the fewest active streams for connector and
// counts the new stream on it, or nil when no agent serves it.
func (r *router) pick(connector string) *tunnel {
	r.mu.Lock()
	defer r.mu.Unlock()
	var best *tunnel
	var bestN int32
	for _, t := range r.byConn[connector] {
		if n := t.active.Load(); best == nil || n < bestN {
			best, bestN = t, n
		}
	}
	if best != nil {
		best.active.Add(1)
	}
	return best
}

// agents returns how many tunnels serve connector.
func (r *router) agents(connector string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.byConn[connector])
}

func (r *router) all() []*tunnel {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*tunnel, 0, len(r.tunnels))
	for t := range r.tunnels {
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
	if !h.cfg.MaskClientAddr {
		return ap.String()
	}
	ip := ap.Addr().Unmap()
	bits := 24
	if ip.Is6() {
		bits = 48
	}
	p, _ := ip.Prefix(bits)
	return p.String()
}
