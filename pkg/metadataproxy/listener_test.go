package metadataproxy

import (
	"os"
	"path/filepath"
	"testing"
)

func TestIPv6Disabled(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		name    string
		content *string // nil: no file (kernel without IPv6)
		want    bool
	}{
		{"enabled", ptr("0\n"), false},
		{"disabled", ptr("1\n"), true},
		{"no ipv6 in the kernel", nil, true},
	} {
		f := filepath.Join(dir, c.name)
		if c.content != nil {
			if err := os.WriteFile(f, []byte(*c.content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		got, err := ipv6Disabled(f)
		if err != nil || got != c.want {
			t.Errorf("%s: ipv6Disabled = %v, %v; want %v", c.name, got, err, c.want)
		}
	}
	// Unreadable for another reason (here: a directory) is an error, not
	// "disabled": Start must not silently drop IPv6.
	if _, err := ipv6Disabled(dir); err == nil {
		t.Error("a file that cannot be read counted as an answer")
	}
}

func ptr(s string) *string { return &s }
