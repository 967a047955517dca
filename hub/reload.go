package hub

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nowconnect/nowconnect/engine"
	"github.com/nowconnect/nowconnect/internal/lograte"
)

// Reload: what a SIGHUP changes in a running hub (SPEC §3).
//
// Reload applies a new Config to a running hub for the settings that can
// change without a restart, and only those:
//
//   - Listeners, by name. An added one is bound and accepts. A removed one
//     stops accepting at once (the port refuses); its streams go on until
//     they end. A changed Bind stops the old listener and binds the new
//     address. A changed Connector, Allow or PDP applies to the connections
//     accepted from then on: each listener's accept goroutine reads its
//     settings through binding.cur, an atomic pointer to an immutable
//     *listener, and a stream keeps the *listener it was accepted under
//     (connector, metrics), so nothing in flight changes under it.
//   - PDP: a changed PDPConfig starts a new policy client (empty cache) for
//     new connections; the old one takes nothing more, finishes the
//     decisions it has pending (each bounded by its timeout) on
//     pdpRetireLoop, then stops. Stop waits for it.
//   - Verifier: when set, checks the tunnel upgrades from then on (nil
//     keeps the one in force).
//   - MaskClientAddr: at once.
//   - HA.Mode: SetMode (shadow ⇄ active). To or from off needs a restart
//     (the registry is set up at start) and is an error.
//
// Every other field of the Config is ignored: it needs a restart, and the
// caller names those keys (cmd compares the files key by key). The log
// level is the Logger handler's (cmd owns its slog.LevelVar); the hub asks
// the handler each time (debugOn), so a new level applies at once.
//
// A reload never drops a stream and never half-refuses: everything that
// can be applied is; what failed (a listener that could not bind, a mode
// switch that needs a restart) is joined into the error. A listener whose
// new address cannot be bound is put back on its old address when that
// still binds. Reload compares with what is bound, not with the previous
// Config, so a later Reload tries a failed listener again.

// ErrNotRunning is returned by Reload before Start or after Stop.
var ErrNotRunning = errors.New("hub: not running")

// verifierRef boxes a TokenVerifier for an atomic pointer.
type verifierRef struct{ v TokenVerifier }

// binding is one bound listener: its engine listener and the settings its
// accept goroutine reads (Reload swaps them).
type binding struct {
	cur atomic.Pointer[listener] // never nil once bound
	eng *engine.Listener         // set by bindLocked, before the binding is shared
}

// Accept runs on the engine listener's acceptLoop.
func (b *binding) Accept(conn *net.TCPConn) { b.cur.Load().Accept(conn) }

// AcceptFailed runs on the engine listener's acceptLoop.
func (b *binding) AcceptFailed(err error) { b.cur.Load().AcceptFailed(err) }

// reloadState is what Start, Reload and Stop change on a running hub.
type reloadState struct {
	mu sync.Mutex // serialises Start, Reload and Stop on the fields below
	// guarded by mu
	binds    map[string]*binding // bound listeners by name; nil before Start
	stopped  bool                // Stop ran: nothing is bound again
	pdpCfg   *PDPConfig          // the policy config in force, nil: none
	retiring []*pdp              // replaced policy clients finishing their decisions

	retire sync.WaitGroup // pdpRetireLoop goroutines (Stop waits)
}

// debugOn reports whether per-connection debug lines are logged; it follows
// the level of the logger's handler at once (a reload may change it).
func (h *Hub) debugOn() bool { return h.log.Enabled(context.Background(), slog.LevelDebug) }

// newListener builds the immutable settings of a listener; refused is the
// rate limit of an earlier version of it, kept across reloads (nil: new).
func (h *Hub) newListener(l Listener, refused *lograte.Limit) *listener {
	if refused == nil {
		refused = lograte.New(1, time.Second, h.met.logSuppressed("connection_refused"))
	}
	return &listener{Listener: l, h: h, met: h.met.connector(l.Connector), refused: refused}
}

// bindAll binds the listeners of the Config at Start. The error names the
// listener and its address.
func (h *Hub) bindAll() error {
	h.rl.mu.Lock()
	defer h.rl.mu.Unlock()
	if h.rl.stopped {
		return ErrNotRunning
	}
	h.rl.binds = make(map[string]*binding, len(h.lis))
	for _, l := range h.lis {
		b, err := h.bindLocked(l)
		if err != nil {
			return err
		}
		h.rl.binds[l.Name] = b
	}
	return nil
}

// bindLocked binds l's address and starts accepting with l's settings.
func (h *Hub) bindLocked(l *listener) (*binding, error) {
	b := &binding{}
	b.cur.Store(l)
	el, err := h.srv.Listen(l.Name, l.Bind, b)
	if err != nil {
		return nil, &BindError{Listener: l.Name, Bind: l.Bind, Err: err}
	}
	b.eng = el
	h.log.Info("listener_started", "name", l.Name, "bind", l.Bind, "connector", l.Connector)
	return b, nil
}

