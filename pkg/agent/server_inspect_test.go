package agent

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestRedactEnv(t *testing.T) {
	env := []string{"PATH=/bin", "DB_PASSWORD=hunter2", "MODE=prod", "GITHUB_TOKEN=abc", "AWS_SECRET_ACCESS_KEY=x", "SIGNING_KEY=k", "CUSTOM=marked", "KEYBOARD=us", "EMPTY="}
	got := redactEnv(env, map[string]string{LabelSecretEnv: " CUSTOM , EMPTY"})
	want := []string{"PATH=/bin", "DB_PASSWORD=<redacted>", "MODE=prod", "GITHUB_TOKEN=<redacted>", "AWS_SECRET_ACCESS_KEY=<redacted>", "SIGNING_KEY=<redacted>", "CUSTOM=<redacted>", "KEYBOARD=us", "EMPTY=<redacted>"}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("redactEnv (-want +got):\n%s", d)
	}
	if env[1] != "DB_PASSWORD=hunter2" {
		t.Error("the input was changed")
	}
	if d := cmp.Diff(map[string]string{"A": "1", "API_KEY": Redacted}, redactMap(map[string]string{"A": "1", "API_KEY": "s"}, nil)); d != "" {
		t.Errorf("redactMap (-want +got):\n%s", d)
	}
}
