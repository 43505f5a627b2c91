package agent

import (
	"os"
	"strings"
	"testing"

	"github.com/titus-agent/titus-agent/pkg/configdoc"
)

// TestEveryConfigKeyIsDocumented keeps docs/config.md in step with Config.
func TestEveryConfigKeyIsDocumented(t *testing.T) {
	b, err := os.ReadFile("../../docs/config.md")
	if err != nil {
		t.Fatal(err)
	}
	agentDoc, _, found := strings.Cut(string(b), "# Scheduler configuration")
	if !found {
		t.Fatal("docs/config.md has no scheduler section")
	}
	if missing := configdoc.Undocumented(agentDoc, configdoc.Keys(Config{})); len(missing) > 0 {
		t.Errorf("agent config keys missing from docs/config.md: %v", missing)
	}
}
