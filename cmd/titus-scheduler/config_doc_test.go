package main

import (
	"os"
	"strings"
	"testing"

	"github.com/titus-agent/titus-agent/pkg/configdoc"
)

// TestEveryConfigKeyIsDocumented keeps docs/config.md in step with the
// scheduler's configuration file.
func TestEveryConfigKeyIsDocumented(t *testing.T) {
	b, err := os.ReadFile("../../docs/config.md")
	if err != nil {
		t.Fatal(err)
	}
	_, schedDoc, found := strings.Cut(string(b), "# Scheduler configuration")
	if !found {
		t.Fatal("docs/config.md has no scheduler section")
	}
	if missing := configdoc.Undocumented(schedDoc, configdoc.Keys(serveConfig{})); len(missing) > 0 {
		t.Errorf("scheduler config keys missing from docs/config.md: %v", missing)
	}
}
