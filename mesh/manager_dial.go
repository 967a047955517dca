package mesh

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"time"

	"github.com/gobwas/ws"
)

// Dial targets: every URL this hub dials, from Peers (static, for the manager's life)
// or from Discovery (until the registry stops listing it). One dialLoop per target
// dials it, runs the link until it ends, waits a jittered backoff and dials again;
// it does not dial while the target's peer has a link up (whoever dialed it), while
// another target reaches the same peer (a static target wins over a discovered one,
// then the lower URL), or once the URL turned out to be this hub.
type dialTarget struct {
	// set at construction
	url    string
	logURL string // url without userinfo and query, for logs
	host   string // the URL's host[:port]: the peer label until the replica is known
	static bool
	ctx    context.Context
	cancel context.CancelFunc

	// guarded by Manager.mu
	replica    string // from the peer's M_HELLO, a duplicate refusal or Discovery
	running    bool   // its dialLoop was started
	removed    bool
	self       bool  // the URL leads to this hub (or to one with our replica id)
	attempting bool  // a dial is in flight, until its link registers or fails
	pending    *Link // the link of the attempt in flight
	link       *Link // the registered link it dialed
	failures   int   // attempts in a row that did not bring a link up
	lastErr    string
}

func (t *dialTarget) peerLabel() string {
	if t.replica != "" {
		return t.replica
	}
	return t.host
}

// parseMeshURL checks a peer URL: ws:// or wss:// with a host.
func parseMeshURL(raw string) (*url.URL, string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, "", fmt.Errorf("%s: not a URL", redactURL(raw))
	}
	if u.Scheme != "ws" && u.Scheme != "wss" {
		return nil, "", fmt.Errorf("%s: scheme %q, want ws or wss", redactURL(raw), u.Scheme)
	}
	if u.Host == "" || u.Hostname() == "" {
		return nil, "", fmt.Errorf("%s: no host", redactURL(raw))
	}
	return u, u.Host, nil
}

// redactURL drops userinfo, query and fragment, for logs and errors.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	u.User, u.RawQuery, u.Fragment = nil, "", ""
	return u.String()
}

// addTargetLocked adds a dial target (not started).
func (m *Manager) addTargetLocked(raw, replica string, static bool) (*dialTarget, error) {
	_, host, err := parseMeshURL(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadManagerConfig, err)
	}
	t := &dialTarget{url: raw, logURL: redactURL(raw), host: host, static: static, replica: replica}
	t.ctx, t.cancel = context.WithCancel(m.ctx)
	m.targets[raw] = t
	return t, nil
}

// startTargetLocked starts t's dialLoop once the manager has started.
func (m *Manager) startTargetLocked(t *dialTarget) {
	if !m.started || m.closed || !m.accepts || t.running || t.removed {
		return
	}
	t.running = true
	// Mark the first attempt now, not when dialLoop gets scheduled: an inbound link
	// arriving meanwhile must see that a dial is in flight (register's hold).
	if m.dialNeededLocked(t) {
		t.attempting = true
	}
	m.wg.Go(func() { m.dialLoop(t) })
}

func (m *Manager) removeTargetLocked(t *dialTarget) {
	t.removed = true
	t.cancel()
	delete(m.targets, t.url)
	m.log.Info("mesh_peer_removed", "url", t.logURL, "peer", t.peerLabel(), "why", "no longer listed by the registry")
}

func (m *Manager) learnReplicaLocked(t *dialTarget, replica string) {
	if replica != "" && t.replica != replica {
		t.replica = replica
	}
}

// redundantLocked reports whether another target reaches t's peer and is preferred.
func (m *Manager) redundantLocked(t *dialTarget) bool {
	if t.replica == "" {
		return false
	}
	for _, u := range m.targets {
		if u == t || u.self || u.replica != t.replica {
			continue
		}
		if u.static != t.static {
			if u.static {
				return true
			}
			continue
		}
		if u.url < t.url {
			return true
		}
	}
	return false
}

func (m *Manager) dialNeededLocked(t *dialTarget) bool {
	if t.self || t.removed || m.closed || m.redundantLocked(t) {
		return false
	}
	return t.replica == "" || m.links[t.replica] == nil
}

// waitDialNeeded waits until t should be dialed and marks the attempt; false when t
// or the manager is done.
func (m *Manager) waitDialNeeded(t *dialTarget) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for !m.dialNeededLocked(t) {
		if t.attempting {
			t.attempting = false
			m.broadcastLocked()
			m.updateGaugesLocked()
		}
		ch := m.changed
		m.mu.Unlock()
		select {
		case <-ch:
		case <-t.ctx.Done():
			m.mu.Lock()
			return false
		}
		m.mu.Lock()
	}
	if t.ctx.Err() != nil {
		return false
	}
	t.attempting = true
	m.broadcastLocked()
	m.updateGaugesLocked()
	return true
}

