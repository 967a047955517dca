package check

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/go-ldap/ldap/v3"
)

// ldapCheck proves a port speaks LDAP (a rootDSE read), then optionally starts TLS, binds
// and searches.
type ldapCheck struct {
	t          *ldapTarget
	base       string
	filter     string
	scope      int
	minEntries int
}

// ldapTarget is where and how to connect: shared by the ldap and pingpong checks.
type ldapTarget struct {
	url      string // as configured, for names
	addr     string // host:port
	ldaps    bool
	startTLS bool
	tls      *tls.Config
	bindDN   string
	password string
}

// ldapTarget reads url, start_tls, bind_dn, password or password_file, and the TLS keys.
func (f *fields) ldapTarget() *ldapTarget {
	u := f.url("url", "ldap", "ldaps")
	t := &ldapTarget{startTLS: f.boolean("start_tls", false), bindDN: f.str("bind_dn"), password: f.password("password")}
	host := ""
	if u != nil {
		t.url = u.Redacted()
		t.ldaps = u.Scheme == "ldaps"
		host = u.Hostname()
		port := u.Port()
		if port == "" {
			port = map[bool]string{false: "389", true: "636"}[t.ldaps]
		}
		t.addr = net.JoinHostPort(host, port)
		if u.Path != "" && u.Path != "/" {
			f.errf("url", "an LDAP URL here is ldap[s]://host[:port]; set the search base with base")
		}
	}
	t.tls = f.tlsConfig(host, true)
	if t.ldaps && t.startTLS {
		f.errf("start_tls", "start_tls on an ldaps:// URL: the connection is TLS already")
	}
	if t.password != "" && t.bindDN == "" {
		f.errf("bind_dn", "a password needs bind_dn")
	}
	if t.bindDN != "" && !f.has("password") && !f.has("password_file") {
		f.errf("password", "bind_dn %q needs password or password_file", t.bindDN)
	}
	return t
}

var scopes = map[string]int{
	"base": ldap.ScopeBaseObject, "one": ldap.ScopeSingleLevel, "sub": ldap.ScopeWholeSubtree,
}

func parseLDAP(f *fields) prober {
	c := &ldapCheck{t: f.ldapTarget(), base: f.str("base"), scope: ldap.ScopeWholeSubtree}
	c.filter = f.filter()
	if s := f.str("scope"); s != "" {
		var ok bool
		if c.scope, ok = scopes[strings.ToLower(s)]; !ok {
			f.errf("scope", "%q is not a scope: want base, one or sub", s)
		}
	}
	c.minEntries = f.integer("expect_min_entries", 1, 0, 1_000_000)
	if c.base == "" {
		for _, k := range []string{"filter", "scope", "expect_min_entries"} {
			if f.has(k) {
				f.errf(k, "%s needs base (the search to run)", k)
			}
		}
	}
	return c
}

// filter reads an LDAP filter, default (objectClass=*).
func (f *fields) filter() string {
	s := f.str("filter")
	if s == "" {
		return "(objectClass=*)"
	}
	if _, err := ldap.CompileFilter(s); err != nil {
		f.errf("filter", "bad LDAP filter: %v", err)
	}
	return s
}

func (c *ldapCheck) name() string { return "ldap " + c.t.url }

