package config

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
	"gopkg.in/yaml.v3"
)

// LoadHub reads the hub configuration at path (.toml, or .yaml/.yml with the
// same keys): defaults, overlaid by the file, then validated. The error is an
// Errors listing every problem with file, line and key.
func LoadHub(path string) (*Hub, error) {
	h := DefaultHub()
	r, ok := loadFile(path, h)
	if !ok {
		return nil, r.result()
	}
	validateHub(h, r)
	if err := r.result(); err != nil {
		return nil, err
	}
	return h, nil
}

// LoadAgent reads the agent configuration at path like LoadHub, reads
// TokenFile into Token, and validates. The file must then be complete; to
// take settings from the environment as well use LoadAgentEnv.
func LoadAgent(path string) (*Agent, error) {
	return LoadAgentEnv(path, nil)
}

// LoadAgentEnv builds the agent configuration from the defaults, the file at
// path (skipped when path is ""), then the environment read through getenv
// (skipped when nil; see ApplyEnv), and validates the result. Problems in the
// file, the environment and the result are reported together.
func LoadAgentEnv(path string, getenv func(string) string) (*Agent, error) {
	a := DefaultAgent()
	r := &reporter{}
	if path != "" {
		var ok bool
		if r, ok = loadFile(path, a); !ok {
			return nil, r.result()
		}
		if a.TokenFile != "" {
			// A failure is reported by validation, at token_file.
			if t, err := readToken(a.TokenFile); err == nil {
				a.Token = t
			}
		}
	}
	if getenv != nil {
		er := &reporter{}
		a.applyEnv(getenv, er)
		r.errs = append(r.errs, er.errs...)
	}
	validateAgent(a, r)
	if err := r.result(); err != nil {
		return nil, err
	}
	return a, nil
}

// loadFile reads path and overlays it onto cfg (a pointer to a config
// struct). It returns the reporter, positioned in the document, and false
// when the document could not be parsed at all.
func loadFile(path string, cfg any) (*reporter, bool) {
	r := &reporter{file: path}
	var parse func([]byte, *reporter) *tnode
	switch strings.ToLower(filepath.Ext(path)) {
	case ".toml":
		parse = parseTOML
	case ".yaml", ".yml":
		parse = parseYAML
	default:
		r.errs = append(r.errs, &Error{File: path, Msg: "unknown config format: want a .toml, .yaml or .yml file"})
		return r, false
	}
	data, err := os.ReadFile(path)
	if err != nil {
		msg := "cannot read config: " + err.Error()
		if errors.Is(err, fs.ErrNotExist) {
			msg = "config file not found"
		}
		r.errs = append(r.errs, &Error{File: path, Msg: msg})
		return r, false
	}
	root := parse(data, r)
	if root == nil {
		return r, false
	}
	d := &decoder{r: r, dir: filepath.Dir(path)}
	d.decode(root, reflect.ValueOf(cfg).Elem(), "")
	return r, true
}

// parseTOML parses a TOML document into a tnode tree and fills r.pos; it
// reports a syntax error and returns nil when the document is not valid TOML.
func parseTOML(data []byte, r *reporter) *tnode {
	var m map[string]any
	if err := toml.Unmarshal(data, &m); err != nil {
		e := &Error{File: r.file, Msg: strings.TrimPrefix(err.Error(), "toml: ")}
		var de *toml.DecodeError
		if errors.As(err, &de) {
			e.Line, e.Column = de.Position()
			e.Key = strings.Join(de.Key(), ".")
		}
		r.errs = append(r.errs, e)
		return nil
	}
	r.pos = tomlPositions(data)
	return fromTOML(m, "", pos{}, r.pos)
}

