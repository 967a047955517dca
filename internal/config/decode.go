package config

import (
	"encoding"
	"fmt"
	"math"
	"path/filepath"
	"reflect"
	"strings"
	"time"

	"github.com/nowconnect/nowconnect/internal/confdoc"
)

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
func (d *decoder) decode(n *confdoc.Node, v reflect.Value, path string) {
	if n.Kind == confdoc.Null {
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
func (d *decoder) decode1(n *confdoc.Node, v reflect.Value, path string) bool {
	if v.Type() == durationType || reflect.PointerTo(v.Type()).Implements(textUnmarshalerType) {
		return d.decodeText(n, v, path)
	}
	switch v.Kind() {
	case reflect.Struct:
		if n.Kind != confdoc.Map {
			d.r.at(n.Pos, path, "expected a table, got %s", describe(n))
			return false
		}
		d.decodeStruct(n, v, path)
		return true
	case reflect.Slice:
		if n.Kind != confdoc.List {
			d.r.at(n.Pos, path, "expected a list, got %s", describe(n))
			return false
		}
		s := reflect.MakeSlice(v.Type(), len(n.Items), len(n.Items))
		for i, it := range n.Items {
			d.decode(it, s.Index(i), confdoc.JoinIndex(path, i))
		}
		v.Set(s)
		return true
	case reflect.String:
		switch x := n.Val.(type) {
		case string:
			v.SetString(x)
			return true
		default:
			if n.HasText && n.Kind == confdoc.Scalar {
				v.SetString(n.Text)
				return true
			}
		}
		d.r.at(n.Pos, path, "expected a string, got %s", describe(n))
	case reflect.Bool:
		if b, ok := n.Val.(bool); ok {
			v.SetBool(b)
			return true
		}
		if s, ok := n.Val.(string); ok && n.HasText {
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
		d.r.at(n.Pos, path, "expected true or false, got %s", describe(n))
	case reflect.Int, reflect.Int64, reflect.Int32:
		i, ok := toInt64(n.Val)
		if !ok {
			d.r.at(n.Pos, path, "expected an integer, got %s", describe(n))
			return false
		}
		if v.OverflowInt(i) {
			d.r.at(n.Pos, path, "integer %d is out of range", i)
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
func (d *decoder) decodeText(n *confdoc.Node, v reflect.Value, path string) bool {
	s, ok := n.Val.(string)
	if !ok {
		if _, num := toInt64(n.Val); num || isFloat(n.Val) {
			d.r.at(n.Pos, path, "%v", errBareDuration)
			return false
		}
		d.r.at(n.Pos, path, "expected a string, got %s", describe(n))
		return false
	}
	if err := v.Addr().Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(s)); err != nil {
		d.r.at(n.Pos, path, "%v", err)
		return false
	}
	return true
}

// decodeStruct overlays the entries of map node n onto struct v by toml tag.
func (d *decoder) decodeStruct(n *confdoc.Node, v reflect.Value, path string) {
	fields, names := structFields(v.Type())
	seen := map[int]string{}
	for _, e := range n.Entries {
		kp := confdoc.JoinKey(path, e.Key)
		fi, ok := fields[e.Key]
		if !ok {
			if s := confdoc.Suggest(e.Key, names); s != "" {
				d.r.at(e.Pos, kp, "unknown key (did you mean %q?)", s)
			} else {
				d.r.at(e.Pos, kp, "unknown key")
			}
			continue
		}
		if prev, dup := seen[fi.index]; dup {
			d.r.at(e.Pos, kp, "set twice (also as %q)", prev)
			continue
		}
		seen[fi.index] = e.Key
		val := e.Val
		if fi.alias == e.Key && val.Kind != confdoc.List && v.Field(fi.index).Kind() == reflect.Slice {
			// cloud_url = "x" is cloud_urls = ["x"].
			val = &confdoc.Node{Pos: val.Pos, Kind: confdoc.List, Items: []*confdoc.Node{val}}
			if d.r.pos != nil {
				d.r.pos[confdoc.JoinKey(path, fi.name)] = e.Pos
				d.r.pos[confdoc.JoinIndex(confdoc.JoinKey(path, fi.name), 0)] = val.Pos
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
func describe(n *confdoc.Node) string {
	switch n.Kind {
	case confdoc.Map:
		return "a table"
	case confdoc.List:
		return "a list"
	}
	switch x := n.Val.(type) {
	case string:
		return fmt.Sprintf("string %q", x)
	case bool:
		return fmt.Sprintf("boolean %v", x)
	case float64, float32:
		return fmt.Sprintf("number %v", x)
	case time.Time:
		return "a date/time"
	}
	if _, ok := toInt64(n.Val); ok {
		return fmt.Sprintf("integer %v", n.Val)
	}
	if n.HasText {
		return fmt.Sprintf("%q", n.Text)
	}
	return fmt.Sprintf("%v", n.Val)
}
