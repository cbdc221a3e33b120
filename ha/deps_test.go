package ha

import (
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestImportBoundaries keeps the arrows pointing one way: nothing under ha/ imports the proxy
// (engine, pool, pgwire), the API (admin), netlink or the composition root (cmd).
func TestImportBoundaries(t *testing.T) {
	const module = "github.com/pgbastion/pgbastion/"
	forbidden := []string{"engine", "pool", "pgwire", "admin", "netlink", "cmd", "bench", "test"}
	checked := 0
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") {
			return err
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		checked++
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			rest, ours := strings.CutPrefix(p, module)
			if !ours {
				continue
			}
			top, _, _ := strings.Cut(rest, "/")
			for _, bad := range forbidden {
				if top == bad {
					t.Errorf("%s imports %s: ha must not depend on %s", path, p, bad)
				}
			}
		}
		return nil
	})
	if err != nil || checked < 10 {
		t.Fatalf("walked %d files: %v", checked, err)
	}
}
