package check

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"github.com/nowconnect/nowconnect/internal/confdoc"
)

// maxBody bounds the response body read by the http, hub and pingpong checks.
const maxBody = 4 << 20

// httpCheck sends one request and checks the status and, optionally, the body.
type httpCheck struct {
	url       *url.URL
	method    string
	status    statusSet
	bodyRE    *regexp.Regexp
	headers   [][2]string
	body      string
	user, pw  string // basic auth
	hasAuth   bool
	digest    bool // conn-check's digest_auth: reported as not supported
	tls       *tls.Config
	redirects bool
	proxy     *url.URL
}

func parseHTTP(f *fields) prober {
	c := &httpCheck{method: "GET"}
	c.url = f.url("url", "http", "https")
	if m := f.str("method"); m != "" {
		c.method = strings.ToUpper(m)
		if strings.ContainsAny(c.method, " \t\r\n") {
			f.errf("method", "%q is not an HTTP method", m)
		}
	}
	c.status = f.statuses()
	if re := f.str("body_regex"); re != "" {
		var err error
		if c.bodyRE, err = regexp.Compile(re); err != nil {
			f.errf("body_regex", "bad regular expression: %v", err)
		}
	}
	c.headers = f.pairs("headers", sensitiveHeader)
	c.body = f.str("body")
	if c.url != nil {
		if params := f.pairs("params", func(string) bool { return false }); len(params) > 0 {
			q := c.url.Query()
			for _, p := range params {
				q.Add(p[0], p[1])
			}
			c.url.RawQuery = q.Encode()
		}
	}
	if cookies := f.pairs("cookies", func(string) bool { return true }); len(cookies) > 0 {
		var parts []string
		for _, ck := range cookies {
			parts = append(parts, (&http.Cookie{Name: ck[0], Value: ck[1]}).String())
		}
		c.headers = append(c.headers, [2]string{"Cookie", strings.Join(parts, "; ")})
	}
	if creds := f.credentials("auth"); creds != nil {
		c.user, c.pw, c.hasAuth = creds[0], creds[1], true
	}
	c.digest = f.credentials("digest_auth") != nil
	c.tls = f.tlsConfig("", true)
	c.redirects = f.boolean("allow_redirects", false)
	c.proxy = f.proxy()
	return c
}

// sensitiveHeader reports headers whose values are credentials, scrubbed from output.
func sensitiveHeader(name string) bool {
	n := strings.ToLower(name)
	for _, s := range []string{"auth", "token", "key", "cookie", "secret", "pass", "session"} {
		if strings.Contains(n, s) {
			return true
		}
	}
	return false
}

// url reads a required URL key with one of schemes; a password in it is a secret.
func (f *fields) url(key string, schemes ...string) *url.URL {
	s := f.need(key)
	if s == "" {
		return nil
	}
	u, err := url.Parse(s)
	if err == nil && u.User != nil {
		if pw, ok := u.User.Password(); ok {
			f.addSecret(pw)
			f.addSecret(url.QueryEscape(pw))
		}
	}
	if err != nil {
		f.errf(key, "bad URL: %v", scrub(err.Error(), f.secrets))
		return nil
	}
	ok := false
	for _, sc := range schemes {
		ok = ok || u.Scheme == sc
	}
	if !ok || u.Host == "" {
		f.errf(key, "want a %s:// URL with a host, got %q", strings.Join(schemes, ":// or "), u.Redacted())
		return nil
	}
	return u
}

// credentials reads a [user, password] pair (conn-check's auth and digest_auth).
func (f *fields) credentials(key string) []string {
	n := f.get(key)
	if n == nil {
		return nil
	}
	if n.Kind != confdoc.List || len(n.Items) != 2 {
		f.errf(key, "expected [user, password], got %s", describe(n))
		return nil
	}
	user, ok1 := scalarText(n.Items[0])
	pw, ok2 := scalarText(n.Items[1])
	if !ok1 || !ok2 {
		f.errf(key, "expected [user, password] as two strings")
		return nil
	}
	f.addSecret(pw)
	return []string{user, pw}
}

// proxy reads proxy_url, or conn-check's proxy_host and proxy_port (default 8000).
func (f *fields) proxy() *url.URL {
	host := f.str("proxy_host")
	port := f.integer("proxy_port", 8000, 1, 65535)
	if f.has("proxy_url") {
		if host != "" {
			f.errf("proxy_host", "set proxy_url or proxy_host, not both")
		}
		return f.url("proxy_url", "http", "https")
	}
	f.used["proxy_url"] = true
	if host == "" {
		if f.has("proxy_port") {
			f.errf("proxy_port", "proxy_port needs proxy_host")
		}
		return nil
	}
	return &url.URL{Scheme: "http", Host: hostPort(host, port)}
}

// statusSet is the accepted status codes: inclusive ranges.
type statusSet struct {
	ranges [][2]int
	text   string
}

func (s statusSet) has(code int) bool {
	for _, r := range s.ranges {
		if code >= r[0] && code <= r[1] {
			return true
		}
	}
	return false
}

