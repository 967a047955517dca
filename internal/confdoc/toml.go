package confdoc

import (
	"errors"
	"sort"
	"strings"

	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
)

// ParseTOML parses a TOML document. file names it in errors. A document that
// is not valid TOML gives a nil Doc and one Error at the problem, its message
// as go-toml words it (without "toml: "). The root of an empty document is an
// empty Map at 1:1.
func ParseTOML(file string, data []byte) (*Doc, Errors) {
	var m map[string]any
	if err := toml.Unmarshal(data, &m); err != nil {
		e := &Error{File: file, Msg: strings.TrimPrefix(err.Error(), "toml: ")}
		var de *toml.DecodeError
		if errors.As(err, &de) {
			e.Line, e.Column = de.Position()
			e.Key = strings.Join(de.Key(), ".")
		}
		return nil, Errors{e}
	}
	idx := tomlPositions(data)
	return &Doc{Root: fromTOML(m, "", Pos{1, 1}, idx), Index: idx}, nil
}

// fromTOML builds the tree of a document decoded by go-toml into
// map[string]any, positioned by idx; a value idx does not know takes the
// position of its parent. Map entries are sorted by position (go-toml's map
// has no order), ties by key.
func fromTOML(x any, path string, p Pos, idx Index) *Node {
	at := func(path string) Pos {
		if q, ok := idx[path]; ok {
			return q
		}
		return p
	}
	switch v := x.(type) {
	case map[string]any:
		n := &Node{Pos: p, Kind: Map}
		for k, val := range v {
			kp := JoinKey(path, k)
			kpos := at(kp)
			n.Entries = append(n.Entries, Entry{Key: k, Pos: kpos, Val: fromTOML(val, kp, kpos, idx)})
		}
		sort.Slice(n.Entries, func(i, j int) bool {
			a, b := n.Entries[i], n.Entries[j]
			if a.Pos != b.Pos {
				return a.Pos.Line < b.Pos.Line || (a.Pos.Line == b.Pos.Line && a.Pos.Column < b.Pos.Column)
			}
			return a.Key < b.Key
		})
		return n
	case []any:
		n := &Node{Pos: p, Kind: List}
		for i, val := range v {
			ip := JoinIndex(path, i)
			n.Items = append(n.Items, fromTOML(val, ip, at(ip), idx))
		}
		return n
	}
	return &Node{Pos: p, Kind: Scalar, Val: x}
}

// tomlPositions indexes a valid TOML document with go-toml's unstable parser,
// the one API that gives positions: a dotted key ("a.b.c = 1") places every
// prefix at its first key; a [table] or [[array table]] header places its
// path, and each [[array table]] element ("a[2]"), at the header; keys after a
// header are under it (the last element of an array table); inline tables and
// arrays are indexed inside.
func tomlPositions(data []byte) Index {
	idx := Index{}
	var p unstable.Parser
	p.Reset(data)
	at := func(rg unstable.Range) Pos {
		s := p.Shape(rg).Start
		return Pos{Line: s.Line, Column: s.Column}
	}
	var value func(path string, n *unstable.Node, ps Pos)
	kv := func(base string, n *unstable.Node) {
		path, first := base, Pos{}
		it := n.Key()
		for i := 0; it.Next(); i++ {
			path = JoinKey(path, string(it.Node().Data))
			if i == 0 {
				first = at(it.Node().Raw)
			}
			idx.set(path, first)
		}
		value(path, n.Value(), first)
	}
	value = func(path string, n *unstable.Node, ps Pos) {
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
				ip := JoinIndex(path, i)
				idx.set(ip, cp)
				value(ip, c, cp)
				i++
			}
		}
	}
	arrays := map[string]int{} // [[array table]] path → elements so far
	cur := ""                  // the path of the last table header
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.KeyValue:
			kv(cur, e)
		case unstable.Table, unstable.ArrayTable:
			path, first := "", Pos{}
			it := e.Key()
			for i := 0; it.Next(); i++ {
				if i == 0 {
					first = at(it.Node().Raw)
				}
				path = JoinKey(path, string(it.Node().Data))
				idx.set(path, first)
				if it.IsLast() && e.Kind == unstable.ArrayTable {
					arrays[path]++
					path = JoinIndex(path, arrays[path]-1)
					idx.set(path, first)
				} else if n, ok := arrays[path]; ok {
					path = JoinIndex(path, n-1)
				}
			}
			cur = path
		}
	}
	return idx
}
