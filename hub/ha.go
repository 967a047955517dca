package hub

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/nowconnect/nowconnect/internal/lograte"
)

// HA: the hub's side of the ownership registry (seed 002, SPEC §5).
//
// Every agent a hub serves is claimed in the registry, which answers with
// an epoch (strictly increasing per agent); the tunnels of one agent
// process (same agent id and instance) share one claim. The claim runs off
// the event loops, on ownerLoop, with a deadline, like token checks: a
// tunnel is served locally from its HELLO on, whatever the registry says,
// so a registry that is down or slow never stops local traffic.
//
// ownerLoop heartbeats every claim (compare-and-extend). A heartbeat that
// finds another owner or epoch means this hub was fenced out: in active
// mode the agent's tunnels get no new streams and close once idle or after
// Grace (their streams finish: make-before-break), with reason not_owner;
// the agent reconnects and claims again. A second HELLO with the same agent
// id but another instance (a restarted agent, or a clone) claims a newer
// epoch and supersedes the older tunnels the same way. An agent id that
// keeps changing hands on this hub is logged (agent_id_conflict) and its
// next tunnels are refused at HELLO for a growing pause, so clones cannot
// drive a reconnect storm.
//
// Modes: off (no registry at all), shadow (claims, heartbeats and
// discovery run and are logged and counted; routing stays local) and
// active (the registry decides: fenced-out tunnels get no new streams, and
// a client whose agent is owned by another hub is refused with not_owner
// until the mesh carries it). SetMode switches at runtime (SIGHUP) without
// touching local streams.

// Mode is the HA mode of a hub.
type Mode int32

// HA modes.
const (
	ModeOff Mode = iota
	ModeShadow
	ModeActive
)

var modeNames = [...]string{ModeOff: "off", ModeShadow: "shadow", ModeActive: "active"}

func (m Mode) String() string {
	if int(m) < len(modeNames) {
		return modeNames[m]
	}
	return "unknown"
}

// ErrMode reports an unknown mode name.
var ErrMode = errors.New("hub: unknown HA mode")

// ParseMode parses off, shadow or active.
func ParseMode(s string) (Mode, error) {
	for m, n := range modeNames {
		if n == s {
			return Mode(m), nil
		}
	}
	return ModeOff, fmt.Errorf("%w %q (want off, shadow or active)", ErrMode, s)
}

// Registry is what the hub needs of the ownership registry (package mesh
// implements it; cmd wires it). The hub calls it only from ownerLoop, never
// from an event loop, and every call carries a deadline.
type Registry interface {
	Claim(ctx context.Context, agentID string, hint uint64) (epoch uint64, err error)
	Heartbeat(ctx context.Context, agentID string, epoch uint64) (owned bool, err error)
	Release(ctx context.Context, agentID string, epoch uint64) error
	AddConnectors(ctx context.Context, agentID string, epoch uint64, connectors []string) error
	// Owners lists the agents that serve connector, with their owners.
	Owners(ctx context.Context, connector string) ([]Ownership, error)
	// Watch calls fn with the agent id of every ownership that becomes
	// routable on any hub, until ctx ends or the subscription breaks (best
	// effort; watchLoop's, the one call without a deadline).
	Watch(ctx context.Context, fn func(agentID string)) error
	Healthy() bool
}

// Ownership is who owns an agent, and at which epoch.
type Ownership struct {
	AgentID   string
	ReplicaID string
	Epoch     uint64
}

// HAConfig configures the hub's HA side. A nil Config.HA is mode off.
type HAConfig struct {
	Mode              Mode
	ReplicaID         string
	Registry          Registry      // required unless Mode is off
	HeartbeatInterval time.Duration // how often claims are renewed, default 5s
	OpTimeout         time.Duration // per registry call, default 1s
	Grace             time.Duration // how long a fenced-out tunnel keeps its streams, default 30s
}

