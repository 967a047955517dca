package check

import (
	"context"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nowconnect/nowconnect/internal/confdoc"
)

// A check file is a list of checks. In YAML it is the document itself (conn-check's
// format, which runs unchanged) or the list under a top-level `checks` key; in TOML it is
// an array of [[checks]] tables. Every check has a `type`, an optional `name` (default
// derived from its target), `timeout` ("5s", or a number of seconds as conn-check writes
// it; default the run's --timeout) and `tags` (conn-check's, for --include-tags and
// --exclude-tags); the other keys depend on the type:
//
//	tcp       host, port
//	udp       host, port, send, expect
//	tls       host, port, server_name, ca_file, insecure, cert_file, key_file,
//	          warn_days (30), crit_days (7)
//	http      url, method (GET), expect_status (2xx), body_regex, headers, body, params,
//	          cookies, auth, ca_file, insecure, allow_redirects (false), proxy_url
//	ldap      url, start_tls, bind_dn, password | password_file, base, filter, scope,
//	          expect_min_entries (1), server_name, ca_file, insecure
//	redis     host, port (6379) | socket, username, password | password_file, tls,
//	          server_name, ca_file, insecure, registry (false: also probe what the HA
//	          registry needs of the user)
//	hub       url, connectors, ca_file, insecure
//	pingpong  hub, connector, url, base, filter, bind_dn, password | password_file,
//	          start_tls, server_name, ca_file, insecure
//
// conn-check's spellings are accepted too: ssl (tls), https (http), expected_code
// (expect_status), disable_tls_verification and verify (insecure), proxy_host/proxy_port.
// The conn-check types this tool does not implement (amqp, postgres, mongodb, memcache,
// smtp) load, and report UNKNOWN "not supported" when run.

// checkType is one check type: parse reads its keys and returns its prober.
type checkType struct {
	parse func(f *fields) prober
}

var types = map[string]checkType{
	"tcp":      {parseTCP},
	"udp":      {parseUDP},
	"tls":      {parseTLS},
	"http":     {parseHTTP},
	"ldap":     {parseLDAP},
	"redis":    {parseRedis},
	"hub":      {parseHub},
	"pingpong": {parsePingPong},
}

// aliases maps conn-check's other names to ours.
var aliases = map[string]string{
	"ssl":        "tls",
	"https":      "http",
	"postgresql": "postgres",
	"memcached":  "memcache",
	"mongo":      "mongodb",
}

// unsupported are conn-check types that load but report UNKNOWN.
var unsupported = map[string]bool{"amqp": true, "postgres": true, "mongodb": true, "memcache": true, "smtp": true}

// Loader turns check files into checks. Load each file (LoadFile) or generated document
// (Load), then take the checks; Checks reports every problem of every file at once.
type Loader struct {
	// Timeout is the timeout of checks that set none.
	Timeout time.Duration

	checks []*Check
	errs   Errors
	names  map[string]string // check name → where it was defined
}

// NewLoader returns a loader whose checks time out after timeout unless they say otherwise.
func NewLoader(timeout time.Duration) *Loader {
	return &Loader{Timeout: timeout, names: map[string]string{}}
}

// LoadFile loads the checks of a .yaml, .yml or .toml file.
func (l *Loader) LoadFile(path string) {
	format, err := FormatOf(path)
	if err != nil {
		l.errs = append(l.errs, &Error{File: path, Msg: err.Error()})
		return
	}
	data, err := readFile(path)
	if err != nil {
		l.errs = append(l.errs, err.(*Error))
		return
	}
	l.Load(path, format, data)
}

