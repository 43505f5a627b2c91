package main

import (
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// internallyLinkable are the cgo packages Go's own linker links: with
// only these the agent stays an internally linked binary.
var internallyLinkable = []string{"net", "os/user", "runtime/cgo"}

// TestAgentLinksWithoutCgo guards the daemon's resident set. One import of
// a package with cgo files (go-systemd/v22/util, for a one-line check)
// made the agent an externally linked binary, and with it the idle daemon
// went from 34 to 66 MiB VmRSS in `make bench` (target < 60 MiB, see
// docs/slo.md): the gcc/ld output lands in the page cache as large folios
// that one fault maps whole. Reimplement the call instead of importing
// such a package.
func TestAgentLinksWithoutCgo(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = filepath.Join(goruntime.GOROOT(), "bin", "go")
	}
	out, err := exec.Command(gobin, "list", "-deps", "-f", "{{if .CgoFiles}}{{.ImportPath}}{{end}}", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	var cgo []string
	for _, p := range strings.Fields(string(out)) {
		if !slices.Contains(internallyLinkable, p) {
			cgo = append(cgo, p)
		}
	}
	if diff := cmp.Diff([]string(nil), cgo); diff != "" {
		t.Errorf("titus-agent imports packages with cgo files, which forces external linking (-want +got):\n%s", diff)
	}
}