// ErrOwnerGone is what Registry.Heartbeat wraps when the registry has no
// owner entry for the agent at all (it restarted empty, or the entry
// expired while this hub could not reach it): nobody owns the agent.
var ErrOwnerGone = errors.New("hub: the registry has no owner for the agent")

// Errors of HA.
var (
	errNotOwner   = errors.New("tunnel: another hub owns the agent")
	errSuperseded = errors.New("tunnel: a newer tunnel of the agent took over")
	errConflict   = errors.New("tunnel: agent id keeps changing hands (agent_id_conflict), refused for now")
)

// Conflict damping.
const (
	conflictWindow   = time.Minute // losses counted over this
	conflictLosses   = 3           // this many in the window is a conflict
	conflictPauseMin = 10 * time.Second
	conflictPauseMax = 5 * time.Minute
)

// claim is one agent's ownership as this hub sees it. Guarded by owners.mu.
type claim struct {
	agentID    string
	instance   uint64
	epoch      uint64 // 0 until claimed
	hint       uint64 // highest epoch seen for the agent
	owned      bool   // the last claim or heartbeat said so
	lost       bool   // fenced out: the tunnels close
	tunnels    map[*tunnel]struct{}
	connectors []string
	losses     []time.Time // recent losses and supersessions (conflict detection)
	pauseUntil time.Time   // agent_id_conflict: HELLOs refused until then
	pause      time.Duration
	reclaimed  []uint64 // this hub's earlier epochs it claimed again from (reclaim), newest last, at most maxReclaimed
}

// maxReclaimed bounds claim.reclaimed.
const maxReclaimed = 4

// owners tracks the hub's claims and runs ownerLoop.
type owners struct {
	// set at construction
	h   *Hub
	cfg HAConfig
	reg Registry

	mode     atomic.Int32 // Mode
	healthy  atomic.Bool  // the registry's health as ownerLoop last saw it
	kick     chan struct{}
	stop     chan struct{}
	watchCtx context.Context // watchLoop's subscription; close cancels it
	unwatch  context.CancelFunc
	wg       sync.WaitGroup
	conflict *lograte.Limit
	missed   *lograte.Limit // clients that found no agent: re-read the registry at most once a second
	refutes  *lograte.Limit // owners that answered not_owner: forget them at most once a second
	watchLog *lograte.Limit // ha_registry_watch_failed lines

	mu sync.Mutex
	// guarded by mu
	claims     map[string]*claim
	remote     map[string][]Ownership   // connector → agents of it, from the registry (routing's cache)
	missing    map[missingKey]time.Time // first read that lacked an agent still kept (keepMissingLocked)
	refreshNow bool                     // read remote again at the next pass (a stale epoch, a new link)
}

func newOwners(h *Hub, cfg HAConfig) *owners {
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = 5 * time.Second
	}
	if cfg.OpTimeout <= 0 {
		cfg.OpTimeout = time.Second
	}
	if cfg.Grace <= 0 {
		cfg.Grace = 30 * time.Second
	}
	o := &owners{h: h, cfg: cfg, reg: cfg.Registry, kick: make(chan struct{}, 1), stop: make(chan struct{}),
		claims: make(map[string]*claim), remote: make(map[string][]Ownership), missing: make(map[missingKey]time.Time),
		conflict: lograte.New(1, time.Minute, h.met.logSuppressed("agent_id_conflict")),
		missed:   lograte.New(1, time.Second, nil),
		refutes:  lograte.New(1, time.Second, nil),
		watchLog: lograte.New(1, time.Minute, h.met.logSuppressed("ha_registry_watch_failed"))}
	o.watchCtx, o.unwatch = context.WithCancel(context.Background())
	o.mode.Store(int32(cfg.Mode))
	h.met.haMode(cfg.Mode)
	h.met.ownedAgents = o.ownedCount
	return o
}

// Mode returns the current mode.
func (o *owners) Mode() Mode { return Mode(o.mode.Load()) }

