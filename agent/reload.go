package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/gobwas/ws"

	"github.com/nowconnect/nowconnect/codec"
)

// Reload: what a SIGHUP changes in a running agent.
//
// Reload swaps the connector set (targets and PROXY protocol of every
// connector, and which connectors exist) and MaskClientAddr. A stream
// takes its connector when its OPEN arrives, so a new target applies to
// the next stream at once, and a removed connector's next OPEN gets
// OPEN_ERR(unknown_connector) while its live streams finish.
//
// The hub learns an agent's connectors only from HELLO. When the names
// change (one added or removed), rotateLoop rotates the tunnels
// make-before-break, one at a time: it dials a replacement for tunnel idx
// (a new HELLO with the new names); once the replacement's HELLO_ACK
// arrives it takes over the slot and GOAWAY goes out on the old tunnel
// (codec), whose streams finish while the hub gives it no new ones; the
// hub closes it once idle, and its tunnelLoop ends with it. The
// replacement's own tunnelLoop (started by rotateLoop, owned by Run) keeps
// the slot from then on. A replacement that fails (dial refused, the old
// tunnel dropped meanwhile) is closed and retried with backoff; a tunnel
// that reconnects on its own announces the new names anyway. A tunnel on
// protocol 1 cannot be retired (no GOAWAY): it announces the new names
// when it next reconnects, and a warning says so.
//
// Every other field of Config is ignored by Reload (it needs a restart;
// cmd names those keys). During a rotation the agent briefly holds one
// tunnel more than Config.Tunnels.

// connSet is an immutable set of connectors: Reload publishes a new one.
type connSet struct {
	names  []string // sorted, for HELLO
	byName map[string]*connector
	gen    uint64 // bumped when the names change: tunnels that announced an older one are rotated
}

// newConnSet builds the connectors of cfg, reusing those of prev that did
// not change (same target and PROXY setting: streams and metrics share
// them).
func newConnSet(cfg Config, prev *connSet) *connSet {
	cs := &connSet{byName: make(map[string]*connector, len(cfg.Connectors))}
	for name, addr := range cfg.Connectors {
		cs.names = append(cs.names, name)
		proxy := cfg.ProxyProtocol[name] == ProxyV2
		if prev != nil {
			if c := prev.byName[name]; c != nil && c.addr == addr && c.proxy == proxy {
				cs.byName[name] = c
				continue
			}
		}
		c := newConnector(cfg.Metrics, name, addr)
		c.proxy = proxy
		cs.byName[name] = c
	}
	slices.Sort(cs.names)
	if prev != nil {
		cs.gen = prev.gen
		if !slices.Equal(prev.names, cs.names) {
			cs.gen++
		}
	}
	return cs
}

// checkConnectors validates Connectors and ProxyProtocol (New and Reload).
func checkConnectors(cfg Config) []error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrConfig}, args...)...))
	}
	if len(cfg.Connectors) == 0 {
		bad("Connectors: at least one connector is required")
	}
	if len(cfg.Connectors) > codec.MaxConnectors {
		bad("Connectors: %d connectors, at most %d", len(cfg.Connectors), codec.MaxConnectors)
	}
	for _, name := range slices.Sorted(maps.Keys(cfg.Connectors)) {
		if l := len(name); l == 0 || l > 255 {
			bad("Connectors[%q]: name length %d out of range 1..255", name, l)
		}
		if _, _, err := net.SplitHostPort(cfg.Connectors[name]); err != nil {
			bad("Connectors[%q]: target %q: %v", name, cfg.Connectors[name], err)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(cfg.ProxyProtocol)) {
		if _, ok := cfg.Connectors[name]; !ok {
			bad("ProxyProtocol[%q]: no such connector", name)
		}
		if v := cfg.ProxyProtocol[name]; v != "" && v != ProxyV2 {
			bad("ProxyProtocol[%q]: unknown value %q (want %q or empty)", name, v, ProxyV2)
		}
	}
	return errs
}