// statuses reads expect_status (or conn-check's expected_code): a code (200), a class
// ("2xx"), a range ("200-399") or a list of them. Default 2xx.
func (f *fields) statuses() statusSet {
	key := "expect_status"
	if f.has("expected_code") {
		if f.has(key) {
			f.errf("expected_code", "set expect_status or expected_code, not both")
		}
		key = "expected_code"
	} else {
		f.used["expected_code"] = true
	}
	n := f.get(key)
	if n == nil {
		return statusSet{ranges: [][2]int{{200, 299}}, text: "2xx"}
	}
	items := []*confdoc.Node{n}
	if n.Kind == confdoc.List {
		items = n.Items
	}
	var set statusSet
	var texts []string
	for _, it := range items {
		var s string
		if v, ok := intOf(it); ok && it.Kind == confdoc.Scalar {
			s = strconv.FormatInt(v, 10)
		} else if t, ok := scalarText(it); ok {
			s = t
		}
		r, ok := parseStatus(s)
		if !ok {
			f.errAt(it.Pos, key, "%q is not a status code, class (2xx) or range (200-299)", s)
			continue
		}
		set.ranges = append(set.ranges, r)
		texts = append(texts, s)
	}
	set.text = strings.Join(texts, ",")
	return set
}

func parseStatus(s string) ([2]int, bool) {
	s = strings.ToLower(strings.TrimSpace(s))
	if len(s) == 3 && strings.HasSuffix(s, "xx") && s[0] >= '1' && s[0] <= '5' {
		c := int(s[0]-'0') * 100
		return [2]int{c, c + 99}, true
	}
	lo, hi, isRange := strings.Cut(s, "-")
	a, err1 := strconv.Atoi(lo)
	b := a
	var err2 error
	if isRange {
		b, err2 = strconv.Atoi(hi)
	}
	if err1 != nil || err2 != nil || a < 100 || b > 599 || a > b {
		return [2]int{}, false
	}
	return [2]int{a, b}, true
}

func (c *httpCheck) name() string {
	if c.url == nil {
		return "http"
	}
	if c.method != "GET" {
		return "http " + c.method + " " + c.url.Redacted()
	}
	return "http " + c.url.Redacted()
}

// newHTTPClient returns a client that never reuses connections (each check is one probe),
// uses no proxy from the environment, and follows redirects only when asked.
func newHTTPClient(conf *tls.Config, proxy *url.URL, redirects bool) *http.Client {
	tr := &http.Transport{
		DialContext:       (&net.Dialer{}).DialContext,
		TLSClientConfig:   conf,
		DisableKeepAlives: true,
		ForceAttemptHTTP2: true,
	}
	if proxy != nil {
		tr.Proxy = http.ProxyURL(proxy)
	}
	cl := &http.Client{Transport: tr}
	if !redirects {
		cl.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	}
	return cl
}

// fetch sends a request and reads at most maxBody bytes of the answer.
func fetch(ctx context.Context, cl *http.Client, req *http.Request) (*http.Response, []byte, error) {
	resp, err := cl.Do(req.WithContext(ctx))
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return nil, nil, fmt.Errorf("reading the body: %w", err)
	}
	return resp, body, nil
}

func (c *httpCheck) run(ctx context.Context, r *report) {
	if c.digest {
		r.noTime = true
		r.unknown("digest_auth is not supported by nowconnect check")
		return
	}
	var body io.Reader
	if c.body != "" {
		body = strings.NewReader(c.body)
	}
	req, err := http.NewRequest(c.method, c.url.String(), body)
	if err != nil {
		r.unknown("request: %v", err)
		return
	}
	for _, h := range c.headers {
		if strings.EqualFold(h[0], "Host") {
			req.Host = h[1]
			continue
		}
		req.Header.Add(h[0], h[1])
	}
	if c.hasAuth {
		req.SetBasicAuth(c.user, c.pw)
	}
	cl := newHTTPClient(c.tls, c.proxy, c.redirects)
	defer cl.CloseIdleConnections()
	resp, data, err := fetch(ctx, cl, req)
	if err != nil {
		r.crit("request: %s", r.failed(ctx, unwrapURLError(err)))
		return
	}
	r.metric("size", float64(len(data)), "B", "", "", f64(0), nil)
	switch {
	case !c.status.has(resp.StatusCode):
		r.crit("status %s, want %s", resp.Status, plain(c.status.text))
	case c.bodyRE != nil && !c.bodyRE.Match(data):
		r.crit("status %s, but the body (%d bytes) does not match /%s/", resp.Status, len(data), c.bodyRE)
	default:
		r.ok("status %s, %d bytes", resp.Status, len(data))
	}
}

// unwrapURLError drops net/http's `Get "URL": ` prefix (the URL is the check's name).
func unwrapURLError(err error) error {
	if ue, ok := err.(*url.Error); ok {
		return ue.Err
	}
	return err
}