// start runs ownerLoop and watchLoop.
func (o *owners) start() {
	o.wg.Go(o.ownerLoop)
	o.wg.Go(o.watchLoop)
}

// Backoff of watchLoop between subscriptions.
const (
	watchBackoffMin = 500 * time.Millisecond
	watchBackoffMax = 30 * time.Second
)

// watchLoop keeps a subscription to the registry's ownership changes until
// close: an agent that moved to another hub is re-read at once, so routing
// stops sending its clients to the hub it left (which would refuse them,
// not_owner) long before the next heartbeat's read. A broken subscription
// is taken again after a backoff, followed by a read (what was published
// meanwhile is lost); the heartbeat's reads stay the backstop.
func (o *owners) watchLoop() {
	ctx := o.watchCtx
	backoff := watchBackoffMin
	for {
		wait := watchBackoffMin // for a registry that is down (logged as such, ha_registry_down)
		watched := o.reg.Healthy()
		if watched {
			start := time.Now()
			err := o.reg.Watch(ctx, o.moved)
			if ctx.Err() != nil {
				return
			}
			if time.Since(start) > watchBackoffMax {
				backoff = watchBackoffMin // it had worked for a while
			}
			wait, backoff = backoff, min(2*backoff, watchBackoffMax)
			if n, ok := o.watchLog.Allow(time.Now()); ok && o.reg.Healthy() {
				o.h.log.Warn("ha_registry_watch_failed", "err", err.Error(), "retry_in", wait.String(), "suppressed", n)
			}
		}
		select {
		case <-o.stop:
			return
		case <-time.After(wait + rand.N(wait/4+1)):
		}
		if watched {
			o.refreshSoon() // what was published while not subscribed is lost: read instead
		}
	}
}

// moved is Watch's callback: an agent's new owner is routable, so the
// registry is read again.
func (o *owners) moved(string) { o.refreshSoon() }

// refreshSoon has ownerLoop read the registry again at its next pass, now.
// Requests that come while a pass runs fold into the next one.
func (o *owners) refreshSoon() {
	o.mu.Lock()
	o.refreshNow = true
	o.mu.Unlock()
	o.poke()
}

// close stops ownerLoop and releases the claims (best effort, bounded).
func (o *owners) close() {
	close(o.stop)
	o.unwatch()
	o.wg.Wait()
	o.mu.Lock()
	claims := make([]*claim, 0, len(o.claims))
	for _, c := range o.claims {
		claims = append(claims, c)
	}
	o.mu.Unlock()
	for _, c := range claims {
		if c.owned {
			ctx, cancel := context.WithTimeout(context.Background(), o.cfg.OpTimeout)
			_ = o.reg.Release(ctx, c.agentID, c.epoch)
			cancel()
		}
	}
}

func (o *owners) poke() {
	select {
	case o.kick <- struct{}{}:
	default:
	}
}

// joined records a tunnel after its HELLO. It returns an error when the
// tunnel must be refused (agent_id_conflict). Called on the tunnel's loop.
func (o *owners) joined(t *tunnel) error {
	now := time.Now()
	o.mu.Lock()
	c := o.claims[t.agentID]
	switch {
	case c == nil:
		c = &claim{agentID: t.agentID, instance: t.instance, tunnels: map[*tunnel]struct{}{}}
		o.claims[t.agentID] = c
	case now.Before(c.pauseUntil):
		o.mu.Unlock()
		return errConflict
	case c.instance != t.instance || c.lost:
		// Another process of the agent (or this one after we were fenced
		// out): a new claim, and the older tunnels make way.
		old := c.tunnels
		if c.instance != t.instance {
			o.noteLossLocked(c, now)
		}
		hint := max(c.hint, c.epoch)
		losses, pause, until := c.losses, c.pause, c.pauseUntil
		c = &claim{agentID: t.agentID, instance: t.instance, tunnels: map[*tunnel]struct{}{}, hint: hint,
			losses: losses, pause: pause, pauseUntil: until}
		o.claims[t.agentID] = c
		if o.Mode() == ModeActive {
			for ot := range old {
				ot.bar(errSuperseded)
			}
		} else if len(old) > 0 {
			o.h.log.Info("agent_superseded", "agent_id", t.agentID, "tunnels", len(old), "action", "none (shadow)")
		}
	}
	c.tunnels[t] = struct{}{}
	c.connectors = t.connectors
	o.mu.Unlock()
	o.poke()
	return nil
}