func (c *ldapCheck) run(ctx context.Context, r *report) {
	nc, err := c.t.dial(ctx)
	if err != nil {
		r.crit("connect: %s", r.failed(ctx, err))
		return
	}
	defer nc.Close()
	if tc, ok := nc.(*tls.Conn); ok {
		r.ok("%s", tlsDone(tc.ConnectionState()))
	}

	// The rootDSE proves the port speaks LDAP: any LDAP answer, even a refusal, does.
	dse, err := readRootDSE(ctx, nc, []string{"namingContexts", "supportedLDAPVersion", "vendorName", "vendorVersion"})
	var nl *notLDAPError
	switch {
	case errors.As(err, &nl):
		r.crit("not LDAP: to a rootDSE read the server answered %s", quoteStart(nl.start))
		return
	case errors.Is(err, errNotLDAP):
		r.crit("%s", err)
		return
	case err != nil:
		r.crit("not LDAP: no LDAP answer to a rootDSE read (%s)", r.failed(ctx, err))
		return
	case dse.code != 0:
		r.ok("rootDSE read refused (%s): an LDAP server", plain(ldapCodeName(dse.code)))
	default:
		r.ok("%s", describeRootDSE(dse.attrs))
	}
	conn := client(ctx, nc, c.t.ldaps)
	defer conn.Close()
	if !c.t.session(ctx, conn, r) || c.base == "" {
		return
	}
	res, err := conn.Search(ldap.NewSearchRequest(c.base, c.scope, ldap.NeverDerefAliases, max(c.minEntries, 1), 0, false,
		c.filter, []string{"1.1"}, nil))
	more := ldap.IsErrorWithCode(err, ldap.LDAPResultSizeLimitExceeded) // the size limit is what we need
	if err != nil && !more {
		r.crit("search %s %s: %s", plain(c.base), plain(c.filter), ldapFailure(ctx, r, err))
		return
	}
	n := len(res.Entries)
	r.metric("entries", float64(n), "", "", fmt.Sprintf("%d:", c.minEntries), f64(0), nil)
	if n < c.minEntries {
		r.crit("search %s %s found %s, want at least %d", plain(c.base), plain(c.filter), entries(n, false), c.minEntries)
		return
	}
	r.ok("search %s %s found %s", plain(c.base), plain(c.filter), entries(n, more))
}

// entries renders a count of entries: "1 entry", "20 entries", "at least 1 entry".
func entries(n int, atLeast bool) string {
	s := fmt.Sprintf("%d entries", n)
	if n == 1 {
		s = "1 entry"
	}
	if atLeast {
		s = "at least " + s
	}
	return s
}

// session runs StartTLS and the bind, as configured; it reports whether they succeeded.
func (t *ldapTarget) session(ctx context.Context, conn *ldap.Conn, r *report) bool {
	if t.startTLS {
		if err := conn.StartTLS(t.tls); err != nil {
			r.crit("StartTLS: %s", ldapFailure(ctx, r, err))
			return false
		}
		cs, _ := conn.TLSConnectionState()
		r.ok("StartTLS: %s", tlsDone(cs))
	}
	if t.bindDN != "" {
		if err := conn.Bind(t.bindDN, t.password); err != nil {
			r.crit("bind as %s: %s", plain(t.bindDN), ldapFailure(ctx, r, err))
			return false
		}
		r.ok("bind as %s", plain(t.bindDN))
	}
	return true
}

// describeRootDSE renders what the rootDSE says about the server.
func describeRootDSE(attrs map[string][]string) string {
	var parts []string
	if v := attrs["vendorName"]; len(v) > 0 {
		parts = append(parts, strings.TrimSpace(v[0]+" "+strings.Join(attrs["vendorVersion"], " ")))
	}
	if v := attrs["supportedLDAPVersion"]; len(v) > 0 {
		parts = append(parts, "LDAPv"+strings.Join(v, "/"))
	}
	if v := attrs["namingContexts"]; len(v) > 0 {
		parts = append(parts, "naming contexts "+strings.Join(v, ", "))
	}
	if len(parts) == 0 {
		return "rootDSE read: an LDAP server"
	}
	return "rootDSE: " + strings.Join(parts, "; ")
}

// tlsDone says what a completed handshake gave: the version and the
// certificate's subject ("verification skipped" under insecure).
func tlsDone(cs tls.ConnectionState) string {
	s := tls.VersionName(cs.Version)
	if len(cs.PeerCertificates) > 0 {
		s += fmt.Sprintf(", certificate %q", cs.PeerCertificates[0].Subject.CommonName)
	}
	if len(cs.VerifiedChains) == 0 {
		s += " (verification skipped)"
	}
	return s
}