// unbindLocked stops accepting on b (its streams are untouched) and waits
// for its acceptLoop.
func (h *Hub) unbindLocked(b *binding, why string) {
	b.eng.Close()
	l := b.cur.Load()
	h.log.Info("listener_stopped", "name", l.Name, "bind", l.Bind, "connector", l.Connector, "reason", why)
}

// stopListeners closes every listener for good (Stop).
func (h *Hub) stopListeners() {
	h.rl.mu.Lock()
	defer h.rl.mu.Unlock()
	h.rl.stopped = true
	for _, b := range h.rl.binds {
		b.eng.Close()
	}
	h.rl.binds = nil
}

// stopPDPs stops the policy client in force and the retiring ones, and
// waits for every pdpRetireLoop (Stop).
func (h *Hub) stopPDPs() {
	if p := h.pdp.Load(); p != nil {
		p.stop()
	}
	h.rl.mu.Lock()
	retiring := slices.Clone(h.rl.retiring)
	h.rl.mu.Unlock()
	for _, p := range retiring {
		p.stop() // cancels what drain waits for
	}
	h.rl.retire.Wait()
}

// checkPDP hands conn to the policy client in force and reports whether it
// took it (false: no PDP, route it). Reload may replace the client between
// the load and the check; the current one is then asked. Called on the
// listener's accept goroutine; it owns conn and one count of h.conns.
func (h *Hub) checkPDP(conn *net.TCPConn, l *listener, ap netip.AddrPort) bool {
	for range 3 {
		p := h.pdp.Load()
		if p == nil {
			return false
		}
		if p.check(conn, l, ap) {
			return true
		}
	}
	// Still closed: the hub is stopping.
	h.conns.Add(-1)
	_ = conn.SetLinger(0)
	_ = conn.Close()
	return true
}

// swapPDPLocked puts a policy client for cfg (nil: none) in force and
// retires the previous one on a pdpRetireLoop.
func (h *Hub) swapPDPLocked(cfg *PDPConfig) {
	var np *pdp
	if cfg != nil {
		np = newPDP(h, *cfg)
	}
	h.rl.pdpCfg = cfg
	old := h.pdp.Swap(np)
	if old == nil {
		return
	}
	old.close() // before Swap's readers could hand it more: they retry on the new one
	h.rl.retiring = append(h.rl.retiring, old)
	h.rl.retire.Go(func() { h.pdpRetireLoop(old) })
}

// pdpRetireLoop lets a replaced policy client finish its pending decisions,
// then forgets it.
func (h *Hub) pdpRetireLoop(p *pdp) {
	p.drain()
	h.rl.mu.Lock()
	h.rl.retiring = slices.DeleteFunc(h.rl.retiring, func(x *pdp) bool { return x == p })
	h.rl.mu.Unlock()
}

// normPDP returns cfg, or nil when it configures no PDP.
func normPDP(cfg *PDPConfig) *PDPConfig {
	if cfg == nil || cfg.URL == "" {
		return nil
	}
	c := *cfg
	return &c
}

func samePDP(a, b *PDPConfig) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// listenerChanges lists what differs between two settings of one
// listener, other than its bind.
func listenerChanges(old, l Listener) []string {
	var out []string
	if old.Connector != l.Connector {
		out = append(out, fmt.Sprintf("connector %s → %s", old.Connector, l.Connector))
	}
	if !slices.Equal(old.Allow, l.Allow) {
		out = append(out, fmt.Sprintf("allow_cidrs %s → %s", prefixes(old.Allow), prefixes(l.Allow)))
	}
	if old.PDP != l.PDP {
		out = append(out, fmt.Sprintf("pdp %v → %v", old.PDP, l.PDP))
	}
	return out
}

func prefixes(ps []netip.Prefix) string {
	if len(ps) == 0 {
		return "[] (all)"
	}
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return "[" + strings.Join(s, " ") + "]"
}

