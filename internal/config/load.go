package config

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"

	"github.com/nowconnect/nowconnect/internal/confdoc"
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
	var parse func([]byte, *reporter) *confdoc.Node
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

// parseTOML parses a TOML document and fills r.pos; it reports a syntax
// error and returns nil when the document is not valid TOML.
func parseTOML(data []byte, r *reporter) *confdoc.Node {
	doc, errs := confdoc.ParseTOML(r.file, data)
	r.errs = append(r.errs, errs...)
	if doc == nil {
		return nil
	}
	r.pos = doc.Index
	return doc.Root
}

// parseYAML parses a YAML document and fills r.pos; it reports a syntax
// error and returns nil when the document is not valid YAML or not a mapping.
func parseYAML(data []byte, r *reporter) *confdoc.Node {
	doc, errs := confdoc.ParseYAML(r.file, data)
	r.errs = append(r.errs, errs...)
	if doc == nil {
		return nil
	}
	r.pos = doc.Index
	if doc.Root == nil {
		return &confdoc.Node{Kind: confdoc.Map} // empty document: all defaults
	}
	if doc.Root.Kind != confdoc.Map {
		r.at(doc.Root.Pos, "", "the document must be a mapping of keys, got %s", describe(doc.Root))
		return nil
	}
	return doc.Root
}

// At returns an Error for key of the file at path, positioned where the
// file sets key (or its closest ancestor): for a failure found after the
// load, such as a listener's address that cannot be bound. The file is read
// again; without a position the Error names the file and the key.
func At(path, key, msg string) *Error {
	e := &Error{File: path, Key: key, Msg: msg}
	data, err := os.ReadFile(path)
	if err != nil {
		return e
	}
	var doc *confdoc.Doc
	switch strings.ToLower(filepath.Ext(path)) {
	case ".toml":
		doc, _ = confdoc.ParseTOML(path, data)
	case ".yaml", ".yml":
		doc, _ = confdoc.ParseYAML(path, data)
	}
	if doc != nil {
		p := doc.Index.Lookup(key)
		e.Line, e.Column = p.Line, p.Column
	}
	return e
}
