package agent

import (
	"slices"
	"testing"

	"github.com/titus-agent/titus-agent/pkg/agent/taskrunner"
)

// Every hook the launch graph names is one the wiring makes, in the
// stage the graph assumes: a misspelt need would be ignored, and the hook
// would start before what it reads is there.
func TestHookNeedsNameHooksOfTheFirstStage(t *testing.T) {
	first := []string{(&taskrunner.ImageHook{}).Name(), (&taskrunner.NetworkHook{}).Name(),
		(&taskrunner.HostMountHook{}).Name(), (&taskrunner.SecretsHook{}).Name(), (&taskrunner.CredentialsHook{}).Name()}
	second := []string{(&taskrunner.DiskHook{}).Name(), (&taskrunner.MetadataHook{}).Name(), (&taskrunner.BandwidthHook{}).Name()}
	for hook, needs := range hookNeeds {
		if !slices.Contains(second, hook) {
			t.Errorf("hookNeeds[%q]: not a hook of stage 2 %v", hook, second)
		}
		for _, n := range needs {
			if !slices.Contains(first, n) {
				t.Errorf("hookNeeds[%q] needs %q: not a hook of stage 1 %v", hook, n, first)
			}
		}
	}
}
