package loadtest

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"syscall"

	"github.com/go-ldap/ldap/v3"
)

// Identity a connection is bound as.
const (
	boundAnon    = -1 // fresh connection, or an anonymous bind
	boundAdmin   = -2 // --bind-dn
	boundUnknown = -3 // after a failed bind
)

// user is one pickable user, rendered once before the run so ops allocate no strings.
type user struct {
	uid, dn, pw, filter string
}

// outcome is the result of one op. On success err is nil; class and step describe a
// failure (class is built only on the error path).
type outcome struct {
	err      error
	step     string // dial, bind, search, add, delete
	benign20 bool   // add answered typeOrValueExists
	benign16 bool   // delete answered noSuchAttribute
}

// worker owns one connection (persistent mode) and a private random source.
type worker struct {
	r     *runner
	rng   *rand.Rand
	c     *ldap.Conn
	bound int
}

func (w *worker) conn() (*ldap.Conn, error) {
	if w.c != nil {
		return w.c, nil
	}
	c, err := w.r.dial()
	if err != nil {
		return nil, err
	}
	w.c, w.bound = c, boundAnon
	return c, nil
}

// drop closes the connection; the next op dials again.
func (w *worker) drop() {
	if w.c != nil {
		_ = w.c.Close()
		w.c = nil
	}
}

// pickKind draws the op kind of the next op.
func (w *worker) pickKind() int {
	r := w.r
	if len(r.mixCum) == 0 {
		return r.kind
	}
	n := w.rng.IntN(r.mixCum[len(r.mixCum)-1])
	for i, c := range r.mixCum {
		if n < c {
			return r.mixKind[i]
		}
	}
	return r.mixKind[len(r.mixKind)-1]
}

// do runs one op of kind k and, in reconnect mode, closes the connection afterwards
// (the close is not part of the measured latency: the caller timestamps before it).
func (w *worker) do(k int) outcome {
	var o outcome
	switch opKinds[k] {
	case BindSearch:
		o = w.bindSearch()
	case Search:
		o = w.search()
	case GroupWrite:
		o = w.groupWrite()
	}
	if o.err != nil {
		if isNetworkError(o.err) {
			w.drop()
		} else if o.step == "bind" {
			w.bound = boundUnknown
		}
	}
	return o
}

// finish ends an op after its latency was taken.
func (w *worker) finish() {
	if w.r.cfg.Reconnect {
		w.drop()
	}
}

func (w *worker) ensureAdmin(c *ldap.Conn) error {
	want := boundAnon
	if w.r.cfg.BindDN != "" {
		want = boundAdmin
	}
	if w.bound == want {
		return nil
	}
	var err error
	if want == boundAdmin {
		err = c.Bind(w.r.cfg.BindDN, w.r.cfg.BindPW)
	} else {
		err = c.UnauthenticatedBind("")
	}
	if err != nil {
		return err
	}
	w.bound = want
	return nil
}

func (w *worker) searchUser(c *ldap.Conn, u *user) error {
	res, err := c.Search(ldap.NewSearchRequest(w.r.cfg.BaseDN, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases,
		0, 0, false, u.filter, w.r.cfg.Attributes, nil))
	if err != nil {
		return err
	}
	if len(res.Entries) == 0 {
		return errEmptyResult
	}
	return nil
}

var errEmptyResult = errors.New("search returned no entry")

func (w *worker) bindSearch() outcome {
	c, err := w.conn()
	if err != nil {
		return outcome{err: err, step: "dial"}
	}
	i := w.rng.IntN(len(w.r.users))
	u := &w.r.users[i]
	if err := c.Bind(u.dn, u.pw); err != nil {
		return outcome{err: err, step: "bind"}
	}
	w.bound = i
	if err := w.searchUser(c, u); err != nil {
		return outcome{err: err, step: "search"}
	}
	return outcome{}
}

func (w *worker) search() outcome {
	c, err := w.conn()
	if err != nil {
		return outcome{err: err, step: "dial"}
	}
	if err := w.ensureAdmin(c); err != nil {
		return outcome{err: err, step: "bind"}
	}
	u := &w.r.users[w.rng.IntN(len(w.r.users))]
	if err := w.searchUser(c, u); err != nil {
		return outcome{err: err, step: "search"}
	}
	return outcome{}
}

func (w *worker) groupWrite() outcome {
	c, err := w.conn()
	if err != nil {
		return outcome{err: err, step: "dial"}
	}
	if err := w.ensureAdmin(c); err != nil {
		return outcome{err: err, step: "bind"}
	}
	ui, g := w.r.pickPair(w.rng)
	member := []string{w.r.users[ui].dn}
	var o outcome
	add := ldap.NewModifyRequest(w.r.groups[g], nil)
	add.Add("member", member)
	if err := c.Modify(add); err != nil {
		if !ldap.IsErrorWithCode(err, ldap.LDAPResultAttributeOrValueExists) {
			return outcome{err: err, step: "add"}
		}
		o.benign20 = true
	}
	del := ldap.NewModifyRequest(w.r.groups[g], nil)
	del.Delete("member", member)
	if err := c.Modify(del); err != nil {
		if !ldap.IsErrorWithCode(err, ldap.LDAPResultNoSuchAttribute) {
			return outcome{err: err, step: "delete"}
		}
		o.benign16 = true
	}
	return o
}

