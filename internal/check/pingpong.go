package check

import (
	"context"
	"crypto/tls"
	"strings"

	"github.com/go-ldap/ldap/v3"
)

// pingpongCheck is the runbook's end-to-end check (seed 000): read the hub's byte
// counters of a connector, run an LDAP search through one of its listeners, read them
// again; OK only if both directions (c2a client→agent, a2c agent→client) rose.
type pingpongCheck struct {
	hub       string // control URL
	connector string
	t         *ldapTarget
	hubTLS    *tls.Config // t's without the LDAP server name
	base      string
	filter    string
}

// pingpongSizeLimit bounds the entries the search asks for: enough traffic both ways,
// bounded whatever the directory holds.
const pingpongSizeLimit = 100

func parsePingPong(f *fields) prober {
	c := &pingpongCheck{}
	if u := f.url("hub", "http", "https"); u != nil {
		c.hub = strings.TrimSuffix(u.String(), "/")
	}
	c.connector = f.need("connector")
	c.t = f.ldapTarget()
	c.hubTLS = c.t.tls.Clone()
	c.hubTLS.ServerName = ""
	c.base = f.need("base")
	c.filter = f.filter()
	return c
}

func (c *pingpongCheck) name() string { return "pingpong " + c.connector }

func (c *pingpongCheck) run(ctx context.Context, r *report) {
	cl := hubClient(c.hubTLS)
	defer cl.CloseIdleConnections()
	series := func(m Metrics, dir string) (float64, bool) {
		return m.Value("nowconnect_tcp_bytes_total", map[string]string{"direction": dir, "connector": c.connector})
	}
	before, err := scrapeMetrics(ctx, cl, c.hub)
	if err != nil {
		r.crit("hub /metrics before: %s", r.failed(ctx, err))
		return
	}
	n, ok := c.search(ctx, r)
	if !ok {
		return
	}
	after, err := scrapeMetrics(ctx, cl, c.hub)
	if err != nil {
		r.crit("hub /metrics after: %s", r.failed(ctx, err))
		return
	}
	c2a0, _ := series(before, "c2a")
	a2c0, _ := series(before, "a2c")
	c2a1, ok1 := series(after, "c2a")
	a2c1, ok2 := series(after, "a2c")
	if !ok1 || !ok2 {
		r.crit("the hub has no nowconnect_tcp_bytes_total series for connector %s", plain(c.connector))
		return
	}
	dc, da := c2a1-c2a0, a2c1-a2c0
	r.metric("c2a", dc, "B", "", "1:", f64(0), nil)
	r.metric("a2c", da, "B", "", "1:", f64(0), nil)
	r.ok("search through %s found %s", plain(c.t.url), entries(n, n == pingpongSizeLimit))
	switch {
	case dc <= 0 && da <= 0:
		r.crit("neither c2a nor a2c rose (%g, %g bytes): the search did not go through connector %s", dc, da, plain(c.connector))
	case dc <= 0:
		r.crit("c2a did not rise (a2c +%g bytes)", da)
	case da <= 0:
		r.crit("a2c did not rise (c2a +%g bytes): one-way traffic", dc)
	default:
		r.ok("c2a +%g bytes, a2c +%g bytes", dc, da)
	}
}

// search runs the configured search through the listener; ok is false after a failure
// (recorded).
func (c *pingpongCheck) search(ctx context.Context, r *report) (entries int, ok bool) {
	nc, err := c.t.dial(ctx)
	if err != nil {
		r.crit("connect %s: %s", plain(c.t.url), r.failed(ctx, err))
		return 0, false
	}
	defer nc.Close()
	conn := client(ctx, nc, c.t.ldaps)
	defer conn.Close()
	if !c.t.session(ctx, conn, r) {
		return 0, false
	}
	res, err := conn.Search(ldap.NewSearchRequest(c.base, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases, pingpongSizeLimit, 0, false, c.filter, nil, nil))
	if err != nil && !ldap.IsErrorWithCode(err, ldap.LDAPResultSizeLimitExceeded) {
		r.crit("search %s through %s: %s", plain(c.base), plain(c.t.url), ldapFailure(ctx, r, err))
		return 0, false
	}
	return len(res.Entries), true
}
