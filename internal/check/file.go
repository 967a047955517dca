package check

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/nowconnect/nowconnect/internal/confdoc"
)

// Error is one problem in a check file. Error() reads
// "checks.yaml:12:5: checks[3].port: required key missing"; Line and Column are 0 when
// unknown and then left out. It is confdoc's Error, which config files share.
type Error = confdoc.Error

// Errors is every problem found while loading; Load returns it as its error.
type Errors = confdoc.Errors

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

// describe names what a node holds, for type errors.
func describe(n *confdoc.Node) string {
	switch n.Kind {
	case confdoc.Null:
		return "nothing (null)"
	case confdoc.Map:
		return "a mapping"
	case confdoc.List:
		return "a list"
	}
	switch n.Val.(type) {
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case int, int64, uint64:
		return "an integer"
	case float64:
		return "a number"
	}
	return fmt.Sprintf("a %T", n.Val)
}

// parser collects the errors of one document.
type parser struct {
	file string
	errs Errors
}

func (p *parser) at(ps confdoc.Pos, key, format string, args ...any) {
	p.errs = append(p.errs, confdoc.Errorf(p.file, ps, key, format, args...))
}

// parse turns data into a node tree; nil after a syntax error (recorded).
func (p *parser) parse(format Format, data []byte) *confdoc.Node {
	if format == TOML {
		return p.parseTOML(data)
	}
	return p.parseYAML(data)
}

// parseYAML parses a YAML check file. A document that is a list is conn-check's format:
// the list of checks, whose key paths start at "checks".
func (p *parser) parseYAML(data []byte) *confdoc.Node {
	doc, errs := confdoc.ParseYAML(p.file, data)
	if doc == nil {
		p.syntaxErrors("bad YAML: ", errs)
		return nil
	}
	if doc.Root == nil {
		return &confdoc.Node{Kind: confdoc.List} // an empty file: no checks
	}
	root := ""
	if doc.Root.Kind == confdoc.List {
		root = "checks" // conn-check's format: the document is the list of checks
		for _, e := range errs {
			e.Key = root + e.Key // "[3].x" is checks[3].x
		}
	}
	p.errs = append(p.errs, errs...)
	p.dropDuplicates(doc.Root, root)
	return doc.Root
}

// dropDuplicates reports every key that a YAML mapping repeats, and drops the repeats:
// the first one counts. (TOML refuses them itself.)
func (p *parser) dropDuplicates(n *confdoc.Node, path string) {
	switch n.Kind {
	case confdoc.Map:
		seen := make(map[string]bool, len(n.Entries))
		kept := n.Entries[:0]
		for _, e := range n.Entries {
			kp := confdoc.JoinKey(path, e.Key)
			if seen[e.Key] {
				p.at(e.Pos, kp, "duplicate key")
				continue
			}
			seen[e.Key] = true
			p.dropDuplicates(e.Val, kp)
			kept = append(kept, e)
		}
		n.Entries = kept
	case confdoc.List:
		for i, it := range n.Items {
			p.dropDuplicates(it, confdoc.JoinIndex(path, i))
		}
	}
}

func (p *parser) parseTOML(data []byte) *confdoc.Node {
	doc, errs := confdoc.ParseTOML(p.file, data)
	if doc == nil {
		p.syntaxErrors("bad TOML: ", errs)
		return nil
	}
	return doc.Root
}

// syntaxErrors records the errors of a document that could not be parsed, saying so.
func (p *parser) syntaxErrors(prefix string, errs Errors) {
	for _, e := range errs {
		e.Msg = prefix + e.Msg
	}
	p.errs = append(p.errs, errs...)
}

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
