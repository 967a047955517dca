// Package resp is the Redis protocol (RESP) for the two small clients that speak it
// by hand, one command at a time: the redis check of nowconnect check
// (internal/check) and the test helper that drives a real redis-server
// (internal/testenv). The mesh registry uses a full client (rueidis) instead.
//
// A command is an array of bulk strings:
//
//	*<args>\r\n  then for each argument  $<len>\r\n<bytes>\r\n
//
// A reply starts with a type byte and ends its header line with \r\n:
//
//	+text             simple string         → string
//	-text  !<len>     error, blob error     → ErrorReply
//	:<n>              integer               → int64
//	$<len> =<len>     bulk, verbatim string → string ($-1: nil); <len> bytes and \r\n follow
//	*<n> ~<n> ><n>    array, set, push      → []any (*-1: nil); n replies follow
//	%<n> |<n>         map, attribute        → []any of 2n replies: key, value, ...
//	_                 null                  → nil
//	#t ,1.5 (12345    boolean, double, big number → string as written
//
// A RESP2 server (no HELLO 3) sends only + - : $ and *; the others are RESP3.
// Read bounds every reply by Limits, so a broken or hostile server costs at most
// about MaxBulk bytes per line or bulk string and MaxArray elements per level.
package resp

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// ErrorReply is an error reply ("-ERR unknown command ..."), without its type byte. Read
// returns it as a value, not as an error: the exchange itself worked.
type ErrorReply string

// ErrProtocol is what every error of Read that is not an I/O error matches
// (errors.Is): the bytes are not RESP, or the reply exceeds the Limits.
var ErrProtocol = errors.New("bad RESP reply")

// protoError is an ErrProtocol with its own text.
type protoError string

func (e protoError) Error() string        { return string(e) }
func (e protoError) Is(target error) bool { return target == ErrProtocol }

// Limits bound what Read accepts.
type Limits struct {
	MaxBulk  int // bytes of a bulk string, and of a header line
	MaxArray int // elements of an array, set or push; pairs of a map or attribute
	MaxDepth int // levels of arrays within arrays (0: no arrays inside the reply)
}

// IsType reports whether b is the type byte of a RESP reply: a server whose answer
// starts otherwise does not speak RESP.
func IsType(b byte) bool { return strings.IndexByte("+-:$*_#,(=!%~>|", b) >= 0 }

// AppendCommand appends args as a RESP command (an array of bulk strings) to dst.
func AppendCommand(dst []byte, args ...string) []byte {
	dst = append(dst, '*')
	dst = strconv.AppendInt(dst, int64(len(args)), 10)
	dst = append(dst, '\r', '\n')
	for _, a := range args {
		dst = append(dst, '$')
		dst = strconv.AppendInt(dst, int64(len(a)), 10)
		dst = append(dst, '\r', '\n')
		dst = append(dst, a...)
		dst = append(dst, '\r', '\n')
	}
	return dst
}

// Read reads one reply from r: a string, an int64, nil, []any, or an ErrorReply (see the
// package comment). An error is an I/O error or matches ErrProtocol.
func Read(r *bufio.Reader, lim Limits) (any, error) {
	return read(r, lim, 0)
}

func read(r *bufio.Reader, lim Limits, depth int) (any, error) {
	if depth > lim.MaxDepth {
		return nil, protoError("RESP answer nested too deep")
	}
	l, err := readLine(r, lim.MaxBulk)
	if err != nil {
		return nil, err
	}
	if l == "" {
		return nil, protoError("empty RESP line")
	}
	body := l[1:]
	switch l[0] {
	case '+', '#', ',', '(':
		return body, nil
	case '-':
		return ErrorReply(body), nil
	case ':':
		n, err := strconv.ParseInt(body, 10, 64)
		if err != nil {
			return nil, protoError(fmt.Sprintf("bad RESP integer %q", body))
		}
		return n, nil
	case '_':
		return nil, nil
	case '$', '=', '!':
		n, err := strconv.Atoi(body)
		if err != nil || n > lim.MaxBulk {
			return nil, protoError(fmt.Sprintf("bad RESP bulk length %q", body))
		}
		if n < 0 {
			return nil, nil
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return nil, err
		}
		if l[0] == '!' {
			return ErrorReply(buf[:n]), nil
		}
		return string(buf[:n]), nil
	case '*', '~', '>', '%', '|':
		n, err := strconv.Atoi(body)
		if err != nil || n > lim.MaxArray {
			return nil, protoError(fmt.Sprintf("bad RESP array length %q", body))
		}
		if n < 0 {
			return nil, nil
		}
		if l[0] == '%' || l[0] == '|' {
			n *= 2 // maps and attributes: key, value pairs
		}
		out := make([]any, 0, min(n, 1024))
		for range n {
			v, err := read(r, lim, depth+1)
			if err != nil {
				return nil, err
			}
			out = append(out, v)
		}
		return out, nil
	}
	return nil, protoError(fmt.Sprintf("unknown RESP type %q", l[0]))
}

// readLine reads a line of at most limit bytes and returns it without its line end.
func readLine(r *bufio.Reader, limit int) (string, error) {
	var line []byte
	for {
		chunk, err := r.ReadSlice('\n')
		if err == nil && line == nil && len(chunk) <= limit {
			return strings.TrimRight(string(chunk), "\r\n"), nil // the usual short line
		}
		if len(line)+len(chunk) > limit {
			return "", protoError("RESP line too long")
		}
		line = append(line, chunk...)
		switch {
		case err == nil:
			return strings.TrimRight(string(line), "\r\n"), nil
		case !errors.Is(err, bufio.ErrBufferFull):
			return "", err
		}
	}
}
