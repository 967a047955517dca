package config

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
)

// Error is one problem in a configuration: where it is and what is wrong.
//
// Error() reads "cloud.toml:12:1: listeners[1].bind: <msg>". Line and Column
// are 0 when unknown (the value did not come from the file, e.g. a default or
// a Hub built in code) and are then left out: "cloud.toml: auth.jwt_secret_file:
// file not found: /x". File is empty for a config built in code; Key then holds
// the key path ("listeners[1].bind") or, for environment variables, the
// variable name ("NC_CONNECTORS").
type Error struct {
	File   string // config file as given to Load, "" when none
	Line   int    // 1-based line of the key, 0 when unknown
	Column int    // 1-based column of the key, 0 when unknown
	Key    string // key path with dots and [i] indexes, or an env variable name
	Msg    string // what is wrong
}

// Error implements error.
func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		if e.Line > 0 {
			b.WriteString(":" + strconv.Itoa(e.Line))
			if e.Column > 0 {
				b.WriteString(":" + strconv.Itoa(e.Column))
			}
		}
		b.WriteString(": ")
	}
	if e.Key != "" {
		b.WriteString(e.Key + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Errors is every problem found in one pass over a configuration. Load and
// Validate return it (never an empty one) as their error; get it back with
// errors.As(err, &errs).
type Errors []*Error

// Error joins the messages of all errors with newlines.
func (es Errors) Error() string {
	s := make([]string, len(es))
	for i, e := range es {
		s[i] = e.Error()
	}
	return strings.Join(s, "\n")
}

// Unwrap returns the errors one by one, so errors.As finds an *Error.
func (es Errors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}

// pos is a place in a document.
type pos struct{ line, col int }

// reporter collects errors for one configuration. pos maps key paths of the
// document to the position of the key (or array element); a key that is not in
// the document is reported at its closest ancestor that is.
type reporter struct {
	file string
	pos  map[string]pos
	errs Errors
}

// at records an error at an explicit position.
func (r *reporter) at(p pos, key, format string, args ...any) {
	r.errs = append(r.errs, &Error{File: r.file, Line: p.line, Column: p.col, Key: key, Msg: fmt.Sprintf(format, args...)})
}

// add records an error for key, positioned by the document index.
func (r *reporter) add(key, format string, args ...any) {
	r.at(r.lookup(key), key, format, args...)
}

// where returns " at FILE:LINE" for key (its closest ancestor in the document), for
// messages that name another key; "" when the position is unknown.
func (r *reporter) where(key string) string {
	p := r.lookup(key)
	switch {
	case p.line == 0:
		return ""
	case r.file == "":
		return " at line " + strconv.Itoa(p.line)
	}
	return " at " + r.file + ":" + strconv.Itoa(p.line)
}

// lookup finds the position of key or of its closest ancestor.
func (r *reporter) lookup(key string) pos {
	for k := key; k != ""; k = parentPath(k) {
		if p, ok := r.pos[k]; ok {
			return p
		}
	}
	return pos{}
}

// result sorts the errors by position (unpositioned ones last, in the order
// found) and returns them, or nil when there are none.
func (r *reporter) result() error {
	if len(r.errs) == 0 {
		return nil
	}
	line := func(e *Error) int {
		if e.Line == 0 {
			return math.MaxInt
		}
		return e.Line
	}
	sort.SliceStable(r.errs, func(i, j int) bool {
		a, b := r.errs[i], r.errs[j]
		if line(a) != line(b) {
			return line(a) < line(b)
		}
		return a.Column < b.Column
	})
	return r.errs
}

// parentPath strips the last ".key" or "[i]" of a key path.
func parentPath(k string) string {
	i := strings.LastIndexAny(k, ".[")
	if i < 0 {
		return ""
	}
	return k[:i]
}

// joinPath appends a key to a key path.
func joinPath(base, key string) string {
	if base == "" {
		return key
	}
	return base + "." + key
}

// indexPath appends an array index to a key path.
func indexPath(base string, i int) string {
	return base + "[" + strconv.Itoa(i) + "]"
}

// suggest returns the known key closest to an unknown one, or "" when none is
// close enough to be a likely typo.
func suggest(unknown string, known []string) string {
	best, bestD := "", 3
	for _, k := range known {
		if d := editDistance(unknown, k); d < bestD {
			best, bestD = k, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
