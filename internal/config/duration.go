package config

import (
	"errors"
	"strconv"
	"strings"
	"time"
)

// errBareDuration is returned for a duration written as a bare number.
var errBareDuration = errors.New(`durations are written like "5s"`)

// Duration is a time.Duration that reads and writes itself as text in config
// files: "5s", "250ms", "1m30s", "0s". A bare number (the TOML integer 5, or
// the string "5") is an error, because its unit would be a guess.
//
// Build one in code with a conversion: config.Duration(5 * time.Second).
type Duration time.Duration

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// String formats the duration like time.Duration does ("1m30s").
func (d Duration) String() string { return time.Duration(d).String() }

// MarshalText implements encoding.TextMarshaler; it is the inverse of
// UnmarshalText.
func (d Duration) MarshalText() ([]byte, error) {
	return []byte(time.Duration(d).String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler. It accepts what
// time.ParseDuration accepts, except a bare number.
func (d *Duration) UnmarshalText(b []byte) error {
	s := strings.TrimSpace(string(b))
	if s == "" {
		return errors.New(`empty duration; durations are written like "5s"`)
	}
	if _, err := strconv.ParseFloat(s, 64); err == nil {
		return errBareDuration
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return errors.New("bad duration " + strconv.Quote(s) + `: durations are written like "5s", "250ms", "1m30s"`)
	}
	*d = Duration(v)
	return nil
}
