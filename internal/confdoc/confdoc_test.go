package confdoc

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// TestPositions: every key path and array element of a document is indexed at the
// position of its key (or element), in both formats.
func TestPositions(t *testing.T) {
	tests := []struct {
		name, format, doc string
		want              map[string]Pos // a subset of the index
	}{
		{
			name:   "toml top-level keys and dotted keys",
			format: "toml",
			doc:    "a = 1\n  b.c.d = 2\n",
			want:   map[string]Pos{"a": {1, 1}, "b": {2, 3}, "b.c": {2, 3}, "b.c.d": {2, 3}},
		},
		{
			name:   "toml nested tables",
			format: "toml",
			doc:    "[x]\ny = 1\n[x.z]\nw = 2\n[p.q]\nr = 3\n",
			want:   map[string]Pos{"x": {1, 2}, "x.y": {2, 1}, "x.z": {3, 2}, "x.z.w": {4, 1}, "p": {5, 2}, "p.q": {5, 2}, "p.q.r": {6, 1}},
		},
		{
			name:   "toml arrays of tables",
			format: "toml",
			doc:    "[[l]]\nn = \"a\"\n[[l]]\nn = \"b\"\n[[l.s]]\nk = 1\n[l.t]\nu = 2\n",
			want: map[string]Pos{
				"l": {1, 3}, "l[0]": {1, 3}, "l[0].n": {2, 1}, "l[1]": {3, 3}, "l[1].n": {4, 1},
				"l[1].s": {5, 3}, "l[1].s[0]": {5, 3}, "l[1].s[0].k": {6, 1}, "l[1].t": {7, 2}, "l[1].t.u": {8, 1},
			},
		},
		{
			name:   "toml inline tables and arrays",
			format: "toml",
			doc:    "x = {a = 1, b = {c = [10, 20]}}\nv = [\n  # a comment\n  \"p\",\n  {q = 1},\n]\n",
			want: map[string]Pos{
				"x": {1, 1}, "x.a": {1, 6}, "x.b": {1, 13}, "x.b.c": {1, 18}, "x.b.c[0]": {1, 23}, "x.b.c[1]": {1, 27},
				"v": {2, 1}, "v[0]": {4, 3}, "v[1]": {5, 3}, "v[1].q": {5, 4},
			},
		},
		{
			name:   "yaml nested mappings",
			format: "yaml",
			doc:    "a:\n  b:\n    c: 1\nd: x\n",
			want:   map[string]Pos{"a": {1, 1}, "a.b": {2, 3}, "a.b.c": {3, 5}, "d": {4, 1}},
		},
		{
			name:   "yaml lists",
			format: "yaml",
			doc:    "l:\n  - n: a\n    m: [1, 2]\n  - b\nf: [x, {y: 1}]\n",
			want: map[string]Pos{
				"l": {1, 1}, "l[0]": {2, 5}, "l[0].n": {2, 5}, "l[0].m": {3, 5}, "l[0].m[0]": {3, 9}, "l[0].m[1]": {3, 12},
				"l[1]": {4, 5}, "f": {5, 1}, "f[0]": {5, 5}, "f[1]": {5, 8}, "f[1].y": {5, 9},
			},
		},
		{
			name:   "yaml document that is a list",
			format: "yaml",
			doc:    "- a: 1\n- b: 2\n",
			want:   map[string]Pos{"[0]": {1, 3}, "[0].a": {1, 3}, "[1]": {2, 3}, "[1].b": {2, 3}},
		},
		{
			name:   "yaml repeated key keeps the first position",
			format: "yaml",
			doc:    "a: 1\na: 2\n",
			want:   map[string]Pos{"a": {1, 1}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := mustParse(t, tc.format, tc.doc)
			for path, want := range tc.want {
				if got, ok := d.Index[path]; !ok || got != want {
					t.Errorf("Index[%q] = %v, %v; want %v", path, got, ok, want)
				}
			}
			checkIndexed(t, d)
		})
	}
}

