package hub

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"
)

// PDPConfig configures the per-connection policy decision point, asked
// over HTTP in the OpenID AuthZEN evaluation shape:
//
//	POST {URL}
//	{"subject":{"type":"client","id":"10.1.2.3"},
//	 "resource":{"type":"connector","id":"addomain"},
//	 "action":{"name":"connect"},
//	 "context":{"listener":"l1"}}
//	→ {"decision": true}
type PDPConfig struct {
	URL        string
	Timeout    time.Duration // per request, default 2s
	CacheTTL   time.Duration // decision cache, default 60s; errors are not cached
	CacheSize  int           // entries, default 10000
	FailOpen   bool          // allow when the PDP fails (default: deny)
	MaxPending int           // connections waiting for a decision, default 1024
	Client     *http.Client  // default: a client with Timeout
}

// ErrPDPOverload means too many connections wait for the PDP.
var ErrPDPOverload = errors.New("pdp: too many pending decisions")

type pdpKey struct {
	client    netip.Addr
	connector string
}

type pdpEntry struct {
	allow   bool
	expires time.Time
}

// pdp asks the decision point off the event loop. A connection waiting for
// a decision is held by its askLoop, unread; the decision either hands it
// to its tunnel's loop or closes it. Reload replaces a hub's pdp with a new
// one (Hub.pdp); the old one is closed to new checks, finishes the
// decisions it has pending (drain), then stops.
type pdp struct {
	// set at construction
	h   *Hub
	cfg PDPConfig

	mu      sync.Mutex // guards cache, pending, closed
	cache   map[pdpKey]pdpEntry
	pending int
	closed  bool // drain or stop began: check takes nothing more

	wg     sync.WaitGroup // askLoop goroutines
	ctx    context.Context
	cancel context.CancelFunc
}

func newPDP(h *Hub, cfg PDPConfig) *pdp {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Second
	}
	if cfg.CacheTTL <= 0 {
		cfg.CacheTTL = time.Minute
	}
	if cfg.CacheSize <= 0 {
		cfg.CacheSize = 10000
	}
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = 1024
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: cfg.Timeout}
	}
	p := &pdp{h: h, cfg: cfg, cache: make(map[pdpKey]pdpEntry)}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	return p
}

// cached returns a fresh cached decision. Safe from any loop.
func (p *pdp) cached(k pdpKey) (allow, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e, ok := p.cache[k]
	if !ok || time.Now().After(e.expires) {
		return false, false
	}
	return e.allow, true
}

func (p *pdp) store(k pdpKey, allow bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.cache) >= p.cfg.CacheSize {
		now := time.Now()
		for key, e := range p.cache { // drop expired, then arbitrary entries
			if now.After(e.expires) || len(p.cache) >= p.cfg.CacheSize {
				delete(p.cache, key)
			}
		}
	}
	p.cache[k] = pdpEntry{allow: allow, expires: time.Now().Add(p.cfg.CacheTTL)}
}

// check runs on the listener's accept goroutine. It decides from the
// cache, or asks the PDP on a goroutine that then routes or closes conn.
// It owns conn and one count of h.conns once it returns true; false means
// p was closed (replaced by Reload, or stopped) and took nothing.
func (p *pdp) check(conn *net.TCPConn, l *listener, client netip.AddrPort) bool {
	k := pdpKey{client: client.Addr().Unmap(), connector: l.Connector}
	if allow, ok := p.cached(k); ok {
		l.met.pdpCacheHits.Inc()
		if !allow {
			l.met.pdpDeny.Inc()
			p.h.log.Warn("pdp_denied", "listener", l.Name, "connector", l.Connector, "client", p.h.maskAddr(client), "cached", true)
			p.h.conns.Add(-1)
			_ = conn.Close()
			return true
		}
		l.met.pdpAllow.Inc()
		p.h.route(conn, l, client)
		return true
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return false
	}
	full := p.pending >= p.cfg.MaxPending
	if !full {
		p.pending++
		p.wg.Add(1) // under mu: drain's Wait starts only after closed is set
	}
	p.mu.Unlock()
	if full {
		l.met.pdpError.Inc()
		l.met.pdpListenerErr.Inc()
		p.h.log.Warn("pdp_error", "listener", l.Name, "connector", l.Connector, "err", ErrPDPOverload.Error())
		if p.cfg.FailOpen {
			p.h.route(conn, l, client)
			return true
		}
		p.h.conns.Add(-1)
		_ = conn.Close()
		return true
	}
	go p.askLoop(conn, l, client, k)
	return true
}

