// Package check runs operational checks against a deployment, the way seed 004's conn-check
// does (a file of checks, run concurrently with timeouts, reported in the Nagios plugin
// format), with checks of its own for this gateway: the hub's health, readiness and agents,
// and the runbook's "ping-pong" (seed 000) that drives an LDAP search through a listener and
// asserts that the tunnel's byte counters rose.
//
// The pipeline, one file per stage:
//
//	file.go, fields.go   a YAML or TOML check file → []*Check (errors name file, line, key)
//	types.go             the check types and their keys
//	tcp.go udp.go tls.go http.go ldap.go redis.go hub.go pingpong.go   one check type each
//	metrics.go           the Prometheus text parser the hub and pingpong checks read
//	runner.go            run checks concurrently, each under its own timeout
//	output.go            Nagios plugin output, JSON, a table
//	generate.go          the checks of a hub, generated from its config file
//
// Secrets (passwords, password_file contents, credentials in URLs and sensitive headers)
// are collected while a file is loaded and scrubbed from everything a server or a library
// says in a result (see plain); names and messages about bad input never quote them.
package check

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"sort"
	"strings"
	"time"
)

// Status is a check's outcome; its value is the Nagios plugin exit code.
type Status int

// The Nagios plugin states.
const (
	OK       Status = 0
	Warning  Status = 1
	Critical Status = 2
	Unknown  Status = 3
)

func (s Status) String() string {
	switch s {
	case OK:
		return "OK"
	case Warning:
		return "WARNING"
	case Critical:
		return "CRITICAL"
	default:
		return "UNKNOWN"
	}
}

// severity orders states for "the worst check wins": CRITICAL > WARNING > UNKNOWN > OK, so
// an unsupported check (UNKNOWN) never hides a failed one.
func (s Status) severity() int {
	switch s {
	case OK:
		return 0
	case Unknown:
		return 1
	case Warning:
		return 2
	default:
		return 3
	}
}

// Worse returns the worse of a and b.
func Worse(a, b Status) Status {
	if b.severity() > a.severity() {
		return b
	}
	return a
}

// Perf is one Nagios performance datum: 'label'=value[UOM];warn;crit;min;max.
type Perf struct {
	Label string   `json:"label"`
	Value float64  `json:"value"`
	UOM   string   `json:"uom,omitempty"`  // "s", "B", "" (a plain number)
	Warn  string   `json:"warn,omitempty"` // a Nagios range, e.g. "30:"
	Crit  string   `json:"crit,omitempty"`
	Min   *float64 `json:"min,omitempty"`
	Max   *float64 `json:"max,omitempty"`
}

// Result is what one check found.
type Result struct {
	Name     string
	Type     string
	Status   Status
	Detail   string // one line, secrets scrubbed
	Duration time.Duration
	Perf     []Perf
}

// Check is one loaded check, ready to run.
type Check struct {
	Name    string        // unique in a run; default derived from the check's target
	Type    string        // the canonical type (aliases resolved)
	Timeout time.Duration // the check's own timeout, else the run's default
	Tags    []string      // conn-check tags, for --include-tags / --exclude-tags
	Where   string        // "file:line" of the check, for messages

	probe   prober
	secrets []string // values scrubbed from the check's output
}

// prober is one check type's logic.
type prober interface {
	// name is the default check name, derived from the target; never a secret.
	name() string
	// run probes the target until done or ctx ends, recording what it finds in r.
	run(ctx context.Context, r *report)
}

// report collects a probe's findings.
type report struct {
	name    string        // the check's name: prefix of its perf labels
	timeout time.Duration // the check's timeout, for messages and the time perfdata
	secrets []string      // the check's secrets, scrubbed from what servers and libraries say
	status  Status
	notes   []string
	perf    []Perf
	noTime  bool // the check did not probe anything: no time perfdata
}

// plain marks a detail argument that comes from the check's own configuration (a DN, a
// base, a connector, a redacted URL) and is printed as is. Every other string, []byte or
// error argument may hold what a server or library said, and has the check's secrets
// scrubbed: a short password must not mangle "cn=admin" in "bind as cn=admin,…", while a
// server that echoes a token must not leak it.
type plain string

