package resp

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
)

var testLimits = Limits{MaxBulk: 64, MaxArray: 8, MaxDepth: 2}

func TestRead(t *testing.T) {
	tests := []struct {
		name, in string
		want     any
		err      string // part of the error; "" for none
	}{
		{"simple string", "+PONG\r\n", "PONG", ""},
		{"error", "-ERR unknown command\r\n", ErrorReply("ERR unknown command"), ""},
		{"integer", ":-42\r\n", int64(-42), ""},
		{"bulk", "$5\r\nhe\r\no\r\n", "he\r\no", ""},
		{"empty bulk", "$0\r\n\r\n", "", ""},
		{"null bulk", "$-1\r\n", nil, ""},
		{"null array", "*-1\r\n", nil, ""},
		{"array", "*3\r\n+a\r\n:1\r\n$-1\r\n", []any{"a", int64(1), nil}, ""},
		{"nested array", "*2\r\n*1\r\n+x\r\n*0\r\n", []any{[]any{"x"}, []any{}}, ""},
		{"resp3 map", "%1\r\n+k\r\n#t\r\n", []any{"k", "t"}, ""},
		{"resp3 null, double, big number", "*3\r\n_\r\n,1.5\r\n(123456789012345678901\r\n", []any{nil, "1.5", "123456789012345678901"}, ""},
		{"resp3 blob error", "!9\r\nERR no\r\nx\r\n", ErrorReply("ERR no\r\nx"), ""},
		{"resp3 verbatim", "=8\r\ntxt:abcd\r\n", "txt:abcd", ""},
		{"bare newline", "+ok\n", "ok", ""},
		{"empty line", "\r\n", nil, "empty RESP line"},
		{"unknown type", "?x\r\n", nil, `unknown RESP type '?'`},
		{"bad integer", ":x\r\n", nil, `bad RESP integer "x"`},
		{"bad bulk length", "$x\r\n", nil, `bad RESP bulk length "x"`},
		{"bulk over the limit", "$65\r\n", nil, `bad RESP bulk length "65"`},
		{"array over the limit", "*9\r\n", nil, `bad RESP array length "9"`},
		{"map over the limit", "%9\r\n", nil, `bad RESP array length "9"`},
		{"nested too deep", "*1\r\n*1\r\n*1\r\n*1\r\n", nil, "nested too deep"},
		{"line over the limit", "+" + strings.Repeat("x", 64) + "\r\n", nil, "RESP line too long"},
		{"short bulk", "$5\r\nab", nil, io.ErrUnexpectedEOF.Error()},
		{"no line end", "+PONG", nil, io.EOF.Error()},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Read(bufio.NewReader(strings.NewReader(tc.in)), testLimits)
			switch {
			case tc.err == "" && err != nil:
				t.Fatalf("error %v", err)
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Fatalf("error %v, want %q", err, tc.err)
			case !reflect.DeepEqual(got, tc.want):
				t.Fatalf("got %#v, want %#v", got, tc.want)
			}
			ioErr := errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
			if err != nil && errors.Is(err, ErrProtocol) == ioErr {
				t.Errorf("errors.Is(%v, ErrProtocol) = %v", err, !ioErr)
			}
		})
	}
}

// TestReadLongLine: a line longer than bufio's buffer is read whole, up to the limit.
func TestReadLongLine(t *testing.T) {
	long := strings.Repeat("x", 5000)
	r := bufio.NewReaderSize(strings.NewReader("+"+long+"\r\n"), 16)
	got, err := Read(r, Limits{MaxBulk: 6000})
	if err != nil || got != long {
		t.Fatalf("got %d bytes, %v", len(got.(string)), err)
	}
}

func TestAppendCommand(t *testing.T) {
	got := string(AppendCommand([]byte("x"), "SET", "k", "", "v w"))
	if want := "x*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n$3\r\nv w\r\n"; got != want {
		t.Fatalf("%q, want %q", got, want)
	}
	buf := make([]byte, 0, 64)
	if n := testing.AllocsPerRun(100, func() { buf = AppendCommand(buf[:0], "AUTH", "user", "password") }); n != 0 {
		t.Errorf("AppendCommand into a large enough buffer: %v allocations", n)
	}
}

func BenchmarkRead(b *testing.B) {
	reply := []byte("*4\r\n$6\r\nmaster\r\n:3129\r\n*1\r\n*3\r\n$9\r\n127.0.0.1\r\n$4\r\n6380\r\n$4\r\n3129\r\n+OK\r\n")
	lim := Limits{MaxBulk: 1 << 20, MaxArray: 1024, MaxDepth: 4}
	rd := bytes.NewReader(reply)
	br := bufio.NewReader(rd)
	b.ReportAllocs()
	b.SetBytes(int64(len(reply)))
	for b.Loop() {
		rd.Reset(reply)
		br.Reset(rd)
		if _, err := Read(br, lim); err != nil {
			b.Fatal(err)
		}
	}
}

// FuzzRead: a reply read in arbitrary splits (one byte at a time, or through a tiny
// buffer) gives what it gives read at once; nothing panics or exceeds the limits; a
// command parses back to its arguments.
func FuzzRead(f *testing.F) {
	for _, s := range []string{"+PONG\r\n", "*2\r\n$1\r\na\r\n%1\r\n:1\r\n_\r\n", "$3\r\nabc\r\n", "!2\r\nno\r\n", "*1\r\n*1\r\n*1\r\n+x\r\n"} {
		f.Add([]byte(s), "SET", "k")
	}
	f.Fuzz(func(t *testing.T, in []byte, a0, a1 string) {
		lim := Limits{MaxBulk: 1 << 10, MaxArray: 16, MaxDepth: 3}
		whole, werr := Read(bufio.NewReader(bytes.NewReader(in)), lim)
		for _, r := range []*bufio.Reader{
			bufio.NewReader(iotest.OneByteReader(bytes.NewReader(in))),
			bufio.NewReaderSize(iotest.HalfReader(bytes.NewReader(in)), 16),
		} {
			got, err := Read(r, lim)
			if (err == nil) != (werr == nil) || !reflect.DeepEqual(got, whole) {
				t.Fatalf("split read: %#v, %v; at once: %#v, %v", got, err, whole, werr)
			}
		}
		if werr == nil && depth(whole) > lim.MaxDepth+1 {
			t.Fatalf("reply %#v nests deeper than %d", whole, lim.MaxDepth)
		}
		if len(a0)+len(a1) > lim.MaxBulk {
			return
		}
		cmd, err := Read(bufio.NewReader(bytes.NewReader(AppendCommand(nil, a0, a1))), lim)
		if err != nil || !reflect.DeepEqual(cmd, []any{a0, a1}) {
			t.Fatalf("command %q %q read back as %#v, %v", a0, a1, cmd, err)
		}
	})
}

// depth is the number of levels of v: 0 for a scalar, 1 for a flat array.
func depth(v any) int {
	a, ok := v.([]any)
	if !ok {
		return 0
	}
	d := 0
	for _, x := range a {
		d = max(d, depth(x))
	}
	return d + 1
}
