package mesh

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/gobwas/ws"
)

// The native /mesh listener (ha.mesh.listen): plain TCP or crypto/tls, on goroutines
// rather than the gnet engine, which has no TLS. With ListenTLS requiring client
// certificates the TLS handshake refuses a peer without a certificate from ClientCAs;
// with Secret the upgrade also needs a valid mesh token (401 otherwise). Connections
// in TLS or upgrade are bounded by maxPendingAccepts and by HandshakeTimeout each.

// maxPendingAccepts bounds the inbound connections between accept and M_HELLO.
const maxPendingAccepts = 64

// meshPath is the only path the native listener upgrades.
const meshPath = "/mesh"

// meshListenLoop accepts connections on the native listener until it closes.
func (m *Manager) meshListenLoop(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if m.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and the like: the listener stays; wait a moment rather than
			// spin (this is the production accept loop, not a test).
			m.log.Warn("mesh_accept_failed", "error", err.Error())
			timer := time.NewTimer(50 * time.Millisecond)
			select {
			case <-m.ctx.Done():
				timer.Stop()
				return
			case <-timer.C:
			}
			continue
		}
		if !m.pendingAccepts.inc(maxPendingAccepts) {
			m.met.acceptError(acceptOverload)
			_ = c.Close()
			continue
		}
		if !m.trackRaw(c, true) {
			m.pendingAccepts.dec()
			_ = c.Close()
			return
		}
		m.wg.Go(func() { m.acceptListened(c) })
	}
}

// checkPeerCert ties a peer that proved itself with a client certificate alone (no
// mesh token) to the replica it announces: the certificate must be valid for the host
// of a URL this hub knows that replica by (a peer URL that answered as it, or the
// registry's entry, read again if it names none yet). Without it, any certificate of
// ca_bundle could claim any replica id and take over another hub's link, and with it
// that hub's streams. A replica this hub knows by no URL (a peer that dials without
// being dialed or listed) is admitted on the certificate alone and logged once
// (mesh_peer_identity_unchecked).
func (m *Manager) checkPeerCert(cert *x509.Certificate, replica string) error {
	hosts := m.hostsOf(replica)
	if len(hosts) == 0 && m.cfg.Discovery != nil {
		_ = m.discover() // a peer that started a moment ago: the registry may list it by now
		hosts = m.hostsOf(replica)
	}
	if len(hosts) == 0 {
		m.mu.Lock()
		first := !m.unchecked[replica]
		if first {
			if len(m.unchecked) >= maxUnchecked {
				clear(m.unchecked) // bounded: at worst a replica is logged again
			}
			m.unchecked[replica] = true
		}
		m.mu.Unlock()
		if first {
			m.log.Warn("mesh_peer_identity_unchecked", "peer", replica, "subject", cert.Subject.CommonName,
				"why", "no peer URL or registry entry names this replica, so its client certificate (from ca_bundle) is not checked against a host; list it in ha.mesh.peers or give it an advertise_url to tie it")
		}
		return nil
	}
	for _, h := range hosts {
		if cert.VerifyHostname(h) == nil {
			return nil
		}
	}
	return fmt.Errorf("client certificate %q is not valid for %s, the host this hub knows %s by", cert.Subject.CommonName, strings.Join(hosts, " or "), replica)
}

// hostsOf returns the hosts (no port) of the URLs this hub knows replica by.
func (m *Manager) hostsOf(replica string) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var hosts []string
	for _, t := range m.targets {
		if t.replica != replica || t.self {
			continue
		}
		h, _, err := net.SplitHostPort(t.host)
		if err != nil {
			h = t.host
		}
		hosts = append(hosts, strings.Trim(h, "[]"))
	}
	slices.Sort(hosts)
	return slices.Compact(hosts)
}

// maxUnchecked bounds the replicas remembered as logged unchecked.
const maxUnchecked = 1024

// trackRaw adds c to (add) or removes it from the connections Close must close.
func (m *Manager) trackRaw(c net.Conn, add bool) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !add {
		delete(m.raw, c)
		return true
	}
	if m.closed {
		return false
	}
	m.raw[c] = struct{}{}
	return true
}

// acceptListened takes one connection of the native listener through TLS and the
// upgrade, then runs it as a link: it becomes the link's linkReadLoop.
func (m *Manager) acceptListened(raw net.Conn) {
	l, ok := m.upgradeListened(raw)
	m.trackRaw(raw, false)
	m.pendingAccepts.dec()
	if !ok {
		_ = raw.Close()
		return
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		_ = l.conn.Close()
		return
	}
	m.all[l] = struct{}{}
	m.mu.Unlock()
	l.linkReadLoop()
}

func (m *Manager) upgradeListened(raw net.Conn) (*Link, bool) {
	remote := raw.RemoteAddr().String()
	_ = raw.SetDeadline(time.Now().Add(m.cfg.HandshakeTimeout))
	c := raw
	if m.cfg.ListenTLS != nil {
		tc := tls.Server(raw, m.cfg.ListenTLS)
		if err := tc.HandshakeContext(m.ctx); err != nil {
			m.met.acceptError(acceptTLS)
			m.log.Warn("mesh_peer_refused", "remote", remote, "via", "listen", "reason", "tls", "error", err.Error())
			return nil, false
		}
		c = tc
	}
	var authz []byte
	var peer string
	var authErr error
	u := ws.Upgrader{
		OnRequest: func(uri []byte) error {
			path, _, _ := bytes.Cut(uri, []byte("?"))
			if string(path) != meshPath {
				return ws.RejectConnectionError(ws.RejectionStatus(http.StatusNotFound))
			}
			return nil
		},
		OnHeader: func(key, value []byte) error {
			if bytes.EqualFold(key, []byte("Authorization")) {
				authz = append(authz[:0], value...)
			}
			return nil
		},
		OnBeforeUpgrade: func() (ws.HandshakeHeader, error) {
			if m.verifier == nil {
				return nil, nil // mTLS only: the TLS handshake authenticated the peer
			}
			if peer, authErr = m.verifier.verify(authz); authErr != nil {
				return nil, ws.RejectConnectionError(ws.RejectionStatus(http.StatusUnauthorized))
			}
			return nil, nil
		},
	}
	if _, err := u.Upgrade(c); err != nil {
		reason, msg := acceptUpgrade, err.Error()
		if authErr != nil {
			reason, msg = acceptAuth, authErr.Error()
		}
		m.met.acceptError(reason)
		m.log.Warn("mesh_peer_refused", "remote", remote, "via", "listen", "reason", reason, "error", msg)
		return nil, false
	}
	_ = c.SetDeadline(time.Time{})
	l := newLink(m, c, false, nil)
	l.authPeer = peer
	if tc, ok := c.(*tls.Conn); ok {
		if certs := tc.ConnectionState().PeerCertificates; len(certs) > 0 {
			l.peerCert = certs[0] // verified against ClientCAs by the handshake
		}
	}
	return l, true
}