// dial connects to the target, with TLS for ldaps://.
func (t *ldapTarget) dial(ctx context.Context) (net.Conn, error) {
	raw, err := dialTCP(ctx, t.addr)
	if err != nil || !t.ldaps {
		return raw, err
	}
	tc := tls.Client(raw, t.tls)
	stop := guard(ctx, raw)
	err = tc.HandshakeContext(ctx)
	stop()
	if err != nil {
		raw.Close()
		return nil, fmt.Errorf("TLS: %w", err)
	}
	return tc, nil
}

// client starts go-ldap's client on conn; its operations end when ctx does.
func client(ctx context.Context, conn net.Conn, isTLS bool) *ldap.Conn {
	c := ldap.NewConn(conn, isTLS)
	c.Start()
	if dl, ok := ctx.Deadline(); ok {
		c.SetTimeout(time.Until(dl))
	}
	// go-ldap takes no context: closing the connection ends a pending operation. (After
	// the caller's Close this second Close is a no-op.)
	context.AfterFunc(ctx, func() { c.Close() })
	return c
}

// resultCode returns the LDAP result code of an error the server answered with; isResult
// is false for go-ldap's own client-side codes (network, timeout, decoding).
func resultCode(err error) (code int, isResult bool) {
	var le *ldap.Error
	if err == nil || !errors.As(err, &le) {
		return 0, false
	}
	c := int(le.ResultCode)
	return c, c <= 80 || (c >= 118 && c <= 123) || c == 4096
}

// ldapFailure names a server's result code ("invalidCredentials (49): message") or
// describes a transport failure.
func ldapFailure(ctx context.Context, r *report, err error) string {
	code, isResult := resultCode(err)
	if !isResult {
		if le := (*ldap.Error)(nil); errors.As(err, &le) && le.Err != nil {
			err = le.Err
		}
		return r.failed(ctx, err)
	}
	s := ldapCodeName(code)
	var le *ldap.Error
	if errors.As(err, &le) && le.Err != nil {
		if diag := strings.TrimSpace(le.Err.Error()); diag != "" {
			s += ": " + diag
		}
	}
	return s
}

// ldapCodeName renders a result code as RFC 4511 (and its extensions) name it:
// "invalidCredentials (49)".
func ldapCodeName(code int) string {
	if n, ok := ldapCodes[code]; ok {
		return fmt.Sprintf("%s (%d)", n, code)
	}
	return fmt.Sprintf("result code %d", code)
}

var ldapCodes = map[int]string{
	0: "success", 1: "operationsError", 2: "protocolError", 3: "timeLimitExceeded",
	4: "sizeLimitExceeded", 5: "compareFalse", 6: "compareTrue", 7: "authMethodNotSupported",
	8: "strongerAuthRequired", 10: "referral", 11: "adminLimitExceeded",
	12: "unavailableCriticalExtension", 13: "confidentialityRequired", 14: "saslBindInProgress",
	16: "noSuchAttribute", 17: "undefinedAttributeType", 18: "inappropriateMatching",
	19: "constraintViolation", 20: "attributeOrValueExists", 21: "invalidAttributeSyntax",
	32: "noSuchObject", 33: "aliasProblem", 34: "invalidDNSyntax", 35: "isLeaf",
	36: "aliasDereferencingProblem", 48: "inappropriateAuthentication", 49: "invalidCredentials",
	50: "insufficientAccessRights", 51: "busy", 52: "unavailable", 53: "unwillingToPerform",
	54: "loopDetect", 60: "sortControlMissing", 61: "offsetRangeError", 64: "namingViolation",
	65: "objectClassViolation", 66: "notAllowedOnNonLeaf", 67: "notAllowedOnRDN",
	68: "entryAlreadyExists", 69: "objectClassModsProhibited", 70: "resultsTooLarge",
	71: "affectsMultipleDSAs", 76: "virtualListViewError", 80: "other", 118: "canceled",
	119: "noSuchOperation", 120: "tooLate", 121: "cannotCancel", 122: "assertionFailed",
	123: "authorizationDenied", 4096: "e-syncRefreshRequired",
}
