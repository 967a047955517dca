// Package confdoc is the document layer shared by the files people write for
// NowConnect: the config files of nowconnect cloud and premise
// (internal/config) and the check files of nowconnect check (internal/check).
//
// It parses a TOML or YAML document into one tree of Nodes, each with the
// line and column it was written at, and an Index from every key path
// ("listeners[1].bind", "checks[0].port") to its position, so that the
// decoders above it can serve both formats with one code path and name the
// file, line and key of every problem (Error, Errors). What a document may
// hold — config structs, check types — stays with those packages.
//
// Key paths join keys with dots and array elements with [i]: "a.b[2].c".
package confdoc

import (
	"strconv"
	"strings"
)

// Pos is a place in a document: 1-based line and column, or 0, 0 when unknown.
type Pos struct{ Line, Column int }

// Kind is what a Node holds.
type Kind uint8

// The kinds of nodes.
const (
	Null   Kind = iota // YAML null (~, null, or nothing); TOML has none
	Scalar             // a string, boolean, number or date/time: Val
	Map                // a table (TOML) or mapping (YAML): Entries
	List               // an array (TOML) or sequence (YAML): Items
)

// Node is one value of a parsed document with its position.
type Node struct {
	Pos     Pos
	Kind    Kind
	Entries []Entry // Map: in document order (YAML may repeat a key, TOML may not)
	Items   []*Node // List
	// Val is a Scalar's value: string, bool, int, int64, uint64, float64 or a
	// time value, as go-toml or yaml.v3 decode it.
	Val any
	// Text is a YAML scalar (or null) as written, so `password: 1234` can be
	// read as the string "1234"; HasText says it is set (the node is YAML).
	Text    string
	HasText bool
}

// Entry is one key of a Map node.
type Entry struct {
	Key string
	Pos Pos // of the key
	Val *Node
}

// Doc is a parsed document.
type Doc struct {
	// Root is the document's top value: a Map for TOML; for YAML whatever the
	// document is, or nil when it is empty (no value at all).
	Root *Node
	// Index holds the position of every key path in the document.
	Index Index
}

// Index maps key paths to the positions of their keys, and array elements
// ("a[2]", including TOML [[tables]]) to the positions of the elements. A
// path that occurs twice (a repeated YAML key) keeps its first position.
type Index map[string]Pos

// set records p for path unless path has a position already.
func (ix Index) set(path string, p Pos) {
	if _, ok := ix[path]; !ok {
		ix[path] = p
	}
}

// Lookup returns the position of path or, when path is not in the document
// (a key left to its default), of its closest ancestor that is; Pos{} when none is.
func (ix Index) Lookup(path string) Pos {
	for k := path; k != ""; k = Parent(k) {
		if p, ok := ix[k]; ok {
			return p
		}
	}
	return Pos{}
}

// JoinKey appends a key to a key path.
func JoinKey(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// JoinIndex appends an array index to a key path.
func JoinIndex(path string, i int) string {
	return path + "[" + strconv.Itoa(i) + "]"
}

// Parent strips the last ".key" or "[i]" of a key path; "" for a top-level key.
func Parent(path string) string {
	i := strings.LastIndexAny(path, ".[")
	if i < 0 {
		return ""
	}
	return path[:i]
}
