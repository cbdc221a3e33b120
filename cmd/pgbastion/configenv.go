package main

import (
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// Environment references in the configuration file: a value may name environment variables as
// ${NAME} or ${NAME:-default}, so that one file serves every node of a cluster in containers
// (the node's name and address from its environment) and secrets can come from the
// environment rather than the file. $${ is a literal ${. Only values are expanded, never keys
// or comments. The expansion happens on the text, value by value, and keeps every line where
// it was, so errors still name the file's lines; a value that would not read back as the same
// string in YAML (a colon, a #, a quote, a newline...) is written quoted.

// envRef matches $${ (an escaped ${) or a reference.
var envRef = regexp.MustCompile(`\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}`)

// safePlainRE is what may stand unquoted in place of a plain scalar and read back as written:
// no space, no indicator character first, nothing that starts a comment or a flow collection.
var safePlainRE = regexp.MustCompile(`^(?:[A-Za-z0-9_./]|-[0-9])[A-Za-z0-9_./@+=:-]*$`)

func safePlain(v string) bool { return safePlainRE.MatchString(v) && !strings.HasSuffix(v, ":") }

// expandEnv returns data with the environment references in its values replaced, using
// lookup for the variables' values.
func expandEnv(name string, data []byte, lookup func(string) (string, bool)) ([]byte, error) {
	if !strings.Contains(string(data), "${") {
		return data, nil
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return data, nil // the strict decode reports the syntax error with its line
	}
	type edit struct {
		line, col int // 1-based; col counts runes
		raw, with string
	}
	var edits []edit
	var errs []string
	var walk func(n *yaml.Node, isKey bool)
	walk = func(n *yaml.Node, isKey bool) {
		switch n.Kind {
		case yaml.DocumentNode, yaml.SequenceNode:
			for _, c := range n.Content {
				walk(c, false)
			}
			return
		case yaml.MappingNode:
			for i, c := range n.Content {
				walk(c, i%2 == 0)
			}
			return
		case yaml.ScalarNode:
		default:
			return
		}
		if isKey || !strings.Contains(n.Value, "${") {
			return
		}
		var missing []string
		value := envRef.ReplaceAllStringFunc(n.Value, func(ref string) string {
			if ref == "$${" {
				return "${"
			}
			m := envRef.FindStringSubmatch(ref)
			if v, ok := lookup(m[1]); ok && (v != "" || !strings.Contains(ref, ":-")) {
				return v
			}
			if strings.Contains(ref, ":-") {
				return m[2]
			}
			missing = append(missing, m[1])
			return ref
		})
		if !utf8.ValidString(value) {
			errs = append(errs, fmt.Sprintf("%s:%d: an environment variable in this value is not valid UTF-8", name, n.Line))
			return
		}
		if len(missing) > 0 {
			errs = append(errs, fmt.Sprintf("%s:%d: environment variable %s is not set (set it, or give a default: ${%s:-value})",
				name, n.Line, strings.Join(missing, ", "), missing[0]))
			return
		}
		var raw string
		switch n.Style {
		case 0: // plain: the value as it stands in the file
			raw = n.Value
		case yaml.DoubleQuotedStyle:
			raw = `"` + n.Value + `"`
		case yaml.SingleQuotedStyle:
			raw = `'` + n.Value + `'`
		default:
			errs = append(errs, fmt.Sprintf("%s:%d: ${...} works in a one-line value (plain or quoted), not in a block scalar", name, n.Line))
			return
		}
		with := quoted(value)
		if n.Style == 0 && safePlain(value) {
			with = value // a number, a bool, a word: typed as if written in the file
		}
		edits = append(edits, edit{line: n.Line, col: n.Column, raw: raw, with: with})
	}
	walk(&root, false)
	if len(errs) > 0 {
		return nil, fmt.Errorf("%s", strings.Join(errs, "\n"))
	}
	lines := strings.Split(string(data), "\n")
	// Right to left within a line, so earlier columns stay valid.
	sort.Slice(edits, func(i, j int) bool {
		if edits[i].line != edits[j].line {
			return edits[i].line < edits[j].line
		}
		return edits[i].col > edits[j].col
	})
	for _, e := range edits {
		if e.line < 1 || e.line > len(lines) {
			return nil, fmt.Errorf("%s:%d: cannot expand ${...} here; write the value on one line", name, e.line)
		}
		r := []rune(lines[e.line-1])
		start := e.col - 1
		rawR := []rune(e.raw)
		if start < 0 || start+len(rawR) > len(r) || string(r[start:start+len(rawR)]) != e.raw {
			return nil, fmt.Errorf("%s:%d: cannot expand ${...} in this value; write it on one line, without escapes", name, e.line)
		}
		lines[e.line-1] = string(r[:start]) + e.with + string(r[start+len(rawR):])
	}
	return []byte(strings.Join(lines, "\n")), nil
}

// quoted is v as a YAML double-quoted scalar: printable characters as they are, the rest
// escaped (YAML allows no control characters, DEL or C1 codes in a file). v is valid UTF-8.
func quoted(v string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range v {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0):
			fmt.Fprintf(&b, `\x%02x`, r)
		case r == 0x2028 || r == 0x2029 || r == 0xfeff || r == 0xfffe || r == 0xffff:
			// Line and paragraph separators would fold; the others YAML does not allow.
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// lookupEnv is os.LookupEnv; a variable for tests.
var lookupEnv = os.LookupEnv