// TestTree: the node tree of both formats, with kinds, values, text and positions.
func TestTree(t *testing.T) {
	toml := mustParse(t, "toml", "b = 1\na = [\"x\", true]\n[t]\nk = 1.5\n")
	if got := dump(toml.Root); got != `map@1:1{b@1:1=1@1:1 a@2:1=list@2:1[x@2:6 true@2:11] t@3:2=map@3:2{k@4:1=1.5@4:1}}` {
		t.Errorf("toml tree: %s", got)
	}
	yaml := mustParse(t, "yaml", "n: ~\ns: 01\nq: \"a\"\nl: [1, null]\nm: {}\n")
	if got := dump(yaml.Root); got != `map@1:1{n@1:1=null"~"@1:4 s@2:1=1"01"@2:4 q@3:1=a"a"@3:4 l@4:1=list@4:4[1"1"@4:5 null"null"@4:8] m@5:1=map@5:4{}}` {
		t.Errorf("yaml tree: %s", got)
	}
	empty, errs := ParseYAML("e.yaml", []byte("# nothing\n"))
	if empty == nil || empty.Root != nil || errs != nil {
		t.Errorf("empty YAML: %+v, %v; want a Doc with a nil Root", empty, errs)
	}
	emptyTOML := mustParse(t, "toml", "")
	if emptyTOML.Root.Kind != Map || len(emptyTOML.Root.Entries) != 0 || emptyTOML.Root.Pos != (Pos{1, 1}) {
		t.Errorf("empty TOML root: %+v", emptyTOML.Root)
	}
}

// TestAliases: aliases are expanded where they are used; one that contains itself is an
// error at the depth limit, and the rest of the document is kept.
func TestAliases(t *testing.T) {
	d, errs := ParseYAML("a.yaml", []byte("x: &x {k: 1}\ny: *x\nz: &z [*z]\nw: 2\n"))
	if d == nil {
		t.Fatalf("no document: %v", errs)
	}
	if got := dump(d.Root.Entries[1].Val); got != `map@1:4{k@1:8=1"1"@1:11}` {
		t.Errorf("y: %s", got)
	}
	if len(errs) != 1 || !strings.HasPrefix(errs[0].Key, "z[0][0]") || errs[0].Msg != "nested too deep" || errs[0].Line != 3 {
		t.Fatalf("errors %v; want one nested too deep under z", errs)
	}
	// Each [0] is two levels: the list and the alias in it.
	if got := 2 * strings.Count(errs[0].Key, "[0]"); got != MaxDepth {
		t.Errorf("the error is %d levels down, want %d", got, MaxDepth)
	}
	if w := d.Root.Entries[3]; w.Key != "w" || w.Val.Val != 2 {
		t.Errorf("the document after the loop is lost: %+v", w)
	}
}