// left forgets a closed tunnel. Called on its loop.
func (o *owners) left(t *tunnel) {
	o.mu.Lock()
	if c := o.claims[t.agentID]; c != nil {
		delete(c.tunnels, t)
	}
	o.mu.Unlock()
	o.poke()
}

// noteLossLocked records a loss (or supersession) and pauses the agent id
// when it keeps changing hands.
func (o *owners) noteLossLocked(c *claim, now time.Time) {
	kept := c.losses[:0]
	for _, at := range c.losses {
		if now.Sub(at) < conflictWindow {
			kept = append(kept, at)
		}
	}
	c.losses = append(kept, now)
	if len(c.losses) < conflictLosses {
		return
	}
	c.pause = min(max(2*c.pause, conflictPauseMin), conflictPauseMax)
	c.pauseUntil = now.Add(c.pause)
	o.h.met.agentConflicts.Inc()
	if n, ok := o.conflict.Allow(time.Now()); ok {
		o.h.log.Warn("agent_id_conflict", "agent_id", c.agentID, "changes", len(c.losses),
			"window", conflictWindow.String(), "refused_for", c.pause.String(), "suppressed", n)
	}
}

// ownerLoop claims, heartbeats and releases, and refreshes the routing
// cache of remote owners, until close.
func (o *owners) ownerLoop() {
	t := time.NewTicker(o.cfg.HeartbeatInterval)
	defer t.Stop()
	lastBeat := time.Time{}
	for {
		if o.updateHealth() {
			lastBeat = time.Time{} // back: heartbeat now (a restarted Redis may have lost the claims)
		}
		beat := time.Since(lastBeat) >= o.cfg.HeartbeatInterval
		if beat {
			lastBeat = time.Now()
		}
		o.pass(beat)
		select {
		case <-o.stop:
			return
		case <-t.C:
		case <-o.kick:
		}
	}
}

// updateHealth tracks the registry's health and logs its changes; it
// reports whether the registry just came back.
func (o *owners) updateHealth() (back bool) {
	up := o.reg.Healthy()
	if o.healthy.Swap(up) != up {
		if up {
			o.h.log.Info("ha_registry_up", "mode", o.Mode().String())
			return true
		}
		o.h.log.Warn("ha_registry_down", "mode", o.Mode().String())
	}
	return false
}

func (o *owners) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), o.cfg.OpTimeout)
}

// pass does one round of registry work: new claims always, heartbeats and
// the cache refresh when beat.
func (o *owners) pass(beat bool) {
	o.mu.Lock()
	var todo []*claim
	for id, c := range o.claims {
		switch {
		case len(c.tunnels) == 0:
			delete(o.claims, id)
			if c.owned {
				todo = append(todo, c) // release below
			}
		case c.epoch == 0 || (beat && !c.lost):
			todo = append(todo, c)
		}
	}
	o.mu.Unlock()
	for _, c := range todo {
		select {
		case <-o.stop:
			return
		default:
		}
		o.mu.Lock()
		gone := len(c.tunnels) == 0
		o.mu.Unlock()
		switch {
		case gone:
			ctx, cancel := o.ctx()
			err := o.reg.Release(ctx, c.agentID, c.epoch)
			cancel()
			o.h.met.registryOp(err)
		case c.epoch == 0:
			o.claimOne(c)
		default:
			o.heartbeat(c)
		}
	}
	o.mu.Lock()
	refresh := beat || o.refreshNow
	o.refreshNow = false
	o.mu.Unlock()
	if refresh {
		o.refreshRemote()
	}
}

