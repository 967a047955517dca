package config

import (
	"encoding"
	"fmt"
	"math"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"time"
)

// tnode is one value of a parsed document (TOML or YAML) with its position,
// so one decoder serves both formats and can report every error at once.
type tnode struct {
	pos     pos
	isMap   bool
	entries []tentry // when isMap, in document order
	isList  bool
	items   []*tnode // when isList
	val     any      // scalar: string, bool, an integer or float type, time values, or nil (YAML null)
	text    string   // YAML scalars: the value as written
	hasText bool     // text is set (YAML); such scalars are accepted where a string is wanted
}

// tentry is one key of a map node.
type tentry struct {
	key string
	pos pos // position of the key
	val *tnode
}

var (
	textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()
	durationType        = reflect.TypeFor[Duration]()
)

// decoder overlays a tnode tree onto a config struct, reporting unknown keys
// and values of the wrong type; a bad value leaves the default in place.
type decoder struct {
	r   *reporter
	dir string // directory of the config file: relative path:"file" values resolve against it
}

// decode overlays n onto v (addressable). path is n's key path.
func (d *decoder) decode(n *tnode, v reflect.Value, path string) {
	if n.val == nil && !n.isMap && !n.isList {
		return // YAML null: keep the default
	}
	if v.Kind() == reflect.Pointer {
		elem := reflect.New(v.Type().Elem())
		if d.decode1(n, elem.Elem(), path) {
			v.Set(elem)
		}
		return
	}
	d.decode1(n, v, path)
}

// decode1 decodes into a non-pointer value and reports whether it was set.
func (d *decoder) decode1(n *tnode, v reflect.Value, path string) bool {
	if v.Type() == durationType || reflect.PointerTo(v.Type()).Implements(textUnmarshalerType) {
		return d.decodeText(n, v, path)
	}
	switch v.Kind() {
	case reflect.Struct:
		if !n.isMap {
			d.r.at(n.pos, path, "expected a table, got %s", describe(n))
			return false
		}
		d.decodeStruct(n, v, path)
		return true
	case reflect.Slice:
		if !n.isList {
			d.r.at(n.pos, path, "expected a list, got %s", describe(n))
			return false
		}
		s := reflect.MakeSlice(v.Type(), len(n.items), len(n.items))
		for i, it := range n.items {
			d.decode(it, s.Index(i), indexPath(path, i))
		}
		v.Set(s)
		return true
	case reflect.String:
		switch x := n.val.(type) {
		case string:
			v.SetString(x)
			return true
		default:
			if n.hasText && !n.isMap && !n.isList {
				v.SetString(n.text)
				return true
			}
		}
		d.r.at(n.pos, path, "expected a string, got %s", describe(n))
	case reflect.Bool:
		if b, ok := n.val.(bool); ok {
			v.SetBool(b)
			return true
		}
		if s, ok := n.val.(string); ok && n.hasText {
			// YAML 1.1 booleans, as yaml.v3 accepts them for bool fields.
			switch s {
			case "y", "Y", "yes", "Yes", "YES", "on", "On", "ON":
				v.SetBool(true)
				return true
			case "n", "N", "no", "No", "NO", "off", "Off", "OFF":
				v.SetBool(false)
				return true
			}
		}
		d.r.at(n.pos, path, "expected true or false, got %s", describe(n))
	case reflect.Int, reflect.Int64, reflect.Int32:
		i, ok := toInt64(n.val)
		if !ok {
			d.r.at(n.pos, path, "expected an integer, got %s", describe(n))
			return false
		}
		if v.OverflowInt(i) {
			d.r.at(n.pos, path, "integer %d is out of range", i)
			return false
		}
		v.SetInt(i)
		return true
	default:
		panic("config: unsupported field kind " + v.Kind().String())
	}
	return false
}

// decodeText decodes a text value (Duration) through UnmarshalText.
func (d *decoder) decodeText(n *tnode, v reflect.Value, path string) bool {
	s, ok := n.val.(string)
	if !ok {
		if _, num := toInt64(n.val); num || isFloat(n.val) {
			d.r.at(n.pos, path, "%v", errBareDuration)
			return false
		}
		d.r.at(n.pos, path, "expected a string, got %s", describe(n))
		return false
	}
	if err := v.Addr().Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(s)); err != nil {
		d.r.at(n.pos, path, "%v", err)
		return false
	}
	return true
}