// TestSyntaxErrors: a document that does not parse is one error with the line (and for
// TOML the column and key) of the problem. yaml.v3 counts the lines of its parser
// errors from 0 and of its scanner errors from 1; both come out 1-based.
func TestSyntaxErrors(t *testing.T) {
	tests := []struct {
		name, format, doc, want string
	}{
		{"yaml scanner error", "yaml", "a: 1\nb: @x\n", "f: 2: found character that cannot start any token"},
		{"yaml scanner error in a string", "yaml", "a: 1\nb: \"\\q\"\n", "f: 2: found unknown escape character"},
		{"yaml parser error", "yaml", "a: 1\nb: [x\n", "f: 2: did not find expected ',' or ']'"},
		{"yaml parser error on a tag", "yaml", "a: 1\nb: !x!y z\n", "f: 2: found undefined tag handle"},
		{"yaml mapping error", "yaml", "a: 1\n b: 2\n", "f: 2: mapping values are not allowed in this context"},
		{"toml syntax error", "toml", "[t]\nk = \n", "f: 2:5: unexpected character U+000A at start of value"},
		{"toml duplicate key", "toml", "a = 1\na = 2\n", "f: 2:1: a: key a is already defined"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, errs := parse(tc.format, []byte(tc.doc))
			if d != nil || len(errs) != 1 {
				t.Fatalf("got %v, %v; want no document and one error", d, errs)
			}
			e := errs[0]
			got := fmt.Sprintf("%s: %d", e.File, e.Line)
			if e.Column > 0 {
				got += fmt.Sprintf(":%d", e.Column)
			}
			if e.Key != "" {
				got += ": " + e.Key
			}
			if got += ": " + e.Msg; !strings.HasPrefix(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestError(t *testing.T) {
	tests := []struct {
		e    Error
		want string
	}{
		{Error{File: "c.toml", Line: 3, Column: 2, Key: "a.b", Msg: "bad"}, "c.toml:3:2: a.b: bad"},
		{Error{File: "c.toml", Line: 3, Key: "a.b", Msg: "bad"}, "c.toml:3: a.b: bad"},
		{Error{File: "c.toml", Column: 2, Msg: "bad"}, "c.toml: bad"},
		{Error{Key: "NC_X", Msg: "bad"}, "NC_X: bad"},
		{Error{Msg: "bad"}, "bad"},
	}
	for _, tc := range tests {
		if got := tc.e.Error(); got != tc.want {
			t.Errorf("%+v: %q, want %q", tc.e, got, tc.want)
		}
	}
	if e := Errorf("f", Pos{4, 5}, "k", "want %d", 1); *e != (Error{File: "f", Line: 4, Column: 5, Key: "k", Msg: "want 1"}) {
		t.Errorf("Errorf: %+v", e)
	}
	es := Errors{{File: "f", Msg: "late"}, {File: "f", Line: 2, Column: 3, Msg: "b"}, {File: "f", Line: 2, Column: 1, Msg: "a"}, {File: "f", Line: 1, Msg: "first"}, {File: "f", Msg: "later"}}
	es.Sort()
	if got := es.Error(); got != "f:1: first\nf:2:1: a\nf:2:3: b\nf: late\nf: later" {
		t.Errorf("sorted: %q", got)
	}
	var err error = es
	var one *Error
	if !errors.As(err, &one) || one.Msg != "first" {
		t.Errorf("errors.As finds %v", one)
	}
}

func TestPaths(t *testing.T) {
	if got := JoinIndex(JoinKey(JoinKey("", "a"), "b"), 2); got != "a.b[2]" {
		t.Errorf("join: %q", got)
	}
	for path, want := range map[string]string{"a.b[2].c": "a.b[2]", "a.b[2]": "a.b", "a.b": "a", "a": "", "[3]": "", "": ""} {
		if got := Parent(path); got != want {
			t.Errorf("Parent(%q) = %q, want %q", path, got, want)
		}
	}
	ix := Index{"a": {1, 1}, "a.b[2]": {5, 3}}
	for path, want := range map[string]Pos{"a.b[2].c.d": {5, 3}, "a.b[1]": {1, 1}, "a": {1, 1}, "z": {}} {
		if got := ix.Lookup(path); got != want {
			t.Errorf("Lookup(%q) = %v, want %v", path, got, want)
		}
	}
}

func TestSuggest(t *testing.T) {
	known := []string{"listeners", "listen", "connector", "peers", "tcp", "tls"}
	tests := []struct{ unknown, want string }{
		{"listners", "listeners"}, // a letter missing
		{"lsiten", "listen"},      // two letters swapped: two edits
		{"conector", "connector"},
		{"peer", "peers"},
		{"tcpp", "tcp"},
		{"tsl", "tcp"}, // tcp and tls are both two edits away: the first in known wins
		{"udp", "tcp"}, // two edits
		{"xyz", ""},    // three edits from tcp and tls
		{"zzzzzz", ""}, // nothing close
		{"listen", "listen"},
	}
	for _, tc := range tests {
		if got := Suggest(tc.unknown, known); got != tc.want {
			t.Errorf("Suggest(%q) = %q, want %q", tc.unknown, got, tc.want)
		}
	}
	if got := Suggest("x", nil); got != "" {
		t.Errorf("no known words: %q", got)
	}
}

// FuzzParse: any input parses or fails with one error, never a panic, and every key
// path of the tree is in the index (no key falls back to its parent's position).
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"a = 1\n[t]\nb.c = [1, {d = 2}]\n[[l]]\n[[l.m]]\nx = 1\n[l.n]\n",
		"a: [1, {b: c}]\nd:\n  - e: &x {f: 1}\n  - *x\n",
		"- a\n- b: ~\n",
		"\"q.r\" = 1\n'x y' = {z = 1}\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, format := range []string{"toml", "yaml"} {
			d, errs := parse(format, []byte(s))
			if d == nil {
				if len(errs) != 1 {
					t.Fatalf("%s: no document and %d errors", format, len(errs))
				}
				continue
			}
			if format == "toml" {
				checkIndexed(t, d)
			}
		}
	})
}

