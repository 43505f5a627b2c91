package docs

import (
	"go/build"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

const module = "github.com/titus-agent/titus-agent/"

// TestArchitecturePathsExist fails when architecture.md names a file or
// package that is not in the tree, so the map cannot silently go stale.
func TestArchitecturePathsExist(t *testing.T) {
	b, err := os.ReadFile("architecture.md")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile("`((?:pkg|cmd|api|docs|test)/[A-Za-z0-9_./-]+)`")
	n := 0
	for _, m := range re.FindAllStringSubmatch(string(b), -1) {
		n++
		if _, err := os.Stat(filepath.Join("..", m[1])); err != nil {
			t.Errorf("architecture.md names %s, which does not exist", m[1])
		}
	}
	// Bare file names in a hook list are checked against the task runner.
	for _, m := range regexp.MustCompile("`([a-z_]+_hook\\.go)`").FindAllStringSubmatch(string(b), -1) {
		n++
		if _, err := os.Stat(filepath.Join("..", "pkg/agent/taskrunner", m[1])); err != nil {
			t.Errorf("architecture.md names hook file %s, not in pkg/agent/taskrunner", m[1])
		}
	}
	if n < 20 {
		t.Fatalf("found only %d paths in architecture.md; the pattern is broken", n)
	}
}

// TestImportRules holds the import rules written in architecture.md.
func TestImportRules(t *testing.T) {
	type rule struct {
		from   string   // package path prefix (module-relative) the rule applies to
		forbid []string // import path prefixes it must not use (module-relative or full)
	}
	rules := []rule{
		{"pkg/agent", []string{module + "pkg/scheduler"}},
		{"cmd/titus-agent", []string{module + "pkg/scheduler"}},
		{"pkg/scheduler", []string{module + "pkg/agent"}},
		{"cmd/titus-scheduler", []string{module + "pkg/agent"}},
		{"test/schedload", []string{module + "pkg/agent"}},
		{"pkg/scheduler/core", []string{"google.golang.org/grpc", "go.etcd.io/etcd", module + "api/", "github.com/aws/"}},
		{"pkg/scheduler/model", []string{"google.golang.org/grpc", "go.etcd.io/etcd", module + "api/"}},
	}
	for _, lib := range []string{"pkg/runtime", "pkg/vpc", "pkg/isolation", "pkg/metadataproxy", "pkg/gpu", "pkg/healthcheck", "pkg/task", "pkg/schedlink", "pkg/imagegc", "pkg/ecrauth"} {
		rules = append(rules, rule{lib, []string{module + "pkg/agent", module + "pkg/scheduler"}})
	}
	checked := 0
	err := filepath.WalkDir("..", func(path string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel("..", path)
		if strings.HasPrefix(d.Name(), ".") && rel != "." {
			return filepath.SkipDir
		}
		pkg, err := build.ImportDir(path, 0)
		if err != nil {
			return nil // no Go files here
		}
		for _, r := range rules {
			if rel != r.from && !strings.HasPrefix(rel, r.from+"/") {
				continue
			}
			checked++
			for _, imp := range pkg.Imports {
				for _, f := range r.forbid {
					if strings.HasPrefix(imp, f) {
						t.Errorf("%s imports %s, which architecture.md forbids", rel, imp)
					}
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 10 {
		t.Fatalf("checked only %d package/rule pairs; the walk is broken", checked)
	}
}