// add records a finding; see plain for how args are scrubbed.
func (r *report) add(s Status, format string, args ...any) {
	r.status = Worse(r.status, s)
	for i, a := range args {
		switch v := a.(type) {
		case plain:
			args[i] = string(v)
		case string:
			args[i] = scrub(v, r.secrets)
		case []byte:
			args[i] = scrub(string(v), r.secrets)
		case error:
			args[i] = scrub(v.Error(), r.secrets)
		case fmt.Stringer:
			args[i] = scrub(v.String(), r.secrets)
		}
	}
	r.notes = append(r.notes, fmt.Sprintf(format, args...))
}

func (r *report) ok(format string, args ...any)   { r.add(OK, format, args...) }
func (r *report) warn(format string, args ...any) { r.add(Warning, format, args...) }
func (r *report) crit(format string, args ...any) { r.add(Critical, format, args...) }

// unknown records that the check could not tell.
func (r *report) unknown(format string, args ...any) { r.add(Unknown, format, args...) }

// metric adds a perf datum labelled "<check name> <what>".
func (r *report) metric(what string, v float64, uom, warn, crit string, min, max *float64) {
	r.perf = append(r.perf, Perf{Label: r.name + " " + what, Value: v, UOM: uom, Warn: warn, Crit: crit, Min: min, Max: max})
}

// failed describes err of an operation under ctx: a timeout reads "timed out after 5s"
// rather than a library's wording, a cancelled run "cancelled".
func (r *report) failed(ctx context.Context, err error) string {
	switch {
	case errors.Is(ctx.Err(), context.Canceled):
		return "cancelled"
	case isTimeout(err) || ctx.Err() != nil:
		return "timed out after " + r.timeout.String()
	}
	// "dial tcp 10.0.0.1:389: connect: connection refused" says the address twice (it is
	// in the check's name) and the operation twice (the caller names it).
	var de *net.DNSError
	if errors.As(err, &de) {
		return "lookup " + de.Name + ": " + de.Err
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		err = oe.Err
	}
	var se *os.SyscallError
	if errors.As(err, &se) && se.Err != nil {
		err = se.Err
	}
	return err.Error()
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) ||
		(errors.As(err, &ne) && ne.Timeout())
}

// guard ties c to ctx: c's deadline is ctx's, and the end of ctx closes c, so a blocked
// read or write returns at once. Call the returned stop when done with c.
func guard(ctx context.Context, c net.Conn) (stop func() bool) {
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	return context.AfterFunc(ctx, func() { c.Close() })
}

// dialTCP connects to addr ("host:port") within ctx.
func dialTCP(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

// scrub replaces every secret in s with "***", longest first.
func scrub(s string, secrets []string) string {
	if len(secrets) == 0 {
		return s
	}
	sorted := append([]string(nil), secrets...)
	sort.Slice(sorted, func(i, j int) bool { return len(sorted[i]) > len(sorted[j]) })
	for _, sec := range sorted {
		if sec != "" {
			s = strings.ReplaceAll(s, sec, "***")
		}
	}
	return s
}

// oneLine folds a message onto one line: output formats are line-based.
func oneLine(s string) string {
	s = strings.Join(strings.Fields(strings.ReplaceAll(s, "\x00", " ")), " ")
	return s
}

// quoteStart renders the first bytes a server sent, for "not LDAP" and "not Redis"
// messages: at most 32 bytes, non-printable ones escaped.
func quoteStart(b []byte) string {
	if len(b) > 32 {
		b = b[:32]
	}
	return fmt.Sprintf("%q", b)
}

// msDur renders a duration for details: "0.4ms", "12.3ms", "1.25s".
func msDur(d time.Duration) string {
	if d < time.Second {
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.2fs", d.Seconds())
}

func f64(v float64) *float64 { return &v }

// urlPasswordRE matches the password of a URL's userinfo: scheme://user:PASSWORD@.
var urlPasswordRE = regexp.MustCompile(`([a-zA-Z][a-zA-Z0-9+.-]*://[^/\s"'@:]*:)([^/\s"'@]+)@`)

// ScrubURLPasswords replaces the passwords of URLs in s (scheme://user:pw@host) with
// "***": for messages of other packages that quote a configured URL.
func ScrubURLPasswords(s string) string {
	return urlPasswordRE.ReplaceAllString(s, "${1}***@")
}