// tomlPositions maps every key path of a (valid) TOML document to the
// position of its key, and every array element ("a[2]", including [[tables]])
// to the position of the element.
func tomlPositions(data []byte) map[string]pos {
	idx := map[string]pos{}
	var p unstable.Parser
	p.Reset(data)
	at := func(rg unstable.Range) pos {
		s := p.Shape(rg).Start
		return pos{line: s.Line, col: s.Column}
	}
	set := func(path string, ps pos) {
		if _, ok := idx[path]; !ok {
			idx[path] = ps
		}
	}
	arrays := map[string]int{} // [[array table]] path → elements so far
	var kv func(base string, n *unstable.Node)
	var value func(path string, n *unstable.Node, ps pos)
	kv = func(base string, n *unstable.Node) {
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

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): `)

// yamlParserProblems are the messages of yaml.v3's parser errors, whose line
// numbers are 0-based; its scanner errors count from 1.
var yamlParserProblems = map[string]bool{
	"did not find expected <stream-start>":   true,
	"did not find expected <document start>": true,
	"found undefined tag handle":             true,
	"did not find expected node content":     true,
	"did not find expected '-' indicator":    true,
	"did not find expected key":              true,
	"did not find expected ',' or ']'":       true,
	"did not find expected ',' or '}'":       true,
	"found duplicate %YAML directive":        true,
	"found incompatible YAML document":       true,
	"found duplicate %TAG directive":         true,
}

// parseYAML parses a YAML document into a tnode tree and fills r.pos; it
// reports a syntax error and returns nil when the document is not valid YAML.
func parseYAML(data []byte, r *reporter) *tnode {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		e := &Error{File: r.file, Msg: strings.TrimPrefix(err.Error(), "yaml: ")}
		if m := yamlLineRE.FindStringSubmatch(err.Error()); m != nil {
			e.Line, _ = strconv.Atoi(m[1])
			e.Msg = strings.TrimPrefix(err.Error(), m[0])
			if yamlParserProblems[e.Msg] {
				// yaml.v3 numbers the lines of parser (not scanner)
				// errors from 0.
				e.Line++
			}
		}
		r.errs = append(r.errs, e)
		return nil
	}
	r.pos = map[string]pos{}
	if len(doc.Content) == 0 {
		return &tnode{isMap: true} // empty document: all defaults
	}
	root := fromYAML(doc.Content[0], "", r, 0)
	if !root.isMap {
		r.at(root.pos, "", "the document must be a mapping of keys, got %s", describe(root))
		return nil
	}
	return root
}

// fromYAML builds a tnode tree from a yaml.Node, recording key positions.
func fromYAML(y *yaml.Node, path string, r *reporter, depth int) *tnode {
	for y.Kind == yaml.AliasNode && y.Alias != nil && depth < 100 {
		y, depth = y.Alias, depth+1
	}
	n := &tnode{pos: pos{line: y.Line, col: y.Column}}
	if depth > 100 {
		r.at(n.pos, path, "aliases nested too deep")
		return n
	}
	switch y.Kind {
	case yaml.MappingNode:
		n.isMap = true
		for i := 0; i+1 < len(y.Content); i += 2 {
			k, v := y.Content[i], y.Content[i+1]
			kp := joinPath(path, k.Value)
			kpos := pos{line: k.Line, col: k.Column}
			if _, ok := r.pos[kp]; !ok {
				r.pos[kp] = kpos
			}
			n.entries = append(n.entries, tentry{key: k.Value, pos: kpos, val: fromYAML(v, kp, r, depth+1)})
		}
	case yaml.SequenceNode:
		n.isList = true
		for i, c := range y.Content {
			ip := indexPath(path, i)
			r.pos[ip] = pos{line: c.Line, col: c.Column}
			n.items = append(n.items, fromYAML(c, ip, r, depth+1))
		}
	case yaml.ScalarNode:
		n.text, n.hasText = y.Value, true
		if err := y.Decode(&n.val); err != nil {
			n.val = y.Value
		}
	default:
		n.val, n.text, n.hasText = y.Value, y.Value, true
	}
	return n
}