// Reload applies cfg's Connectors, ProxyProtocol and MaskClientAddr (see
// the top of this file) and returns what changed, one human line each. An
// invalid cfg changes nothing: every problem is reported, joined, each
// wrapping ErrConfig. Other fields are ignored. Safe from any goroutine,
// running or not; reloads are serialised. Metrics of new connectors go to
// the Metrics set given to New.
func (a *Agent) Reload(cfg Config) (changes []string, err error) {
	if errs := checkConnectors(cfg); len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	a.reloadMu.Lock()
	defer a.reloadMu.Unlock()
	cfg.Metrics = a.cfg.Metrics
	prev := a.conns.Load()
	next := newConnSet(cfg, prev)
	for _, name := range next.names {
		c, old := next.byName[name], prev.byName[name]
		switch {
		case old == nil:
			changes = append(changes, fmt.Sprintf("connector %s added (%s)", name, c.addr))
		case c != old && c.addr != old.addr:
			changes = append(changes, fmt.Sprintf("connector %s target %s → %s", name, old.addr, c.addr))
		}
		if old != nil && c.proxy != old.proxy {
			changes = append(changes, fmt.Sprintf("connector %s proxy_protocol %q → %q", name, proxyName(old.proxy), proxyName(c.proxy)))
		}
	}
	for _, name := range prev.names {
		if next.byName[name] == nil {
			changes = append(changes, fmt.Sprintf("connector %s removed", name))
		}
	}
	a.conns.Store(next)
	if next.gen != prev.gen {
		changes = append(changes, "tunnels rotate to announce the connectors")
		a.kickRotate()
	}
	if was := a.mask.Swap(cfg.MaskClientAddr); was != cfg.MaskClientAddr {
		changes = append(changes, fmt.Sprintf("log.mask_client_addr %v → %v", was, cfg.MaskClientAddr))
	}
	return changes, nil
}

func proxyName(v2 bool) string {
	if v2 {
		return ProxyV2
	}
	return ""
}

func (a *Agent) kickRotate() {
	select {
	case a.rotateKick <- struct{}{}:
	default:
	}
}

// joinSlot records s, whose HELLO_ACK just arrived, as the session of its
// slot. A replacement takes over from the session it succeeds and GOAWAY
// goes out on that one; if that session ended meanwhile, the replacement
// is not needed and the returned error closes it (no stream exists on it
// yet: the reader handles HELLO_ACK before any OPEN). A plain session that
// announced an outdated connector set asks rotateLoop for a pass. Called
// by the session's reader.
func (a *Agent) joinSlot(s *session) error {
	a.slotMu.Lock()
	old := s.succeeds
	if old != nil && (old.ended || old.retired) {
		a.slotMu.Unlock()
		return closeCause{msg: "rotation: the tunnel to replace is gone", code: ws.StatusNormalClosure, reason: codec.ReasonSuperseded}
	}
	if old != nil {
		old.retired, s.promoted = true, true
	}
	a.slots[s.index] = s
	stale := s.set.gen != a.conns.Load().gen
	a.slotMu.Unlock()
	if old != nil {
		old.sendEmpty(codec.FrameGoAway, 0)
		a.m.rotations.inc()
		s.log.Info("tunnel_rotated", "agent_id", a.cfg.AgentID, "connectors", s.set.names,
			"old_streams", old.liveStreams())
		close(s.settled)
	}
	if stale {
		a.kickRotate()
	}
	return nil
}

// leaveSlot records that s's serve returned and reports whether its
// tunnelLoop ends: s was retired (its replacement holds the slot), or s
// was a replacement that never took over.
func (a *Agent) leaveSlot(s *session) bool {
	a.slotMu.Lock()
	defer a.slotMu.Unlock()
	s.ended = true
	if a.slots[s.index] == s {
		a.slots[s.index] = nil
	}
	return s.retired || (s.succeeds != nil && !s.promoted)
}

// isRetired reports whether GOAWAY went out on s.
func (a *Agent) isRetired(s *session) bool {
	a.slotMu.Lock()
	defer a.slotMu.Unlock()
	return s.retired
}