// pickPair draws a (user, group) pair for group-write, skipping pairs that were members
// before the run (unless AllowExisting): the run must never remove a real membership.
func (r *runner) pickPair(rng *rand.Rand) (int, int) {
	nu, ng := len(r.users), len(r.groups)
	i, g := rng.IntN(nu), rng.IntN(ng)
	if len(r.existing) == 0 {
		return i, g
	}
	for try := 0; try < 32; try++ {
		if _, taken := r.existing[pairKey(i, g)]; !taken {
			return i, g
		}
		i, g = rng.IntN(nu), rng.IntN(ng)
	}
	// Densely taken: scan from the last draw; preflight made sure a free pair exists.
	total := nu * ng
	start := g*nu + i
	for n := 0; n < total; n++ {
		p := (start + n) % total
		i, g = p%nu, p/nu
		if _, taken := r.existing[pairKey(i, g)]; !taken {
			return i, g
		}
	}
	return i, g
}

func pairKey(i, g int) uint64 { return uint64(g)<<32 | uint64(uint32(i)) }

// isNetworkError reports whether err means the connection is unusable: go-ldap's
// client-side network code (200) or anything that is not an LDAP result.
func isNetworkError(err error) bool {
	if errors.Is(err, errEmptyResult) {
		return false
	}
	var le *ldap.Error
	if errors.As(err, &le) {
		return le.ResultCode == ldap.ErrorNetwork
	}
	return true
}

// classify names an error for the report: "LDAP 49 invalidCredentials", "network:
// connection refused", "client: …". The set of names is small and fixed.
func classify(err error) string {
	if errors.Is(err, errEmptyResult) {
		return "client: search returned no entry"
	}
	var le *ldap.Error
	if errors.As(err, &le) {
		switch {
		case le.ResultCode == ldap.ErrorNetwork:
			return "network: " + netClass(le.Err)
		case le.ResultCode >= 200:
			return fmt.Sprintf("client: %s (%d)", ldap.LDAPResultCodeMap[le.ResultCode], le.ResultCode)
		default:
			return fmt.Sprintf("LDAP %d %s", le.ResultCode, resultName(le.ResultCode))
		}
	}
	return "network: " + netClass(err)
}

// resultName is the RFC 4511 name of an LDAP result code.
func resultName(code uint16) string {
	if n, ok := rfcNames[code]; ok {
		return n
	}
	if n, ok := ldap.LDAPResultCodeMap[code]; ok {
		return n
	}
	return "unknown"
}

var rfcNames = map[uint16]string{
	1: "operationsError", 2: "protocolError", 3: "timeLimitExceeded", 4: "sizeLimitExceeded",
	7: "authMethodNotSupported", 8: "strongerAuthRequired", 10: "referral", 11: "adminLimitExceeded",
	12: "unavailableCriticalExtension", 13: "confidentialityRequired", 16: "noSuchAttribute",
	17: "undefinedAttributeType", 18: "inappropriateMatching", 19: "constraintViolation",
	20: "typeOrValueExists", 21: "invalidAttributeSyntax", 32: "noSuchObject", 34: "invalidDNSyntax",
	48: "inappropriateAuthentication", 49: "invalidCredentials", 50: "insufficientAccessRights",
	51: "busy", 52: "unavailable", 53: "unwillingToPerform", 54: "loopDetect", 64: "namingViolation",
	65: "objectClassViolation", 66: "notAllowedOnNonLeaf", 67: "notAllowedOnRDN", 68: "entryAlreadyExists",
	69: "objectClassModsProhibited", 71: "affectsMultipleDSAs", 80: "other",
}

// netClass maps a transport error to a small set of classes. go-ldap flattens some
// errors into strings, so the message is the fallback.
func netClass(err error) string {
	if err == nil {
		return "unknown"
	}
	var ne net.Error
	msg := strings.ToLower(err.Error())
	switch {
	case errors.Is(err, syscall.ECONNREFUSED) || strings.Contains(msg, "connection refused"):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET) || strings.Contains(msg, "connection reset"):
		return "connection reset"
	case errors.Is(err, syscall.EPIPE) || strings.Contains(msg, "broken pipe"):
		return "broken pipe"
	case (errors.As(err, &ne) && ne.Timeout()) || strings.Contains(msg, "timed out") || strings.Contains(msg, "timeout"):
		return "timeout"
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || strings.Contains(msg, "eof"):
		return "closed by peer (EOF)"
	case errors.Is(err, net.ErrClosed) || strings.Contains(msg, "closed"):
		return "connection closed"
	case strings.Contains(msg, "no such host"):
		return "no such host"
	}
	return "other"
}
