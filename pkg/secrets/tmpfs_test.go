package secrets

import (
	"os"
	"strings"
	"testing"

	"github.com/titus-agent/titus-agent/pkg/task"
)

// The real tmpfs: mounted with the options said, gone after Remove.
func TestTmpfs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting needs root")
	}
	f := &Files{Root: t.TempDir(), Mounter: Tmpfs{}}
	t.Cleanup(func() { f.Remove("t1") })
	dir, err := f.Write("t1", []Value{{Ref: task.SecretRef{Name: "db"}, Data: []byte("pw")}})
	if err != nil {
		t.Fatal(err)
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	var line string
	for _, l := range strings.Split(string(mi), "\n") {
		if strings.Contains(l, " "+dir+" ") {
			line = l
		}
	}
	for _, want := range []string{"nosuid", "nodev", "noexec", " - tmpfs tmpfs ", "mode=700"} {
		if !strings.Contains(line, want) {
			t.Errorf("mount %q lacks %q", line, want)
		}
	}
	if err := f.Remove("t1"); err != nil {
		t.Fatal(err)
	}
	if m, _ := (Tmpfs{}).Mounted(dir); m {
		t.Error("still mounted")
	}
}