// Reload applies what of cfg can change on a running hub (see the top of
// this file) and returns what changed, one human line per change, in the
// order applied. The error joins what could
// not be applied; the rest is applied regardless. cfg must have passed
// New's checks (cmd builds a hub from the file to validate it first).
// Safe from any goroutine; reloads are serialised.
func (h *Hub) Reload(cfg Config) (changes []string, err error) {
	if len(cfg.Listeners) == 0 {
		return nil, ErrNoListeners
	}
	want := make(map[string]Listener, len(cfg.Listeners))
	for _, l := range cfg.Listeners {
		if _, dup := want[l.Name]; dup || l.Name == "" {
			return nil, fmt.Errorf("%w: listener name %q is empty or used twice", ErrConfig, l.Name)
		}
		want[l.Name] = l
	}
	h.rl.mu.Lock()
	defer h.rl.mu.Unlock()
	if h.rl.binds == nil || h.rl.stopped {
		return nil, ErrNotRunning
	}
	var errs []error
	note := func(format string, args ...any) { changes = append(changes, fmt.Sprintf(format, args...)) }

	// A policy client that turns on or changes goes first, so that a
	// listener switched to pdp meets it; one that turns off goes last.
	pc := normPDP(cfg.PDP)
	pdpChanged := !samePDP(h.rl.pdpCfg, pc)
	if pdpChanged && pc != nil {
		what := "pdp settings changed (new decision cache)"
		if h.rl.pdpCfg == nil {
			what = "pdp on"
		}
		h.swapPDPLocked(pc)
		note("%s", what)
	}

	// Listeners: first stop the removed ones and those that move (their
	// old addresses may be what another listener binds now), then bind.
	names := make([]string, 0, len(h.rl.binds))
	for name := range h.rl.binds {
		names = append(names, name)
	}
	sort.Strings(names)
	moved := map[string]*listener{} // name → settings before the move
	for _, name := range names {
		b := h.rl.binds[name]
		old := b.cur.Load()
		l, keep := want[name]
		switch {
		case !keep:
			h.unbindLocked(b, "removed by reload")
			delete(h.rl.binds, name)
			note("listener %s removed (%s)", name, old.Bind)
		case l.Bind != old.Bind:
			h.unbindLocked(b, "bind changed by reload")
			delete(h.rl.binds, name)
			moved[name] = old
		}
	}
	for _, l := range cfg.Listeners {
		if b := h.rl.binds[l.Name]; b != nil {
			old := b.cur.Load()
			if diff := listenerChanges(old.Listener, l); len(diff) > 0 {
				b.cur.Store(h.newListener(l, old.refused))
				note("listener %s: %s", l.Name, strings.Join(diff, ", "))
			}
			continue
		}
		old := moved[l.Name]
		var refused *lograte.Limit
		if old != nil {
			refused = old.refused
		}
		nb, err := h.bindLocked(h.newListener(l, refused))
		if err == nil {
			h.rl.binds[l.Name] = nb
			if old != nil {
				note("listener %s bind %s → %s", l.Name, old.Bind, l.Bind)
				if diff := listenerChanges(old.Listener, l); len(diff) > 0 {
					note("listener %s: %s", l.Name, strings.Join(diff, ", "))
				}
			} else {
				note("listener %s added (%s, connector %s)", l.Name, l.Bind, l.Connector)
			}
			continue
		}
		h.log.Error("listener_bind_failed", "name", l.Name, "bind", l.Bind, "err", err.Error())
		errs = append(errs, err)
		if old == nil {
			continue
		}
		// Keep serving where it did, with its old settings, if it still can.
		if rb, rerr := h.bindLocked(old); rerr == nil {
			h.rl.binds[l.Name] = rb
			errs = append(errs, fmt.Errorf("listener %s: kept on %s", l.Name, old.Bind))
		} else {
			errs = append(errs, fmt.Errorf("listener %s: its old bind is lost too: %w", l.Name, rerr))
		}
	}

	if pdpChanged && pc == nil {
		h.swapPDPLocked(nil)
		note("pdp off")
	}
	if cfg.Verifier != nil {
		h.verifier.Store(&verifierRef{cfg.Verifier})
		note("auth keys replaced (new tunnel upgrades)")
	}
	if was := h.mask.Swap(cfg.MaskClientAddr); was != cfg.MaskClientAddr {
		note("log.mask_client_addr %v → %v", was, cfg.MaskClientAddr)
	}
	mode := ModeOff
	if cfg.HA != nil {
		mode = cfg.HA.Mode
	}
	if cur := h.Mode(); mode != cur {
		if err := h.SetMode(mode); err != nil {
			errs = append(errs, fmt.Errorf("ha.mode: %w", err))
		} else {
			note("ha.mode %s → %s", cur, mode)
		}
	}
	return changes, errors.Join(errs...)
}

// liveConnectors returns the connectors of the listeners in force (those of
// the Config before Start), each once.
func (h *Hub) liveConnectors() []string {
	h.rl.mu.Lock()
	defer h.rl.mu.Unlock()
	var out []string
	add := func(c string) {
		if !slices.Contains(out, c) {
			out = append(out, c)
		}
	}
	if h.rl.binds == nil {
		for _, l := range h.lis {
			add(l.Connector)
		}
		return out
	}
	for _, b := range h.rl.binds {
		add(b.cur.Load().Connector)
	}
	return out
}
