package check

import (
	"bytes"
	"math"
	"testing"
	"time"
)

// TestPerfString: perfdata as the plugin guidelines write it.
func TestPerfString(t *testing.T) {
	cases := []struct {
		p    Perf
		want string
	}{
		{Perf{Label: "tcp h:1 time", Value: 0.0001234567, UOM: "s", Min: f64(0), Max: f64(10)}, "'tcp h:1 time'=0.000123s;;;0;10"},
		{Perf{Label: "tls days", Value: -2.5, Warn: "30:", Crit: "7:"}, "'tls days'=-2.5;30:;7:"},
		{Perf{Label: "it's=odd", Value: 3}, "'it''s_odd'=3"},
		{Perf{Label: "x", Value: math.NaN()}, "'x'=U"},
		{Perf{Label: "big", Value: 123456789012, UOM: "B", Min: f64(0)}, "'big'=123456789012B;;;0"},
	}
	for _, c := range cases {
		if got := c.p.String(); got != c.want {
			t.Errorf("%+v: %s, want %s", c.p, got, c.want)
		}
	}
}

// TestWriteNagios: the worst status wins (CRITICAL > WARNING > UNKNOWN > OK), lines are
// worst first, and a '|' in a detail cannot start perfdata.
func TestWriteNagios(t *testing.T) {
	s := Summarize([]Result{
		{Name: "a", Status: OK, Detail: "fine", Duration: time.Millisecond, Perf: []Perf{{Label: "a time", Value: 0.001, UOM: "s"}}},
		{Name: "b", Status: Unknown, Detail: "not supported"},
		{Name: "c", Status: Warning, Detail: "x | y"},
	})
	var b bytes.Buffer
	if err := WriteNagios(&b, s); err != nil {
		t.Fatal(err)
	}
	want := "NOWCONNECT CHECK WARNING - 3 checks: 1 OK, 1 WARNING, 0 CRITICAL, 1 UNKNOWN | 'a time'=0.001s\n" +
		"WARNING c: x / y\nUNKNOWN b: not supported\nOK a: fine\n"
	if b.String() != want || s.ExitCode() != 1 {
		t.Fatalf("got exit %d\n%s\nwant\n%s", s.ExitCode(), b.String(), want)
	}
	if s := Summarize(nil); s.Status != Unknown {
		t.Fatalf("no checks: %v, want UNKNOWN", s.Status)
	}
	if Worse(Unknown, Critical) != Critical || Worse(Warning, Unknown) != Warning || Worse(OK, Unknown) != Unknown {
		t.Fatal("severity order")
	}
}
