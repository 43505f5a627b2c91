package main

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/titus-agent/titus-agent/pkg/task"
)

func TestAddSecrets(t *testing.T) {
	spec := &task.Spec{}
	const arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf"
	if err := addSecrets(spec, []string{"db=" + arn + ":password"}, task.SecretAsFile); err != nil {
		t.Fatal(err)
	}
	if err := addSecrets(spec, []string{"TOKEN=/app/token"}, task.SecretAsEnv); err != nil {
		t.Fatal(err)
	}
	want := []task.SecretRef{{Name: "db", From: arn + ":password", As: task.SecretAsFile}, {Name: "TOKEN", From: "/app/token", As: task.SecretAsEnv}}
	if diff := cmp.Diff(want, spec.Secrets); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if err := addSecrets(spec, []string{"no-equals"}, task.SecretAsEnv); err == nil || err.Error() != `--secret-env "no-equals": want NAME=FROM (a Secrets Manager ARN[:JSONKEY] or an SSM parameter)` {
		t.Errorf("err = %v", err)
	}
}
