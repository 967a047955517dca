package confdoc

import (
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// MaxDepth bounds how deep a YAML value may nest, counting each alias
// followed as a level: an alias inside its own anchor ("a: &a [*a]") would
// otherwise expand forever.
const MaxDepth = 64

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): `)

// yamlParserProblems are the messages of yaml.v3's parser errors, whose line
// numbers count from 0; its scanner errors ("found character that cannot
// start any token", ...) count from 1.
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

// ParseYAML parses a YAML document (the first, when there are several). file
// names it in errors. A document that is not valid YAML gives a nil Doc and
// one Error at the problem's line, its message as yaml.v3 words it (without
// "yaml: " and the line). Aliases are expanded; a value nested deeper than
// MaxDepth is an error at it and becomes a Null node, the rest of the tree is
// kept. Repeated keys are kept: what they mean is the caller's to say.
func ParseYAML(file string, data []byte) (*Doc, Errors) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		e := &Error{File: file, Msg: strings.TrimPrefix(err.Error(), "yaml: ")}
		if m := yamlLineRE.FindStringSubmatch(err.Error()); m != nil {
			e.Line, _ = strconv.Atoi(m[1])
			e.Msg = strings.TrimPrefix(err.Error(), m[0])
			if yamlParserProblems[e.Msg] {
				e.Line++
			}
		}
		return nil, Errors{e}
	}
	b := &yamlBuilder{file: file, idx: Index{}}
	d := &Doc{Index: b.idx}
	if len(root.Content) > 0 {
		d.Root = b.node(root.Content[0], "", 0)
	}
	return d, b.errs
}

// yamlBuilder turns a yaml.Node tree into Nodes and indexes it.
type yamlBuilder struct {
	file string
	idx  Index
	errs Errors
}

// node builds the Node of y, at key path path and depth levels down.
func (b *yamlBuilder) node(y *yaml.Node, path string, depth int) *Node {
	for y.Kind == yaml.AliasNode && y.Alias != nil && depth < MaxDepth {
		y, depth = y.Alias, depth+1
	}
	n := &Node{Pos: Pos{Line: y.Line, Column: y.Column}}
	if depth >= MaxDepth {
		b.errs = append(b.errs, Errorf(b.file, n.Pos, path, "nested too deep"))
		return n
	}
	switch y.Kind {
	case yaml.MappingNode:
		n.Kind = Map
		for i := 0; i+1 < len(y.Content); i += 2 {
			k, v := y.Content[i], y.Content[i+1]
			kp := JoinKey(path, k.Value)
			kpos := Pos{Line: k.Line, Column: k.Column}
			b.idx.set(kp, kpos)
			n.Entries = append(n.Entries, Entry{Key: k.Value, Pos: kpos, Val: b.node(v, kp, depth+1)})
		}
	case yaml.SequenceNode:
		n.Kind = List
		for i, c := range y.Content {
			ip := JoinIndex(path, i)
			b.idx.set(ip, Pos{Line: c.Line, Column: c.Column})
			n.Items = append(n.Items, b.node(c, ip, depth+1))
		}
	case yaml.ScalarNode:
		n.Text, n.HasText = y.Value, true
		if err := y.Decode(&n.Val); err != nil {
			n.Val = y.Value
		}
		if n.Val != nil {
			n.Kind = Scalar
		}
	}
	return n
}
