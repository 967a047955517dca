package check

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nowconnect/nowconnect/internal/confdoc"
)

// fields decodes the keys of one check, recording every problem with its line and key
// path. Each getter marks its key as known; done reports the keys nobody asked for.
// Messages about secret keys never quote the value.
type fields struct {
	p       *parser
	path    string        // "checks[3]"
	n       *confdoc.Node // the check's mapping
	used    map[string]bool
	secrets []string // collected for scrubbing
	bad     bool     // an error was recorded for this check
}

func (f *fields) errAt(ps confdoc.Pos, key, format string, args ...any) {
	f.bad = true
	f.p.at(ps, confdoc.JoinKey(f.path, key), format, args...)
}

// errf records a problem with key, at the key if present, else at the check.
func (f *fields) errf(key, format string, args ...any) {
	ps := f.n.Pos
	for _, e := range f.n.Entries {
		if e.Key == key {
			ps = e.Pos
		}
	}
	f.errAt(ps, key, format, args...)
}

// get returns key's value, nil when absent (or null), and marks key as known.
func (f *fields) get(key string) *confdoc.Node {
	f.used[key] = true
	for _, e := range f.n.Entries {
		if e.Key == key {
			if e.Val.Kind == confdoc.Null {
				return nil
			}
			return e.Val
		}
	}
	return nil
}

func (f *fields) has(key string) bool {
	for _, e := range f.n.Entries {
		if e.Key == key && e.Val.Kind != confdoc.Null {
			return true
		}
	}
	return false
}

// scalarText returns a scalar as a string: strings as they are; in YAML any scalar as
// written (so `password: 1234` is the string "1234").
func scalarText(n *confdoc.Node) (string, bool) {
	if n.Kind != confdoc.Scalar {
		return "", false
	}
	if s, ok := n.Val.(string); ok {
		return s, true
	}
	if n.HasText {
		return n.Text, true
	}
	return "", false
}

// str returns a string key, "" when absent.
func (f *fields) str(key string) string {
	n := f.get(key)
	if n == nil {
		return ""
	}
	s, ok := scalarText(n)
	if !ok {
		f.errf(key, "expected a string, got %s", describe(n))
	}
	return s
}

// need returns a required, non-empty string key.
func (f *fields) need(key string) string {
	if !f.has(key) {
		f.errf(key, "required key missing")
		f.used[key] = true
		return ""
	}
	before := len(f.p.errs)
	s := f.str(key)
	if s == "" && len(f.p.errs) == before {
		f.errf(key, "must not be empty")
	}
	return s
}

// secret returns a string key whose value is a secret (never quoted in messages).
func (f *fields) secret(key string) string {
	n := f.get(key)
	if n == nil {
		return ""
	}
	s, ok := scalarText(n)
	if !ok {
		f.errf(key, "expected a string, got %s", describe(n))
		return ""
	}
	f.addSecret(s)
	return s
}

func (f *fields) addSecret(s string) {
	if s != "" {
		f.secrets = append(f.secrets, s)
	}
}

// password returns the secret of key or of key_file (the file's contents without a
// trailing newline); both at once is an error.
func (f *fields) password(key string) string {
	fileKey := key + "_file"
	pw := f.secret(key)
	path := f.str(fileKey)
	if path == "" {
		return pw
	}
	if f.has(key) {
		f.errf(fileKey, "set %s or %s, not both", key, fileKey)
		return ""
	}
	data, err := os.ReadFile(path)
	if err != nil {
		f.errf(fileKey, "cannot read: %v", err)
		return ""
	}
	pw = strings.TrimRight(string(data), "\r\n")
	if pw == "" {
		f.errf(fileKey, "%s is empty", path)
	}
	f.addSecret(pw)
	return pw
}

// integer returns an integer key within [lo, hi], def when absent. In YAML a quoted number
// is accepted too.
func (f *fields) integer(key string, def, lo, hi int) int {
	n := f.get(key)
	if n == nil {
		return def
	}
	v, ok := intOf(n)
	if !ok {
		f.errf(key, "expected an integer, got %s", describe(n))
		return def
	}
	if v < int64(lo) || v > int64(hi) {
		f.errf(key, "%d is out of range %d..%d", v, lo, hi)
		return def
	}
	return int(v)
}

