package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strings"
)

// Exit statuses: 0 success (and -h), 1 a failure of the work itself (a bad config file,
// an unreadable secret, a bind that fails), 2 a usage error (unknown command or flag, a
// bad or missing flag value, extra arguments), as flag parsing and Unix tools do.
const (
	exitFailure = 1
	exitUsage   = 2
)

// usageError is a mistake on the command line: exit status 2.
type usageError struct {
	err     error
	printed bool // the flag package has printed it already, with the usage
}

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

// usagef returns a usage error; the message names the flag or argument at fault.
func usagef(format string, args ...any) error {
	return &usageError{err: fmt.Errorf(format, args...)}
}

// exitStatus prints err once, prefixed with the command, and returns the exit status.
func exitStatus(stderr io.Writer, command string, err error) int {
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return 0
	}
	var ue *usageError
	if errors.As(err, &ue) {
		if !ue.printed {
			fmt.Fprintf(stderr, "nowconnect %s: %v\nRun \"nowconnect %s -h\" for its flags.\n", command, err, command)
		}
		return exitUsage
	}
	fmt.Fprintf(stderr, "nowconnect %s: %v\n", command, err)
	return exitFailure
}

// newFlagSet returns a flag set whose errors and usage go to out.
func newFlagSet(name, synopsis string, out io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprintf(out, "usage: nowconnect %s %s\n\nflags:\n", name, synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args and refuses positional arguments, naming them. A parse error
// has been printed by the flag package (with the usage): it is not printed again.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return &usageError{err: err, printed: true}
	}
	if fs.NArg() > 0 {
		return usagef("unexpected arguments %s: %s takes flags only", quoteAll(fs.Args()), fs.Name())
	}
	return nil
}

func quoteAll(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = fmt.Sprintf("%q", a)
	}
	return strings.Join(q, " ")
}

// checkLevel refuses a --log-level the logger does not know.
func checkLevel(level string) error {
	if _, err := newLogger(io.Discard, level); err != nil {
		return usagef("--log-level %q: want debug, info, warn or error", level)
	}
	return nil
}

// checkAddr refuses a host:port flag that does not parse.
func checkAddr(flagName, v string) error {
	if _, _, err := net.SplitHostPort(v); err != nil {
		return usagef("%s %q: want HOST:PORT", flagName, v)
	}
	return nil
}