// dialLoop dials one target, runs its link, backs off and dials again, until the
// target is removed or the manager closed.
func (m *Manager) dialLoop(t *dialTarget) {
	for m.waitDialNeeded(t) {
		l, err := m.dial(t)
		if err != nil {
			m.dialFailed(t, err)
		} else if !m.runDialed(t, l) {
			return
		}
		m.mu.Lock()
		n := t.failures
		m.mu.Unlock()
		timer := time.NewTimer(backoff(n, m.cfg.BackoffMax, rand.Int64N))
		select {
		case <-t.ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		}
	}
}

// dial opens the WebSocket to t (TCP, TLS, upgrade with a fresh mesh token).
func (m *Manager) dial(t *dialTarget) (*Link, error) {
	hdr := http.Header{}
	if m.cfg.Secret != nil {
		tok, err := MintMeshToken(m.cfg.Secret, m.cfg.ReplicaID, MeshTokenTTL)
		if err != nil {
			return nil, err
		}
		hdr.Set("Authorization", "Bearer "+tok)
	}
	d := ws.Dialer{Header: ws.HandshakeHeaderHTTP(hdr), TLSConfig: m.cfg.DialTLS, Timeout: m.cfg.HandshakeTimeout}
	conn, br, _, err := d.Dial(t.ctx, t.url)
	if err != nil {
		return nil, err
	}
	l := newLink(m, conn, true, t)
	if br != nil {
		if n := br.Buffered(); n > 0 {
			p, _ := br.Peek(n)
			l.rd.preload(p)
		}
		ws.PutReader(br)
	}
	return l, nil
}

// runDialed runs the link l of t until it is done (or t is removed: the link then
// lives on by itself) and records the outcome; false when t or the manager is done.
func (m *Manager) runDialed(t *dialTarget, l *Link) bool {
	m.mu.Lock()
	t.pending = l
	m.mu.Unlock()
	if !m.spawnLink(l) {
		_ = l.conn.Close()
		return false
	}
	select {
	case <-l.done:
	case <-t.ctx.Done():
		return false
	}
	if !l.upAt.IsZero() {
		return true // dialSucceededLocked ran at LinkUp
	}
	c := l.cause()
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case errors.Is(c, ErrSelfLink):
		t.self = true
		m.broadcastLocked()
		m.updateGaugesLocked()
		m.log.Error("mesh_peer_is_self", "url", t.logURL, "replica_id", m.cfg.ReplicaID,
			"why", "the URL leads to this hub or to another hub with the same replica id; it is no longer dialed")
	case errors.Is(c, ErrDuplicateLink):
		// The peer keeps another link with us; learn who it is so that this target
		// waits for that link to end instead of dialing again.
		if c.peerReplica != "" && t.replica == "" {
			m.learnReplicaLocked(t, c.peerReplica)
			m.broadcastLocked()
			m.updateGaugesLocked()
		}
	default:
		t.failures++
		m.logDialFailureLocked(t, c.Error())
	}
	return true
}

// dialFailed records a dial that did not reach the M_HELLO exchange.
func (m *Manager) dialFailed(t *dialTarget, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t.attempting = false
	t.failures++
	m.met.linkErrors(t.peerLabel()).Inc()
	var se ws.StatusError
	msg := err.Error()
	if errors.As(err, &se) {
		msg = fmt.Sprintf("upgrade refused with HTTP %d", int(se))
		if se == http.StatusUnauthorized || se == http.StatusForbidden {
			msg += " (mesh token refused: do both hubs share ha.mesh.secret_file?)"
		}
	}
	m.logDialFailureLocked(t, msg)
	m.broadcastLocked()
	m.updateGaugesLocked()
}

// logDialFailureLocked logs a failure at warn when it differs from the previous one
// of the streak, at debug otherwise, so a peer down for an hour logs once.
func (m *Manager) logDialFailureLocked(t *dialTarget, msg string) {
	level := "debug"
	if msg != t.lastErr {
		level = "warn"
	}
	t.lastErr = msg
	args := []any{"url", t.logURL, "peer", t.peerLabel(), "error", msg, "failures", t.failures}
	if level == "warn" {
		m.log.Warn("mesh_dial_failed", args...)
	} else {
		m.log.Debug("mesh_dial_failed", args...)
	}
}