func intOf(n *confdoc.Node) (int64, bool) {
	if n.Kind != confdoc.Scalar {
		return 0, false
	}
	switch v := n.Val.(type) {
	case int:
		return int64(v), true
	case int64:
		return v, true
	case uint64:
		if v <= math.MaxInt64 {
			return int64(v), true
		}
	case float64:
		if v == math.Trunc(v) && math.Abs(v) < 1<<53 {
			return int64(v), true
		}
	case string:
		if i, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil {
			return i, true
		}
	}
	return 0, false
}

// port returns a required TCP/UDP port (1..65535), or def when absent and def > 0.
func (f *fields) port(key string, def int) int {
	if !f.has(key) {
		f.used[key] = true
		if def == 0 {
			f.errf(key, "required key missing")
		}
		return def
	}
	return f.integer(key, def, 1, 65535)
}

// boolean returns a boolean key, def when absent.
func (f *fields) boolean(key string, def bool) bool {
	n := f.get(key)
	if n == nil {
		return def
	}
	b, ok := n.Val.(bool)
	if n.Kind != confdoc.Scalar || !ok {
		f.errf(key, "expected true or false, got %s", describe(n))
		return def
	}
	return b
}

// duration returns a positive duration key: "5s" (Go syntax) or a number of seconds
// (conn-check's `timeout: 5`); def when absent.
func (f *fields) duration(key string, def time.Duration) time.Duration {
	n := f.get(key)
	if n == nil {
		return def
	}
	var d time.Duration
	switch v := n.Val.(type) {
	case string:
		var err error
		if d, err = time.ParseDuration(v); err != nil {
			f.errf(key, "%q is not a duration (write \"5s\", \"500ms\" or a number of seconds)", v)
			return def
		}
	default:
		secs, ok := numberOf(n)
		if !ok {
			f.errf(key, "expected a duration such as \"5s\", got %s", describe(n))
			return def
		}
		d = time.Duration(secs * float64(time.Second))
	}
	if d <= 0 || d > time.Hour {
		f.errf(key, "%v is out of range (0s, 1h]", d)
		return def
	}
	return d
}

func numberOf(n *confdoc.Node) (float64, bool) {
	if n.Kind != confdoc.Scalar {
		return 0, false
	}
	switch v := n.Val.(type) {
	case float64:
		return v, true
	case int, int64, uint64:
		i, ok := intOf(n)
		return float64(i), ok
	}
	return 0, false
}

// list returns a list of strings (a single string is a list of one).
func (f *fields) list(key string) []string {
	n := f.get(key)
	if n == nil {
		return nil
	}
	if s, ok := scalarText(n); ok {
		return []string{s}
	}
	if n.Kind != confdoc.List {
		f.errf(key, "expected a list of strings, got %s", describe(n))
		return nil
	}
	out := make([]string, 0, len(n.Items))
	for i, it := range n.Items {
		s, ok := scalarText(it)
		if !ok {
			f.errAt(it.Pos, confdoc.JoinIndex(key, i), "expected a string, got %s", describe(it))
			continue
		}
		out = append(out, s)
	}
	return out
}

