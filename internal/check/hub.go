package check

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"net/http"
	"strings"
)

// hubCheck checks a hub's control port: /healthz ok, /readyz ready (degraded is a
// WARNING), /metrics parses, and each listed connector has an agent connected
// (nowconnect_agents_connected{connector} > 0).
type hubCheck struct {
	base       string // control URL without a trailing slash
	connectors []string
	tls        *tls.Config
}

func parseHub(f *fields) prober {
	c := &hubCheck{}
	if u := f.url("url", "http", "https"); u != nil {
		c.base = strings.TrimSuffix(u.String(), "/")
	}
	c.connectors = f.list("connectors")
	seen := map[string]bool{}
	for _, cn := range c.connectors {
		if cn == "" || seen[cn] {
			f.errf("connectors", "empty or repeated connector %q", cn)
		}
		seen[cn] = true
	}
	c.tls = f.tlsConfig("", false)
	return c
}

func (c *hubCheck) name() string { return "hub " + c.base }

// status reads a {"status": "..."} endpoint.
func getStatus(ctx context.Context, cl *http.Client, url string) (code int, status string, err error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, body, err := fetch(ctx, cl, req)
	if err != nil {
		return 0, "", unwrapURLError(err)
	}
	var v struct {
		Status string `json:"status"`
	}
	if json.Unmarshal(body, &v) != nil || v.Status == "" {
		v.Status = "answer " + quoteStart(body)
	}
	return resp.StatusCode, v.Status, nil
}

func (c *hubCheck) run(ctx context.Context, r *report) {
	cl := hubClient(c.tls)
	defer cl.CloseIdleConnections()
	code, st, err := getStatus(ctx, cl, c.base+"/healthz")
	switch {
	case err != nil:
		r.crit("/healthz: %s", r.failed(ctx, err))
		return
	case code != http.StatusOK || st != "ok":
		r.crit("/healthz: %d %s", code, st)
		return
	}
	r.ok("healthz ok")
	code, st, err = getStatus(ctx, cl, c.base+"/readyz")
	switch {
	case err != nil:
		r.crit("/readyz: %s", r.failed(ctx, err))
		return
	case code == http.StatusOK && st == "ready":
		r.ok("readyz ready")
	case st == "degraded":
		r.warn("readyz degraded (HA registry or mesh unhealthy)")
	default:
		r.crit("readyz %d %s", code, st)
	}
	m, err := scrapeMetrics(ctx, cl, c.base)
	if err != nil {
		r.crit("/metrics: %s", r.failed(ctx, err))
		return
	}
	for _, cn := range c.connectors {
		n, ok := m.Value("nowconnect_agents_connected", map[string]string{"connector": cn})
		r.metric("agents "+cn, n, "", "", "1:", f64(0), nil)
		switch {
		case !ok:
			r.crit("connector %s: no nowconnect_agents_connected series (not a connector of this hub?)", plain(cn))
		case n < 1:
			r.crit("connector %s: no agent connected", plain(cn))
		default:
			word := "agents"
			if n == 1 {
				word = "agent"
			}
			r.ok("connector %s: %g %s", plain(cn), n, word)
		}
	}
}