func (p *pdp) done() {
	p.mu.Lock()
	p.pending--
	p.mu.Unlock()
}

// askLoop asks the PDP for one connection and acts on the answer. It owns
// conn until it hands it to a loop or closes it.
func (p *pdp) askLoop(conn *net.TCPConn, l *listener, client netip.AddrPort, k pdpKey) {
	defer p.wg.Done()
	defer p.done()
	allow, err := p.ask(l, client)
	switch {
	case err != nil:
		l.met.pdpError.Inc()
		l.met.pdpListenerErr.Inc()
		p.h.log.Warn("pdp_error", "listener", l.Name, "connector", l.Connector, "client", p.h.maskAddr(client),
			"err", err.Error(), "fail_open", p.cfg.FailOpen)
		allow = p.cfg.FailOpen
	case allow:
		l.met.pdpAllow.Inc()
		p.store(k, true)
	default:
		l.met.pdpDeny.Inc()
		p.store(k, false)
	}
	if !allow {
		if err == nil {
			p.h.log.Warn("pdp_denied", "listener", l.Name, "connector", l.Connector, "client", p.h.maskAddr(client))
		}
		p.h.conns.Add(-1)
		_ = conn.Close()
		return
	}
	p.h.route(conn, l, client)
}

type authzenRequest struct {
	Subject  authzenEntity     `json:"subject"`
	Resource authzenEntity     `json:"resource"`
	Action   authzenAction     `json:"action"`
	Context  map[string]string `json:"context,omitempty"`
}

type authzenEntity struct {
	Type string `json:"type"`
	ID   string `json:"id"`
}

type authzenAction struct {
	Name string `json:"name"`
}

// ask performs one AuthZEN evaluation.
func (p *pdp) ask(l *listener, client netip.AddrPort) (bool, error) {
	body, err := json.Marshal(authzenRequest{
		Subject:  authzenEntity{Type: "client", ID: client.Addr().Unmap().String()},
		Resource: authzenEntity{Type: "connector", ID: l.Connector},
		Action:   authzenAction{Name: "connect"},
		Context:  map[string]string{"listener": l.Name},
	})
	if err != nil {
		return false, err
	}
	ctx, cancel := context.WithTimeout(p.ctx, p.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return false, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := p.cfg.Client.Do(req)
	if err != nil {
		return false, fmt.Errorf("pdp request: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Errorf("pdp answered HTTP %d", resp.StatusCode)
	}
	var out struct {
		Decision *bool `json:"decision"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&out); err != nil {
		return false, fmt.Errorf("pdp response: %w", err)
	}
	if out.Decision == nil {
		return false, errors.New("pdp response has no decision")
	}
	return *out.Decision, nil
}

// close makes check refuse new work (it returns false).
func (p *pdp) close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
}

// drain lets the pending decisions finish (each bounded by the request
// timeout), then releases the client. Called by pdpRetireLoop.
func (p *pdp) drain() {
	p.close()
	p.wg.Wait()
	p.cancel()
	p.cfg.Client.CloseIdleConnections()
}

// stop cancels pending requests and waits for them; their sockets close.
// Safe to call more than once, and during drain.
func (p *pdp) stop() {
	p.close()
	p.cancel()
	p.wg.Wait()
	p.cfg.Client.CloseIdleConnections()
}