// claimOne claims c's agent and records its connectors.
func (o *owners) claimOne(c *claim) {
	ctx, cancel := o.ctx()
	defer cancel()
	epoch, err := o.reg.Claim(ctx, c.agentID, c.hint)
	o.h.met.registryOp(err)
	if err != nil {
		return // retried on the next pass
	}
	o.mu.Lock()
	c.epoch, c.hint, c.owned = epoch, max(c.hint, epoch), true
	conns := c.connectors
	o.mu.Unlock()
	err = o.reg.AddConnectors(ctx, c.agentID, epoch, conns)
	o.h.met.registryOp(err)
	o.h.log.Info("ownership_claimed", "agent_id", c.agentID, "epoch", epoch, "mode", o.Mode().String())
}

// heartbeat renews c; a heartbeat that finds another owner fences c out.
func (o *owners) heartbeat(c *claim) {
	ctx, cancel := o.ctx()
	owned, err := o.reg.Heartbeat(ctx, c.agentID, c.epoch)
	cancel()
	if errors.Is(err, ErrOwnerGone) {
		o.h.met.registryOp(nil) // an answer
		o.reclaim(c)
		return
	}
	o.h.met.registryOp(err)
	if err != nil || owned {
		return
	}
	now := time.Now()
	o.mu.Lock()
	c.owned, c.lost = false, true
	o.noteLossLocked(c, now)
	tunnels := make([]*tunnel, 0, len(c.tunnels))
	for t := range c.tunnels {
		tunnels = append(tunnels, t)
	}
	o.mu.Unlock()
	o.h.met.epochMismatch.Inc()
	active := o.Mode() == ModeActive
	o.h.log.Warn("ownership_lost", "agent_id", c.agentID, "epoch", c.epoch, "mode", o.Mode().String(),
		"tunnels", len(tunnels), "action", map[bool]string{true: "tunnels close once idle", false: "none (shadow)"}[active])
	if active {
		for _, t := range tunnels {
			t.bar(errNotOwner)
		}
	}
}

// reclaim claims c's agent again after its heartbeat found no owner entry:
// the registry lost it (Redis restarted empty) or let it expire while this
// hub could not reach it, and no other hub has claimed the agent since. This
// hub still carries the agent's tunnels, so it owns it again, at a new epoch,
// and the tunnels are left alone. Fencing it out instead would close every
// agent's tunnels at each Redis restart.
func (o *owners) reclaim(c *claim) {
	o.mu.Lock()
	if c.lost || len(c.tunnels) == 0 {
		o.mu.Unlock()
		return
	}
	old := c.epoch
	c.epoch, c.owned = 0, false
	if old != 0 {
		// Other hubs still route with it until they read again: their
		// streams reach the same tunnels, so they stay welcome (epochOf).
		c.reclaimed = append(c.reclaimed, old)
		c.reclaimed = c.reclaimed[max(0, len(c.reclaimed)-maxReclaimed):]
	}
	o.mu.Unlock()
	o.h.log.Warn("ownership_gone", "agent_id", c.agentID, "epoch", old, "action", "claim again")
	o.claimOne(c)
}

// refreshRemote reads who owns the agents of the hub's connectors: the
// cache routing reads instead of asking the registry per connection.
func (o *owners) refreshRemote() {
	if !o.reg.Healthy() {
		return
	}
	for _, conn := range o.h.liveConnectors() { // listeners added by a reload too
		ctx, cancel := o.ctx()
		list, err := o.reg.Owners(ctx, conn)
		cancel()
		o.h.met.registryOp(err)
		if err != nil {
			continue
		}
		o.mu.Lock()
		o.remote[conn] = o.keepMissingLocked(conn, list, time.Now())
		o.mu.Unlock()
	}
}