// decodeStruct overlays the entries of map node n onto struct v by toml tag.
func (d *decoder) decodeStruct(n *tnode, v reflect.Value, path string) {
	fields, names := structFields(v.Type())
	seen := map[int]string{}
	for _, e := range n.entries {
		kp := joinPath(path, e.key)
		fi, ok := fields[e.key]
		if !ok {
			if s := suggest(e.key, names); s != "" {
				d.r.at(e.pos, kp, "unknown key (did you mean %q?)", s)
			} else {
				d.r.at(e.pos, kp, "unknown key")
			}
			continue
		}
		if prev, dup := seen[fi.index]; dup {
			d.r.at(e.pos, kp, "set twice (also as %q)", prev)
			continue
		}
		seen[fi.index] = e.key
		val := e.val
		if fi.alias == e.key && !val.isList && v.Field(fi.index).Kind() == reflect.Slice {
			// cloud_url = "x" is cloud_urls = ["x"].
			val = &tnode{pos: val.pos, isList: true, items: []*tnode{val}}
			if d.r.pos != nil {
				d.r.pos[joinPath(path, fi.name)] = e.pos
				d.r.pos[indexPath(joinPath(path, fi.name), 0)] = val.pos
			}
		}
		d.decode(val, v.Field(fi.index), kp)
		if fi.path {
			resolvePaths(v.Field(fi.index), d.dir)
		}
	}
}

// resolvePaths joins dir to a relative file path (a string, or each element of a
// []string); empty and absolute values stay as they are.
func resolvePaths(v reflect.Value, dir string) {
	resolve := func(s reflect.Value) {
		if p := s.String(); p != "" && !filepath.IsAbs(p) {
			s.SetString(filepath.Join(dir, p))
		}
	}
	switch v.Kind() {
	case reflect.String:
		resolve(v)
	case reflect.Slice:
		for i := range v.Len() {
			resolve(v.Index(i))
		}
	}
}

type fieldInfo struct {
	index int
	name  string // the toml tag
	alias string // an alternative key, from the alias tag
	path  bool   // tagged path:"file": a file path, relative to the config file
}

// structFields maps the keys of struct type t (toml tags and aliases) to its
// fields, and lists the tag names for suggestions.
func structFields(t reflect.Type) (map[string]fieldInfo, []string) {
	m := map[string]fieldInfo{}
	var names []string
	for i := range t.NumField() {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if tag == "" || tag == "-" || !f.IsExported() {
			continue
		}
		fi := fieldInfo{index: i, name: tag, alias: f.Tag.Get("alias"), path: f.Tag.Get("path") == "file"}
		m[tag] = fi
		names = append(names, tag)
		if fi.alias != "" {
			m[fi.alias] = fi
		}
	}
	return m, names
}

// toInt64 converts any integer type (TOML gives int64, YAML int or uint64).
func toInt64(x any) (int64, bool) {
	switch v := x.(type) {
	case int:
		return int64(v), true
	case int64:
		return v, true
	case int32:
		return int64(v), true
	case uint64:
		if v > math.MaxInt64 {
			return 0, false
		}
		return int64(v), true
	}
	return 0, false
}

func isFloat(x any) bool {
	switch x.(type) {
	case float64, float32:
		return true
	}
	return false
}

// describe names the type and value of a node for type errors.
func describe(n *tnode) string {
	switch {
	case n.isMap:
		return "a table"
	case n.isList:
		return "a list"
	}
	switch x := n.val.(type) {
	case string:
		return fmt.Sprintf("string %q", x)
	case bool:
		return fmt.Sprintf("boolean %v", x)
	case float64, float32:
		return fmt.Sprintf("number %v", x)
	case time.Time:
		return "a date/time"
	}
	if _, ok := toInt64(n.val); ok {
		return fmt.Sprintf("integer %v", n.val)
	}
	if n.hasText {
		return fmt.Sprintf("%q", n.text)
	}
	return fmt.Sprintf("%v", n.val)
}

// fromTOML builds a tnode tree from a document decoded by go-toml into
// map[string]any, positioned by idx (key path → position).
func fromTOML(x any, path string, p pos, idx map[string]pos) *tnode {
	switch v := x.(type) {
	case map[string]any:
		n := &tnode{pos: p, isMap: true}
		for k, val := range v {
			kp := joinPath(path, k)
			kpos, ok := idx[kp]
			if !ok {
				kpos = p
			}
			n.entries = append(n.entries, tentry{key: k, pos: kpos, val: fromTOML(val, kp, kpos, idx)})
		}
		sort.Slice(n.entries, func(i, j int) bool {
			a, b := n.entries[i], n.entries[j]
			if a.pos != b.pos {
				return a.pos.line < b.pos.line || (a.pos.line == b.pos.line && a.pos.col < b.pos.col)
			}
			return a.key < b.key
		})
		return n
	case []any:
		n := &tnode{pos: p, isList: true}
		for i, val := range v {
			ip := indexPath(path, i)
			ipos, ok := idx[ip]
			if !ok {
				ipos = p
			}
			n.items = append(n.items, fromTOML(val, ip, ipos, idx))
		}
		return n
	default:
		return &tnode{pos: p, val: x}
	}
}