// dialSucceededLocked resets t's failure streak once its link is up.
func (m *Manager) dialSucceededLocked(t *dialTarget) {
	t.failures, t.lastErr = 0, ""
}

// backoff returns the wait before the next dial after n failures in a row: full
// jitter, uniform in [0, min(max, BackoffMin·2^n)]. rnd(k) returns a number in [0, k).
func backoff(n int, max time.Duration, rnd func(int64) int64) time.Duration {
	ceil := BackoffMin
	for i := 0; i < n && ceil < max; i++ {
		ceil *= 2
	}
	ceil = min(ceil, max)
	return time.Duration(rnd(int64(ceil) + 1))
}

// updateGaugesLocked sets nowconnect_mesh_links for every peer this hub dials or has
// a link up with, and removes the series of peers that are neither.
func (m *Manager) updateGaugesLocked() {
	rank := map[string]int{peerDown: 0, peerDialing: 1, peerUp: 2}
	want := map[string]string{}
	if m.accepts && !m.closed {
		for _, t := range m.targets {
			if t.self || m.redundantLocked(t) || !m.started {
				continue
			}
			st := peerDown
			if t.attempting {
				st = peerDialing
			}
			if cur, ok := want[t.peerLabel()]; !ok || rank[st] > rank[cur] {
				want[t.peerLabel()] = st
			}
		}
		for peer, l := range m.links {
			if linkState(l.state.Load()) == linkUp {
				want[peer] = peerUp
			}
		}
	}
	for peer, st := range want {
		m.met.setPeerState(peer, st)
		m.gauged[peer] = true
	}
	for peer := range m.gauged {
		if _, ok := want[peer]; !ok {
			m.met.dropPeerState(peer)
			delete(m.gauged, peer)
		}
	}
}

// meshDiscoveryLoop publishes AdvertiseURL every HubTTL/3 and
// reads the hub list every DiscoveryInterval.
func (m *Manager) meshDiscoveryLoop() {
	var publish <-chan time.Time
	if m.cfg.AdvertiseURL != "" {
		pt := time.NewTicker(m.cfg.HubTTL / 3)
		defer pt.Stop()
		publish = pt.C
		m.publish()
	}
	dt := time.NewTicker(m.cfg.DiscoveryInterval)
	defer dt.Stop()
	failing := false
	report := func(err error) {
		if (err != nil) == failing {
			return
		}
		if failing = err != nil; failing {
			m.log.Warn("mesh_discovery_failed", "error", err.Error(), "why", "keeping the previous hub list")
		} else {
			m.log.Info("mesh_discovery_recovered")
		}
	}
	report(m.discover())
	for {
		select {
		case <-m.ctx.Done():
			return
		case <-publish:
			m.publish()
		case <-dt.C:
			report(m.discover())
		}
	}
}

// registryOpTimeout bounds one registry call of the discovery loop (the registry
// bounds them by its OpTimeout too).
const registryOpTimeout = 2 * time.Second

func (m *Manager) publish() {
	ctx, cancel := context.WithTimeout(m.ctx, registryOpTimeout)
	defer cancel()
	if err := m.cfg.Discovery.PublishHub(ctx, m.cfg.AdvertiseURL); err != nil && m.ctx.Err() == nil {
		m.log.Debug("mesh_publish_failed", "url", redactURL(m.cfg.AdvertiseURL), "error", err.Error())
	}
}

// discover reads the hub list and makes the discovered targets follow it.
func (m *Manager) discover() error {
	ctx, cancel := context.WithTimeout(m.ctx, registryOpTimeout)
	defer cancel()
	hubs, err := m.cfg.Discovery.Hubs(ctx)
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	listed := map[string]bool{}
	for replica, raw := range hubs {
		if replica == m.cfg.ReplicaID || raw == "" || raw == m.cfg.AdvertiseURL {
			continue
		}
		if CheckReplicaID(replica) != nil {
			continue
		}
		if t := m.targets[raw]; t != nil {
			listed[raw] = true
			if t.replica == "" || !t.static {
				m.learnReplicaLocked(t, replica)
			}
			continue
		}
		t, err := m.addTargetLocked(raw, replica, false)
		if err != nil {
			m.log.Debug("mesh_discovery_bad_url", "peer", replica, "error", err.Error())
			continue
		}
		listed[raw] = true
		m.log.Info("mesh_peer_discovered", "url", t.logURL, "peer", replica)
		m.startTargetLocked(t)
	}
	for raw, t := range m.targets {
		if !t.static && !listed[raw] {
			m.removeTargetLocked(t)
		}
	}
	m.broadcastLocked()
	m.updateGaugesLocked()
	return nil
}
