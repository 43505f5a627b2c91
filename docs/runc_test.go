package docs

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestRuncVersionAgrees: the runc the tests build (scripts/deps.sh), the
// one the AMI bake installs (deploy/) and the one the docs name are the
// same release, 1.2 or later, so what is tested is what hosts run.
func TestRuncVersionAgrees(t *testing.T) {
	read := func(p string) string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join("..", p))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	find := func(p, re string) string {
		t.Helper()
		m := regexp.MustCompile(re).FindStringSubmatch(read(p))
		if m == nil {
			t.Fatalf("%s: no match for %s", p, re)
		}
		return m[1]
	}
	deps := find("scripts/deps.sh", `(?m)^RUNC_VERSION=v(\d+\.\d+\.\d+)\b`)
	if !regexp.MustCompile(`^1\.([2-9]|\d\d+)\.`).MatchString(deps) {
		t.Errorf("scripts/deps.sh builds runc %s: exec into a user-namespace task needs 1.2 or later", deps)
	}
	if bake := find("deploy/titus-agent.pkr.hcl", `variable "runc_version" \{[^}]*default\s*=\s*"([^"]+)"`); bake != deps {
		t.Errorf("the AMI bake installs runc %s, the tests run %s", bake, deps)
	}
	for _, p := range []string{"docs/operations.md", "README.md", "packaging/nfpm.yaml", "deploy/README.md"} {
		if !strings.Contains(read(p), deps) {
			t.Errorf("%s does not name runc %s", p, deps)
		}
	}
	if strings.Contains(read("scripts/deps.sh"), "APT_PKGS=(runc ") || strings.Contains(read("test/vm/run.sh"), "RUNC_VERSION=") {
		t.Errorf("runc has one recipe, in scripts/deps.sh: not Debian's package, not a second build")
	}
}
