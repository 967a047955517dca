package confdoc

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
)

// Error is one problem in a document: where it is and what is wrong.
//
// Error() reads "cloud.toml:12:1: listeners[1].bind: <msg>". Line and Column
// are 0 when unknown (the value did not come from the file, e.g. a default)
// and are then left out: "cloud.toml: auth.jwt_secret_file: file not found".
// File is empty for a document without a file (a config built in code); Key
// then holds the key path ("listeners[1].bind") or whatever the caller names
// instead (an environment variable, a flag).
type Error struct {
	File   string // the file as given by the caller, "" when none
	Line   int    // 1-based line of the key, 0 when unknown
	Column int    // 1-based column of the key, 0 when unknown
	Key    string // key path with dots and [i] indexes, or another name
	Msg    string // what is wrong
}

// Errorf returns an Error at p in file for key.
func Errorf(file string, p Pos, key, format string, args ...any) *Error {
	return &Error{File: file, Line: p.Line, Column: p.Column, Key: key, Msg: fmt.Sprintf(format, args...)}
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

// Errors is every problem found in one pass over a document; loaders return
// it (never an empty one) as their error. Get it back with errors.As(err, &errs).
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

// Sort orders the errors by position, line then column; unpositioned ones
// (Line 0) go last, and errors at the same place keep the order they were found in.
func (es Errors) Sort() {
	line := func(e *Error) int {
		if e.Line == 0 {
			return math.MaxInt
		}
		return e.Line
	}
	sort.SliceStable(es, func(i, j int) bool {
		a, b := es[i], es[j]
		if line(a) != line(b) {
			return line(a) < line(b)
		}
		return a.Column < b.Column
	})
}

// Suggest returns the known word closest to an unknown one (a key, a type
// name), for "did you mean", or "" when none is close enough to be a likely
// typo: fewer than 3 edits away. Ties go to the first in known.
func Suggest(unknown string, known []string) string {
	best, bestD := "", 3
	for _, k := range known {
		if d := editDistance(unknown, k); d < bestD {
			best, bestD = k, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b, in bytes.
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
