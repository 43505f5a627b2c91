package agent

import (
	"testing"

	"github.com/titus-agent/titus-agent/pkg/configdoc"
)

// TestEveryConfigKeyIsDocumented keeps docs/config.md in step with the
// agent's configuration file.
func TestEveryConfigKeyIsDocumented(t *testing.T) {
	missing, err := configdoc.MissingFrom("../../docs/config.md", "Agent configuration", Config{})
	if err != nil || len(missing) > 0 {
		t.Errorf("agent config keys missing from docs/config.md: %v (%v)", missing, err)
	}
}