// pairs returns a mapping of strings (headers, params, cookies) in key order, or a list of
// [name, value] pairs (conn-check's repeated headers). sensitive reports which values are
// secrets.
func (f *fields) pairs(key string, sensitive func(name string) bool) [][2]string {
	n := f.get(key)
	if n == nil {
		return nil
	}
	var out [][2]string
	addPair := func(k, v string) {
		if sensitive(k) {
			f.addSecret(v)
			if scheme, cred, ok := strings.Cut(v, " "); ok && scheme != "" { // "Bearer TOKEN"
				f.addSecret(strings.TrimSpace(cred))
			}
		}
		out = append(out, [2]string{k, v})
	}
	switch n.Kind {
	case confdoc.Map:
		for _, e := range n.Entries {
			if e.Val.Kind == confdoc.List { // name: [v1, v2]
				for i, it := range e.Val.Items {
					s, ok := scalarText(it)
					if !ok {
						f.errAt(it.Pos, confdoc.JoinIndex(confdoc.JoinKey(key, e.Key), i), "expected a string, got %s", describe(it))
						continue
					}
					addPair(e.Key, s)
				}
				continue
			}
			s, ok := scalarText(e.Val)
			if !ok {
				f.errAt(e.Pos, confdoc.JoinKey(key, e.Key), "expected a string, got %s", describe(e.Val))
				continue
			}
			addPair(e.Key, s)
		}
	case confdoc.List:
		for i, it := range n.Items {
			if it.Kind != confdoc.List || len(it.Items) != 2 {
				f.errAt(it.Pos, confdoc.JoinIndex(key, i), "expected a [name, value] pair, got %s", describe(it))
				continue
			}
			k, ok1 := scalarText(it.Items[0])
			v, ok2 := scalarText(it.Items[1])
			if !ok1 || !ok2 {
				f.errAt(it.Pos, confdoc.JoinIndex(key, i), "expected a [name, value] pair of strings")
				continue
			}
			addPair(k, v)
		}
	default:
		f.errf(key, "expected a mapping of names to values, got %s", describe(n))
	}
	return out
}

// certPool returns the CA bundle of a PEM file key, nil when absent.
func (f *fields) certPool(key string) *x509.CertPool {
	path := f.str(key)
	if path == "" {
		return nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		f.errf(key, "cannot read: %v", err)
		return nil
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		f.errf(key, "%s holds no PEM certificate", path)
		return nil
	}
	return pool
}

// tlsConfig reads the TLS keys shared by the checks that speak TLS: ca_file, insecure
// (conn-check: disable_tls_verification), server_name, and a client certificate
// (cert_file + key_file). host is the default server name.
func (f *fields) tlsConfig(host string, clientCert bool) *tls.Config {
	c := &tls.Config{ServerName: host, RootCAs: f.certPool("ca_file")}
	if sn := f.str("server_name"); sn != "" {
		c.ServerName = sn
	}
	c.InsecureSkipVerify = f.insecure()
	if clientCert {
		certFile, keyFile := f.str("cert_file"), f.str("key_file")
		switch {
		case certFile == "" && keyFile == "":
		case certFile == "" || keyFile == "":
			f.errf("cert_file", "cert_file and key_file go together")
		default:
			cert, err := tls.LoadX509KeyPair(certFile, keyFile)
			if err != nil {
				f.errf("cert_file", "client certificate: %v", err)
			} else {
				c.Certificates = []tls.Certificate{cert}
			}
		}
	}
	return c
}

// insecure reads insecure and its conn-check spellings (disable_tls_verification, and
// the old ssl check's verify).
func (f *fields) insecure() bool {
	set := 0
	v := false
	for _, k := range []string{"insecure", "disable_tls_verification"} {
		if f.has(k) {
			set++
			v = f.boolean(k, false)
		} else {
			f.used[k] = true
		}
	}
	if f.has("verify") {
		set++
		v = !f.boolean("verify", true)
	} else {
		f.used["verify"] = true
	}
	if set > 1 {
		f.errf("insecure", "set one of insecure, disable_tls_verification and verify")
	}
	return v
}

// done reports the keys of the check that no getter asked for.
func (f *fields) done() {
	var known []string
	for k := range f.used {
		known = append(known, k)
	}
	sort.Strings(known)
	for _, e := range f.n.Entries {
		if f.used[e.Key] {
			continue
		}
		msg := "unknown key"
		if s := confdoc.Suggest(e.Key, known); s != "" {
			msg += fmt.Sprintf(" (did you mean %s?)", s)
		}
		f.errAt(e.Pos, e.Key, "%s; this check type knows %s", msg, strings.Join(known, ", "))
	}
}