// retiredDrain bounds how long a retired tunnel, once the hub closed it,
// waits for its streams that exchanged both FINs but still write their
// last bytes to the target (a target may half-close before it read
// everything): the hub forgets a stream at both FINs, so it may close the
// tunnel before those bytes are out. They need no tunnel to finish.
const retiredDrain = 30 * time.Second

// drainRetired waits, up to retiredDrain or until Run ends, for the
// finishing streams of a retired session. Called by serve after the reader
// exited, before closeStreams.
func (s *session) drainRetired() {
	t := time.NewTimer(retiredDrain)
	defer t.Stop()
	for s.finishing() > 0 {
		select {
		case <-s.gone:
		case <-t.C:
			return
		case <-s.parent.Done():
			return
		}
	}
}

// finishing counts the streams that exchanged both FINs and still write to
// their target. Called by serve only (it uses the closeStreams scratch).
func (s *session) finishing() int {
	s.mu.Lock()
	snap := s.snap[:0]
	for st := s.head; st != nil; st = st.next {
		snap = append(snap, st)
	}
	s.mu.Unlock()
	n := 0
	for _, st := range snap {
		st.mu.Lock()
		if !st.closed && st.fc.Complete() {
			n++
		}
		st.mu.Unlock()
	}
	clear(snap)
	s.snap = snap[:0]
	return n
}

// liveStreams returns the number of streams the session carries.
func (s *session) liveStreams() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.streams)
}

// rotateLoop rotates, one at a time, the tunnels that announced an
// outdated connector set, whenever Reload or a HELLO_ACK asks, until ctx
// ends. A failed rotation is retried with backoff. Replacement tunnels get
// their tunnelLoop on wg (Run's).
func (a *Agent) rotateLoop(ctx context.Context, wg *sync.WaitGroup) {
	r := retry{lo: a.cfg.ReconnectMin, hi: a.cfg.ReconnectMax, rnd: rand.Int64N}
	var again <-chan time.Time
	warned := make([]uint64, a.cfg.Tunnels) // protocol 1 tunnels warned about, by gen+1
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.rotateKick:
		case <-again:
		}
		again = nil
		failed := false
		for idx := range a.cfg.Tunnels {
			if ctx.Err() != nil || a.draining.Load() {
				return
			}
			gen := a.conns.Load().gen
			a.slotMu.Lock()
			old := a.slots[idx]
			a.slotMu.Unlock()
			switch {
			case old == nil || old.set.gen == gen:
				continue // up to date, or reconnecting (its next HELLO announces gen)
			case old.version < codec.Version:
				if warned[idx] != gen+1 {
					warned[idx] = gen + 1
					old.log.Warn("tunnel_rotate_unsupported", "agent_id", a.cfg.AgentID,
						"reason", "the hub speaks protocol 1 (no GOAWAY): the connectors are announced when this tunnel next reconnects")
				}
				continue
			}
			if !a.rotate(ctx, wg, idx, old) {
				failed = true
			}
		}
		if failed {
			again = time.After(r.next(0))
		} else {
			r.attempt = 0
		}
	}
}

// rotate replaces the tunnel old of slot idx and reports whether the
// replacement took over. It waits for the replacement's HELLO_ACK.
func (a *Agent) rotate(ctx context.Context, wg *sync.WaitGroup, idx int, old *session) bool {
	ns, _ := a.dialSession(ctx, old.urlIdx, idx, make([]byte, readBufLen), old)
	if ns == nil {
		if ctx.Err() == nil {
			old.log.Warn("tunnel_rotate_failed", "agent_id", a.cfg.AgentID, "reason", "the replacement tunnel did not connect")
		}
		return false
	}
	wg.Go(func() { a.tunnelLoop(ctx, idx, ns) })
	select {
	case <-ns.settled:
	case <-ctx.Done():
		return true
	}
	a.slotMu.Lock()
	ok, gone := ns.promoted, old.ended
	a.slotMu.Unlock()
	switch {
	case ok:
		return true
	case gone:
		return true // the old tunnel dropped: its tunnelLoop reconnects with the new names
	}
	old.log.Warn("tunnel_rotate_failed", "agent_id", a.cfg.AgentID, "reason", "the replacement tunnel did not come up")
	return false
}
