package check

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
	"gopkg.in/yaml.v3"
)

// Error is one problem in a check file. Error() reads
// "checks.yaml:12:5: checks[3].port: required key missing"; Line and Column are 0 when
// unknown and then left out.
type Error struct {
	File   string
	Line   int
	Column int
	Key    string // key path, e.g. checks[3].port
	Msg    string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		b.WriteString(":" + strconv.Itoa(e.Line))
		if e.Column > 0 {
			b.WriteString(":" + strconv.Itoa(e.Column))
		}
	}
	b.WriteString(": ")
	if e.Key != "" {
		b.WriteString(e.Key + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Errors is every problem found while loading; Load returns it as its error.
type Errors []*Error

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

// Format is the syntax of a check file.
type Format int

// The formats of check files.
const (
	YAML Format = iota
	TOML
)

// FormatOf picks the format from a file name's extension.
func FormatOf(path string) (Format, error) {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".yaml", ".yml":
		return YAML, nil
	case ".toml":
		return TOML, nil
	}
	return 0, errors.New("unknown check file format: want a .yaml, .yml or .toml file")
}

// pos is a place in a document.
type pos struct{ line, col int }

type kind int

const (
	kNull kind = iota
	kScalar
	kMap
	kList
)

// node is one value of a parsed document (YAML or TOML) with its position, so that one
// decoder serves both formats and names the line of every problem.
type node struct {
	pos   pos
	kind  kind
	keys  []entry // kMap, in document order
	items []*node // kList
	val   any     // kScalar: string, bool, int/int64, float64 or a time value
	text  string  // YAML scalars: the value as written
	yaml  bool    // text is set: such scalars are accepted where a string is wanted
}

type entry struct {
	key string
	pos pos
	val *node
}

func describe(n *node) string {
	switch n.kind {
	case kNull:
		return "nothing (null)"
	case kMap:
		return "a mapping"
	case kList:
		return "a list"
	}
	switch n.val.(type) {
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case int, int64, uint64:
		return "an integer"
	case float64:
		return "a number"
	}
	return fmt.Sprintf("a %T", n.val)
}

// parser collects the errors of one document.
type parser struct {
	file string
	errs Errors
}

func (p *parser) at(ps pos, key, format string, args ...any) {
	p.errs = append(p.errs, &Error{File: p.file, Line: ps.line, Column: ps.col, Key: key, Msg: fmt.Sprintf(format, args...)})
}

// parse turns data into a node tree; nil after a syntax error (recorded).
func (p *parser) parse(format Format, data []byte) *node {
	if format == TOML {
		return p.parseTOML(data)
	}
	return p.parseYAML(data)
}

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): `)

func (p *parser) parseYAML(data []byte) *node {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		e := &Error{File: p.file, Msg: strings.TrimPrefix(err.Error(), "yaml: ")}
		if m := yamlLineRE.FindStringSubmatch(err.Error()); m != nil {
			e.Line, _ = strconv.Atoi(m[1])
			e.Msg = strings.TrimPrefix(err.Error(), m[0])
			// yaml.v3 numbers the lines of its parser errors (unlike its scanner errors)
			// from 0.
			if strings.HasPrefix(e.Msg, "did not find expected") || strings.HasPrefix(e.Msg, "found ") {
				e.Line++
			}
		}
		e.Msg = "bad YAML: " + e.Msg
		p.errs = append(p.errs, e)
		return nil
	}
	if len(doc.Content) == 0 {
		return &node{kind: kList} // an empty file: no checks
	}
	root := ""
	if doc.Content[0].Kind == yaml.SequenceNode {
		root = "checks" // conn-check's format: the document is the list of checks
	}
	return p.fromYAML(doc.Content[0], root, 0)
}

func (p *parser) fromYAML(y *yaml.Node, path string, depth int) *node {
	for y.Kind == yaml.AliasNode && y.Alias != nil && depth < 64 {
		y, depth = y.Alias, depth+1
	}
	n := &node{pos: pos{y.Line, y.Column}}
	if depth >= 64 {
		p.at(n.pos, path, "nested too deep")
		return n
	}
	switch y.Kind {
	case yaml.MappingNode:
		n.kind = kMap
		seen := map[string]bool{}
		for i := 0; i+1 < len(y.Content); i += 2 {
			k, v := y.Content[i], y.Content[i+1]
			kp := joinPath(path, k.Value)
			kpos := pos{k.Line, k.Column}
			if seen[k.Value] {
				p.at(kpos, kp, "duplicate key")
				continue
			}
			seen[k.Value] = true
			n.keys = append(n.keys, entry{key: k.Value, pos: kpos, val: p.fromYAML(v, kp, depth+1)})
		}
	case yaml.SequenceNode:
		n.kind = kList
		for i, c := range y.Content {
			n.items = append(n.items, p.fromYAML(c, indexPath(path, i), depth+1))
		}
	case yaml.ScalarNode:
		if y.Tag == "!!null" {
			return n
		}
		n.kind, n.text, n.yaml = kScalar, y.Value, true
		if err := y.Decode(&n.val); err != nil {
			n.val = y.Value
		}
	}
	return n
}

func (p *parser) parseTOML(data []byte) *node {
	var m map[string]any
	if err := toml.Unmarshal(data, &m); err != nil {
		e := &Error{File: p.file, Msg: "bad TOML: " + strings.TrimPrefix(err.Error(), "toml: ")}
		var de *toml.DecodeError
		if errors.As(err, &de) {
			e.Line, e.Column = de.Position()
			e.Key = strings.Join(de.Key(), ".")
		}
		p.errs = append(p.errs, e)
		return nil
	}
	return fromTOML(m, "", pos{1, 1}, tomlPositions(data))
}

func fromTOML(x any, path string, ps pos, idx map[string]pos) *node {
	at := func(p string) pos {
		if q, ok := idx[p]; ok {
			return q
		}
		return ps
	}
	switch v := x.(type) {
	case map[string]any:
		n := &node{pos: ps, kind: kMap}
		for k, val := range v {
			kp := joinPath(path, k)
			n.keys = append(n.keys, entry{key: k, pos: at(kp), val: fromTOML(val, kp, at(kp), idx)})
		}
		sort.Slice(n.keys, func(i, j int) bool {
			a, b := n.keys[i], n.keys[j]
			if a.pos != b.pos {
				return a.pos.line < b.pos.line || (a.pos.line == b.pos.line && a.pos.col < b.pos.col)
			}
			return a.key < b.key
		})
		return n
	case []any:
		n := &node{pos: ps, kind: kList}
		for i, val := range v {
			ip := indexPath(path, i)
			n.items = append(n.items, fromTOML(val, ip, at(ip), idx))
		}
		return n
	}
	return &node{pos: ps, kind: kScalar, val: x}
}

// tomlPositions maps the key paths of a valid TOML document to the positions of their
// keys, and array elements ("checks[2]", including [[checks]] tables) to theirs.
func tomlPositions(data []byte) map[string]pos {
	idx := map[string]pos{}
	var p unstable.Parser
	p.Reset(data)
	at := func(r unstable.Range) pos {
		s := p.Shape(r).Start
		return pos{s.Line, s.Column}
	}
	set := func(path string, ps pos) {
		if _, ok := idx[path]; !ok {
			idx[path] = ps
		}
	}
	var value func(path string, n *unstable.Node, ps pos)
	kv := func(base string, n *unstable.Node) {
		path, first := base, pos{}
		it := n.Key()
		for i := 0; it.Next(); i++ {
			path = joinPath(path, string(it.Node().Data))
			if i == 0 {
				first = at(it.Node().Raw)
			}
			set(path, first)
		}
		value(path, n.Value(), first)
	}
	value = func(path string, n *unstable.Node, ps pos) {
		switch n.Kind {
		case unstable.InlineTable:
			it := n.Children()
			for it.Next() {
				if c := it.Node(); c.Kind == unstable.KeyValue {
					kv(path, c)
				}
			}
		case unstable.Array:
			it := n.Children()
			for i := 0; it.Next(); {
				c := it.Node()
				if c.Kind == unstable.Comment {
					continue
				}
				cp := ps
				if c.Raw.Length > 0 {
					cp = at(c.Raw)
				}
				ip := indexPath(path, i)
				set(ip, cp)
				value(ip, c, cp)
				i++
			}
		}
	}
	arrays := map[string]int{} // [[array table]] path → elements so far
	cur := ""
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.KeyValue:
			kv(cur, e)
		case unstable.Table, unstable.ArrayTable:
			path, first := "", pos{}
			it := e.Key()
			for i := 0; it.Next(); i++ {
				if i == 0 {
					first = at(it.Node().Raw)
				}
				path = joinPath(path, string(it.Node().Data))
				set(path, first)
				if it.IsLast() && e.Kind == unstable.ArrayTable {
					arrays[path]++
					path = indexPath(path, arrays[path]-1)
					set(path, first)
				} else if n, ok := arrays[path]; ok {
					path = indexPath(path, n-1)
				}
			}
			cur = path
		}
	}
	return idx
}

func joinPath(base, key string) string {
	if base == "" {
		return key
	}
	return base + "." + key
}

func indexPath(base string, i int) string { return base + "[" + strconv.Itoa(i) + "]" }

// readFile reads a check file, naming it in the error.
func readFile(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, &Error{File: path, Msg: "check file not found"}
		}
		return nil, &Error{File: path, Msg: "cannot read check file: " + err.Error()}
	}
	return data, nil
}

// sortErrors orders the errors of one document by position (unpositioned ones last).
func sortErrors(es Errors) {
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
