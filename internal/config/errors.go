package config

import (
	"strconv"

	"github.com/nowconnect/nowconnect/internal/confdoc"
)

// Error is one problem in a configuration: where it is and what is wrong.
//
// Error() reads "cloud.toml:12:1: listeners[1].bind: <msg>". Line and Column
// are 0 when unknown (the value did not come from the file, e.g. a default or
// a Hub built in code) and are then left out: "cloud.toml: auth.jwt_secret_file:
// file not found: /x". File is empty for a config built in code; Key then holds
// the key path ("listeners[1].bind") or, for environment variables, the
// variable name ("NC_CONNECTORS"). It is confdoc's Error, which check files share.
type Error = confdoc.Error

// Errors is every problem found in one pass over a configuration. Load and
// Validate return it (never an empty one) as their error; get it back with
// errors.As(err, &errs).
type Errors = confdoc.Errors

// reporter collects errors for one configuration. pos maps key paths of the
// document to the position of the key (or array element); a key that is not in
// the document is reported at its closest ancestor that is.
type reporter struct {
	file string
	pos  confdoc.Index
	errs Errors
}

// at records an error at an explicit position.
func (r *reporter) at(p confdoc.Pos, key, format string, args ...any) {
	r.errs = append(r.errs, confdoc.Errorf(r.file, p, key, format, args...))
}

// add records an error for key, positioned by the document index.
func (r *reporter) add(key, format string, args ...any) {
	r.at(r.pos.Lookup(key), key, format, args...)
}

// where returns " at FILE:LINE" for key (its closest ancestor in the document), for
// messages that name another key; "" when the position is unknown.
func (r *reporter) where(key string) string {
	p := r.pos.Lookup(key)
	switch {
	case p.Line == 0:
		return ""
	case r.file == "":
		return " at line " + strconv.Itoa(p.Line)
	}
	return " at " + r.file + ":" + strconv.Itoa(p.Line)
}

// result sorts the errors by position (unpositioned ones last, in the order
// found) and returns them, or nil when there are none.
func (r *reporter) result() error {
	if len(r.errs) == 0 {
		return nil
	}
	r.errs.Sort()
	return r.errs
}
