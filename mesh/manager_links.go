package mesh

import (
	"context"
	"log/slog"
	"time"
)

// The duplicate rule and the bookkeeping of links coming up and going down (see "One
// link per pair" in manager.go).

// preferred reports whether l is the link the duplicate rule keeps against a link in
// the other direction: the one dialed by the lower replica id.
func (m *Manager) preferred(l *Link) bool {
	if l.dialed {
		return m.cfg.ReplicaID < l.peer
	}
	return l.peer < m.cfg.ReplicaID
}

// holdMax bounds how long an inbound link that would lose to a dial in flight waits
// for that dial's outcome (see the package comment).
func (m *Manager) holdMax() time.Duration { return m.cfg.HandshakeTimeout / 2 }

// holdLocked reports whether an inbound link from peer must wait: a dial of ours is in
// flight that may reach peer (its replica is peer or not known yet).
func (m *Manager) holdLocked(peer string) bool {
	for _, t := range m.targets {
		if t.attempting && !t.self && (t.replica == peer || t.replica == "") {
			return true
		}
	}
	return false
}

// register applies the duplicate rule to l, whose M_HELLO has arrived: it makes l the
// link to its peer and returns the link it replaces (to be closed) and the peer's
// previous link if that is not done yet (LinkUp of l waits for its LinkDown), or
// refuses l with ErrDuplicateLink. Called on l's linkReadLoop.
func (m *Manager) register(l *Link) (old, prev *Link, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if t := l.target; t != nil {
		t.attempting = false
		m.learnReplicaLocked(t, l.peer)
		m.broadcastLocked()
	}
	if !l.dialed && !m.preferred(l) && m.holdLocked(l.peer) {
		timer := time.NewTimer(m.holdMax())
		defer timer.Stop()
		for m.holdLocked(l.peer) && !m.closed {
			ch := m.changed
			m.mu.Unlock()
			expired := false
			select {
			case <-ch:
			case <-timer.C:
				expired = true
			}
			m.mu.Lock()
			if expired {
				break
			}
		}
	}
	if m.closed {
		return nil, nil, &linkError{reason: reasonShutdown, code: 1001, err: ErrShutdown, detail: "this hub is shutting down"}
	}
	if e := m.links[l.peer]; e != nil {
		switch {
		case e.dialed == l.dialed:
			// The same direction: the peer (or this hub) dials only while it has no
			// link, so the older one is stale (the peer restarted unnoticed).
			old = e
		case !l.dialed || m.preferred(e):
			// Inbound, l is not up at its dialer yet: the link that is stays. Dialed,
			// the peer accepted l while this hub accepted e: the link dialed by the
			// lower replica id wins, on both ends.
			return nil, nil, &linkError{reason: reasonDuplicate, code: 1000, err: ErrDuplicateLink,
				detail: "a link dialed by " + e.dialerID() + " is up", text: reasonDuplicate + " " + m.cfg.ReplicaID}
		default:
			old = e
		}
	}
	if !l.state.CompareAndSwap(int32(linkHandshake), int32(linkRegistered)) {
		return nil, nil, l.cause()
	}
	prev = m.latest[l.peer]
	m.links[l.peer] = l
	m.latest[l.peer] = l
	l.registered = true
	if t := l.target; t != nil {
		t.link = l
	}
	m.broadcastLocked()
	return old, prev, nil
}

// unregister removes l from the links (it is closing). Safe from any goroutine,
// also while l's reader is still in the handshake (it reads l.peer only once l was
// registered, under m.mu).
func (m *Manager) unregister(l *Link) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !l.registered {
		return
	}
	if m.links[l.peer] == l {
		delete(m.links, l.peer)
	}
	if t := l.target; t != nil && t.link == l {
		t.link = nil
	}
	m.broadcastLocked()
	m.updateGaugesLocked()
}

// linkUp records that l came up, calls LinkUp and then makes l visible (state up).
func (m *Manager) linkUp(l *Link) {
	m.mu.Lock()
	if m.seen[l.peer] {
		m.met.reconnects(l.peer).Inc()
	}
	m.seen[l.peer] = true
	if l.target != nil {
		m.dialSucceededLocked(l.target)
	}
	m.mu.Unlock()
	via := l.remote
	if l.target != nil {
		via = l.target.logURL
	}
	l.log.Info("mesh_link_up", "via", via, "peer_active", l.hello.Active, "peer_link_window", l.hello.LinkWindow)
	m.cfg.Handler.LinkUp(l)
	// Visible to Link and Links once the hub has handled LinkUp (unless it closed
	// meanwhile: then LinkDown follows).
	l.state.CompareAndSwap(int32(linkRegistered), int32(linkUp))
	m.mu.Lock()
	m.updateGaugesLocked()
	m.mu.Unlock()
}

// forget drops l as its peer's latest link, once its LinkDown has run: a link
// registering until then waits for l.done before its LinkUp.
func (m *Manager) forget(l *Link) {
	m.mu.Lock()
	if l.registered && m.latest[l.peer] == l {
		delete(m.latest, l.peer)
	}
	m.mu.Unlock()
}

// linkFinished records that l is done (LinkDown follows if it was up).
func (m *Manager) linkFinished(l *Link, wasUp bool, cause *linkError) {
	m.mu.Lock()
	delete(m.all, l)
	if t := l.target; t != nil && t.attempting && t.pending == l {
		t.attempting = false
	}
	if t := l.target; t != nil && t.pending == l {
		t.pending = nil
	}
	peer := l.peer
	if peer == "" && l.target != nil {
		peer = l.target.peerLabel()
	}
	m.broadcastLocked()
	m.updateGaugesLocked()
	m.mu.Unlock()
	if cause.counts() {
		if peer != "" {
			m.met.linkErrors(peer).Inc()
		} else {
			m.met.acceptError(acceptHandshake)
		}
	}
	switch {
	case wasUp:
		level := slog.LevelWarn
		if !cause.counts() {
			level = slog.LevelInfo
		}
		l.log.Log(context.Background(), level, "mesh_link_down", "reason", cause.reason, "error", cause.detail,
			"up", time.Since(l.upAt).Round(time.Millisecond).String())
	case l.target == nil && cause.reason != reasonDuplicate:
		// An inbound link refused or failed before it was up; dial failures are
		// logged by their dialLoop.
		l.log.Warn("mesh_peer_refused", "remote", l.remote, "peer", l.peer, "reason", cause.reason, "error", cause.detail)
	}
}