// keepMissingLocked returns read, a new read of connector's agents, or, when
// that read lists none, the agents of the previous one, for two heartbeat
// intervals after their first absence. A registry that restarted empty lists
// nobody until the owners notice and claim again (at their next heartbeat):
// without the grace, every client of another hub's agent would be refused
// meanwhile. Only a read with no agent at all is suspect: once it lists one,
// the kept entries go, so that clients never go to an agent that left (its
// old owner would refuse them, not_owner) while a listed one serves the
// connector. Called with o.mu held.
func (o *owners) keepMissingLocked(conn string, read []Ownership, now time.Time) []Ownership {
	if len(read) > 0 {
		for k := range o.missing {
			if k.connector == conn {
				delete(o.missing, k)
			}
		}
		return read
	}
	// Under o.mu, which routing takes per new client: linear in the agents.
	var list []Ownership
	kept := map[string]bool{}
	for _, old := range o.remote[conn] {
		k := missingKey{conn, old.AgentID}
		since, ok := o.missing[k]
		if !ok {
			since = now
			o.missing[k] = now
		}
		if now.Sub(since) < 2*o.cfg.HeartbeatInterval {
			list = append(list, old)
			kept[old.AgentID] = true
		}
	}
	for k := range o.missing { // only the agents kept above stay counted
		if k.connector == conn && !kept[k.agent] {
			delete(o.missing, k)
		}
	}
	return list
}

// missingKey is an agent of a connector that a registry read lacked.
type missingKey struct{ connector, agent string }

// epochOf returns the epoch under which this hub owns agent, if it does,
// for a stream another hub opened with epoch e: the current one, or e if
// it is one of this hub's own earlier epochs for the agent that it claimed
// again from (reclaim), which the stream then keeps. Safe from any
// goroutine.
func (o *owners) epochOf(agent string, e uint64) (uint64, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	c := o.claims[agent]
	switch {
	case c == nil || c.lost:
		return 0, false
	case e != c.epoch && slices.Contains(c.reclaimed, e):
		return e, true // also while the claim is being made again
	case !c.owned:
		return 0, false
	}
	return c.epoch, true
}

// remoteOwners returns the agents of connector that other hubs own, as
// last read from the registry. Safe from any goroutine.
func (o *owners) remoteOwners(connector string) []Ownership {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []Ownership
	for _, a := range o.remote[connector] {
		if a.ReplicaID != o.cfg.ReplicaID {
			out = append(out, a)
		}
	}
	return out
}

// remoteReplicas returns the other hubs that own agents of our connectors.
func (o *owners) remoteReplicas() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	seen := map[string]bool{}
	var out []string
	for _, list := range o.remote {
		for _, a := range list {
			if a.ReplicaID != o.cfg.ReplicaID && !seen[a.ReplicaID] {
				seen[a.ReplicaID] = true
				out = append(out, a.ReplicaID)
			}
		}
	}
	return out
}

// invalidate forgets what the cache says of agent (a peer answered with a
// stale epoch) and has the registry read again at once.
func (o *owners) invalidate(agent string) {
	o.mu.Lock()
	for c, list := range o.remote {
		kept := list[:0]
		for _, a := range list {
			if a.AgentID != agent {
				kept = append(kept, a)
			}
		}
		o.remote[c] = kept
	}
	o.mu.Unlock()
	o.refreshSoon()
}

// refuted is invalidate for an owner that answered not_owner: after an agent
// moved between two other hubs, the old owner says so, and the cache, until
// its next read, would send every new client to it. At most once a second,
// so that a peer that keeps refusing (say, in shadow mode while the registry
// names it) costs one registry read a second, not one per client.
func (o *owners) refuted(agent string) {
	if _, ok := o.refutes.Allow(time.Now()); ok {
		o.invalidate(agent)
	}
}