func parse(format string, data []byte) (*Doc, Errors) {
	if format == "toml" {
		return ParseTOML("f", data)
	}
	return ParseYAML("f", data)
}

func mustParse(t *testing.T, format, doc string) *Doc {
	t.Helper()
	d, errs := parse(format, []byte(doc))
	if d == nil || errs != nil {
		t.Fatalf("%s %q: %v", format, doc, errs)
	}
	return d
}

// checkIndexed fails unless every key path of d's tree is in its index at the
// position of its entry (first occurrence for a repeated YAML key).
func checkIndexed(t *testing.T, d *Doc) {
	t.Helper()
	var walk func(n *Node, path string)
	walk = func(n *Node, path string) {
		seen := map[string]bool{}
		for _, e := range n.Entries {
			kp := JoinKey(path, e.Key)
			if p, ok := d.Index[kp]; !ok || (!seen[e.Key] && p != e.Pos) {
				t.Errorf("key %q at %v: index has %v, %v", kp, e.Pos, p, ok)
			}
			seen[e.Key] = true
			walk(e.Val, kp)
		}
		for i, it := range n.Items {
			ip := JoinIndex(path, i)
			if _, ok := d.Index[ip]; !ok {
				t.Errorf("element %q is not indexed", ip)
			}
			walk(it, ip)
		}
	}
	if d.Root != nil {
		walk(d.Root, "")
	}
}

// dump renders a tree compactly: key@line:col=value, values as kind or scalar, "text"
// for YAML scalars, @line:col.
func dump(n *Node) string {
	var b strings.Builder
	at := func(p Pos) string { return fmt.Sprintf("@%d:%d", p.Line, p.Column) }
	var walk func(n *Node)
	walk = func(n *Node) {
		switch n.Kind {
		case Map:
			b.WriteString("map" + at(n.Pos) + "{")
			for i, e := range n.Entries {
				if i > 0 {
					b.WriteString(" ")
				}
				b.WriteString(e.Key + at(e.Pos) + "=")
				walk(e.Val)
			}
			b.WriteString("}")
		case List:
			b.WriteString("list" + at(n.Pos) + "[")
			for i, it := range n.Items {
				if i > 0 {
					b.WriteString(" ")
				}
				walk(it)
			}
			b.WriteString("]")
		default:
			if n.Kind == Null {
				b.WriteString("null")
			} else {
				fmt.Fprint(&b, n.Val)
			}
			if n.HasText {
				fmt.Fprintf(&b, "%q", n.Text)
			}
			b.WriteString(at(n.Pos))
		}
	}
	walk(n)
	return b.String()
}
