package agent

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/titus-agent/titus-agent/pkg/task"
)

// An env secret's value, which only the container's env holds, is shown
// redacted by task inspect whatever its name.
func TestInspectRedactsEnvSecrets(t *testing.T) {
	spec := task.Spec{Labels: map[string]string{LabelSecretEnv: "CUSTOM"}, Secrets: []task.SecretRef{
		{Name: "DBCONN", From: "/p/db", As: task.SecretAsEnv}, {Name: "file", From: "/p/f"}}}
	env := []string{"DBCONN=postgres://u:pw@h/db", "CUSTOM=x", "MODE=prod"}
	got := redactEnv(env, withSecretEnv(spec))
	want := []string{"DBCONN=<redacted>", "CUSTOM=<redacted>", "MODE=prod"}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
	if spec.Labels[LabelSecretEnv] != "CUSTOM" {
		t.Error("the spec's labels were changed")
	}
}

func TestSecretsDirOutsideStateDir(t *testing.T) {
	for dir, ok := range map[string]bool{"/run/titus-agent/secrets": true, "/var/lib/titus-agent/secrets": false,
		"/var/lib/titus-agent": false, "relative": false, "/var/lib/titus-agent-secrets": true} {
		err := SecretsConfig{Dir: dir}.validate("/var/lib/titus-agent")
		if (err == nil) != ok {
			t.Errorf("secrets.dir %s: err = %v", dir, err)
		}
	}
}
