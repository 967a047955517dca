package config

import (
	"reflect"
	"strings"

	"github.com/nowconnect/nowconnect/internal/confdoc"
)

// Changed returns the keys (dotted, as written in a file: "tunnel.stream_window",
// "listeners") whose values differ between a and b, two configurations of the same type
// (*Hub or *Agent), in the order of the struct's fields. Tables are walked key by key;
// lists (listeners, connectors, allow_cidrs) count as one key. Fields without a file key
// (toml:"-", such as the agent's token) are left out. A reload uses it to name every key
// that changed but cannot apply without a restart.
func Changed(a, b any) []string {
	va, vb := reflect.ValueOf(a), reflect.ValueOf(b)
	if va.Type() != vb.Type() {
		panic("config.Changed: " + va.Type().String() + " and " + vb.Type().String())
	}
	for va.Kind() == reflect.Pointer {
		va, vb = va.Elem(), vb.Elem()
	}
	var out []string
	changed("", va, vb, &out)
	return out
}

func changed(prefix string, a, b reflect.Value, out *[]string) {
	t := a.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if name == "-" || name == "" || !f.IsExported() {
			continue
		}
		key := confdoc.JoinKey(prefix, name)
		fa, fb := a.Field(i), b.Field(i)
		if f.Type.Kind() == reflect.Struct {
			changed(key, fa, fb, out)
			continue
		}
		if !reflect.DeepEqual(fa.Interface(), fb.Interface()) {
			*out = append(*out, key)
		}
	}
}
