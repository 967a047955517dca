package main

import (
	"bytes"
	"io"
	"os"
	"testing"

	"github.com/nowconnect/nowconnect/internal/testenv"
)

// TestIsTerminal: a pty is a terminal; /dev/null (a character device too), a pipe
// and a buffer are not, so `up 2>/dev/null` prints no banner and `loadtest` no
// progress line into it.
func TestIsTerminal(t *testing.T) {
	_, slave := testenv.OpenPTY(t)
	null, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	for _, tc := range []struct {
		name string
		w    io.Writer
		want bool
	}{
		{"pty", slave, true},
		{"/dev/null", null, false},
		{"pipe", w, false},
		{"buffer", &bytes.Buffer{}, false},
	} {
		if got := isTerminal(tc.w); got != tc.want {
			t.Errorf("isTerminal(%s) = %v, want %v", tc.name, got, tc.want)
		}
	}
}