// missedAgent re-reads the registry soon for a client that found no agent
// anywhere: an agent that just joined another hub is usable before the
// next heartbeat. At most once a second, whatever the rate of such clients.
func (o *owners) missedAgent() {
	if _, ok := o.missed.Allow(time.Now()); ok {
		o.refreshSoon()
	}
}

// ownedElsewhere reports whether the registry (as last read) has an agent
// for connector owned by another hub. Safe from any goroutine.
func (o *owners) ownedElsewhere(connector string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, a := range o.remote[connector] {
		if a.ReplicaID != o.cfg.ReplicaID {
			return true
		}
	}
	return false
}

func (o *owners) ownedCount() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, c := range o.claims {
		if c.owned {
			n++
		}
	}
	return n
}

// ready reports readiness: in active mode the registry must be healthy.
func (o *owners) ready() (ok bool, body string) {
	up := o.reg.Healthy()
	state := map[bool]string{true: "up", false: "down"}[up]
	switch o.Mode() {
	case ModeActive:
		if !up {
			return false, `{"status":"degraded","reason":"registry unavailable","ha_mode":"active","registry":"down"}`
		}
		return true, `{"status":"ready","ha_mode":"active","registry":"up"}`
	default:
		return true, `{"status":"ready","ha_mode":"` + o.Mode().String() + `","registry":"` + state + `"}`
	}
}

// setMode switches the mode for new decisions; local streams are untouched.
func (o *owners) setMode(m Mode) {
	if Mode(o.mode.Swap(int32(m))) == m {
		return
	}
	o.h.met.haMode(m)
	o.h.log.Info("ha_mode_changed", "mode", m.String())
	if m == ModeActive {
		// What shadow only observed now applies: tunnels of agents this hub
		// lost make way (their streams finish).
		o.mu.Lock()
		var barred []*tunnel
		for _, c := range o.claims {
			if c.lost {
				for t := range c.tunnels {
					barred = append(barred, t)
				}
			}
		}
		o.mu.Unlock()
		for _, t := range barred {
			t.bar(errNotOwner)
		}
	}
	o.poke()
}

// bar stops new streams on the tunnel and closes it once idle, or after
// the grace period. Safe from any goroutine.
func (t *tunnel) bar(why error) {
	if t.barred.Swap(true) {
		return
	}
	_ = t.loop.Execute(func() {
		if t.closed {
			return
		}
		t.barReason, t.barredAt = why, time.Now()
		t.maybeRetire(t.barredAt)
	})
}

// maybeRetire closes a barred tunnel once it carries no stream or its
// grace period is over. Called on the loop.
func (t *tunnel) maybeRetire(now time.Time) {
	if t.barReason == nil || t.closed {
		return
	}
	grace := 30 * time.Second
	if t.h.owners != nil {
		grace = t.h.owners.cfg.Grace
	}
	if len(t.streams) == 0 || now.Sub(t.barredAt) > grace {
		t.ws.Close(t.barReason)
	}
}

func (m *hubMetrics) haMode(mode Mode) { m.haModeVal.Store(int32(mode)) }

// registryOp is where registry calls made by the hub are seen; the registry
// itself exports nowconnect_registry_* (op latency, errors, up).
func (m *hubMetrics) registryOp(error) {}

// initHA registers the HA series of the hub.
func (m *hubMetrics) initHA(set *metrics.Set) {
	for i, n := range modeNames {
		mode := Mode(i)
		set.GetOrCreateGauge(`nowconnect_ha_mode{mode="`+n+`"}`, func() float64 {
			if Mode(m.haModeVal.Load()) == mode {
				return 1
			}
			return 0
		})
	}
	m.epochMismatch = set.GetOrCreateCounter(`nowconnect_owner_epoch_mismatch_total`)
	m.agentConflicts = set.GetOrCreateCounter(`nowconnect_agent_id_conflicts_total`)
	set.GetOrCreateGauge(`nowconnect_owned_agents`, func() float64 {
		if m.ownedAgents == nil {
			return 0
		}
		return float64(m.ownedAgents())
	})
}