// Load loads the checks of a document; name stands for its file in messages.
func (l *Loader) Load(name string, format Format, data []byte) {
	p := &parser{file: name}
	defer func() {
		p.errs.Sort()
		l.errs = append(l.errs, p.errs...)
	}()
	root := p.parse(format, data)
	if root == nil {
		return
	}
	list := root
	if root.Kind == confdoc.Map {
		list = nil
		for _, e := range root.Entries {
			if e.Key != "checks" {
				p.at(e.Pos, e.Key, "unknown key: a check file holds a list of checks (YAML) or [[checks]] tables")
				continue
			}
			if e.Val.Kind != confdoc.List {
				p.at(e.Pos, "checks", "expected a list of checks, got %s", describe(e.Val))
				return
			}
			list = e.Val
		}
		if list == nil {
			if len(p.errs) == 0 {
				p.at(root.Pos, "checks", "no checks: want a list of checks (YAML) or [[checks]] tables")
			}
			return
		}
	} else if root.Kind != confdoc.List {
		p.at(root.Pos, "", "expected a list of checks, got %s", describe(root))
		return
	}
	for i, n := range list.Items {
		if c := l.loadCheck(p, confdoc.JoinIndex("checks", i), n); c != nil {
			l.checks = append(l.checks, c)
		}
	}
}

func (l *Loader) loadCheck(p *parser, path string, n *confdoc.Node) *Check {
	if n.Kind != confdoc.Map {
		p.at(n.Pos, path, "expected a check (a mapping with a type), got %s", describe(n))
		return nil
	}
	f := &fields{p: p, path: path, n: n, used: map[string]bool{}}
	typ := strings.ToLower(f.need("type"))
	if a, ok := aliases[typ]; ok {
		typ = a
	}
	c := &Check{Type: typ, Where: fmt.Sprintf("%s:%d", p.file, n.Pos.Line)}
	c.Name = f.str("name")
	c.Timeout = f.duration("timeout", l.Timeout)
	c.Tags = f.list("tags")
	switch t, ok := types[typ]; {
	case ok:
		c.probe = t.parse(f)
		f.done()
	case unsupported[typ]:
		for _, e := range n.Entries { // not ours to judge
			f.used[e.Key] = true
		}
		f.secret("password")
		u := &unsupportedCheck{typ: typ}
		if h := f.get("host"); h != nil {
			u.host, _ = scalarText(h)
		}
		if pn := f.get("port"); pn != nil {
			if v, ok := intOf(pn); ok {
				u.port = strconv.FormatInt(v, 10)
			}
		}
		c.probe = u
	case typ != "":
		known := make([]string, 0, len(types))
		for k := range types {
			known = append(known, k)
		}
		sort.Strings(known)
		msg := fmt.Sprintf("unknown check type %q", typ)
		if s := confdoc.Suggest(typ, known); s != "" {
			msg += fmt.Sprintf(" (did you mean %s?)", s)
		}
		f.errf("type", "%s; known: %s", msg, strings.Join(known, ", "))
	}
	if f.bad || c.probe == nil {
		return nil
	}
	c.secrets = f.secrets
	if c.Name == "" {
		c.Name = c.probe.name()
	}
	c.Name = oneLine(c.Name) // derived names never hold a secret (URLs are redacted)
	if prev, dup := l.names[c.Name]; dup {
		f.errf("name", "duplicate check name %q (also the check at %s): set a name", c.Name, prev)
		return nil
	}
	l.names[c.Name] = c.Where
	return c
}

// Checks returns the loaded checks in file order, or every problem found.
func (l *Loader) Checks() ([]*Check, error) {
	if len(l.errs) > 0 {
		return nil, l.errs
	}
	return l.checks, nil
}

// hostPort joins host and port for dialing and names.
func hostPort(host string, port int) string { return net.JoinHostPort(host, strconv.Itoa(port)) }

// unsupportedCheck is a conn-check type this tool does not implement.
type unsupportedCheck struct{ typ, host, port string }

func (u *unsupportedCheck) name() string {
	if u.host == "" {
		return u.typ
	}
	if u.port == "" {
		return u.typ + " " + u.host
	}
	return u.typ + " " + net.JoinHostPort(u.host, u.port)
}

func (u *unsupportedCheck) run(_ context.Context, r *report) {
	r.noTime = true
	r.unknown("%s checks are not supported by nowconnect check", u.typ)
}
