package task

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const (
	testRole = "arn:aws:iam::123456789012:role/app"
	testSM   = "arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf"
)

func TestParseSecretSource(t *testing.T) {
	tests := []struct {
		from    string
		want    SecretSource
		wantErr bool
	}{
		{from: testSM, want: SecretSource{Kind: SecretsManager, ID: testSM}},
		{from: testSM + ":password", want: SecretSource{Kind: SecretsManager, ID: testSM, JSONKey: "password"}},
		{from: "arn:aws:ssm:us-east-1:123456789012:parameter/prod/db", want: SecretSource{Kind: SSMParameter, ID: "arn:aws:ssm:us-east-1:123456789012:parameter/prod/db"}},
		{from: "/prod/db/password", want: SecretSource{Kind: SSMParameter, ID: "/prod/db/password"}},
		{from: "plain-name", want: SecretSource{Kind: SSMParameter, ID: "plain-name"}},
		{from: testSM + ":a:b", wantErr: true},
		{from: smName(512) + ":" + strings.Repeat("k", 256), want: SecretSource{Kind: SecretsManager, ID: smName(512), JSONKey: strings.Repeat("k", 256)}},
		{from: smName(513), wantErr: true},
		{from: smName(512) + ":" + strings.Repeat("k", 257), wantErr: true},
		{from: "arn:aws:secretsmanager:us-east-1:12345:secret:x", wantErr: true},
		{from: "arn:aws:s3:::bucket/key", wantErr: true},
		{from: "/aws/reference/secretsmanager/x", wantErr: true}, // SSM's own door to Secrets Manager: not with the task's parsing
		{from: "../etc/shadow", wantErr: true},
		{from: "a//b", wantErr: true},
		{from: "a b", wantErr: true},
		{from: strings.Repeat("a", MaxSecretFromLen+1), wantErr: true},
	}
	for _, tt := range tests {
		got, err := ParseSecretSource(tt.from)
		if (err != nil) != tt.wantErr {
			t.Errorf("ParseSecretSource(%q) error %v, want error %v", tt.from, err, tt.wantErr)
			continue
		}
		if diff := cmp.Diff(tt.want, got); diff != "" && !tt.wantErr {
			t.Errorf("ParseSecretSource(%q) (-want +got):\n%s", tt.from, diff)
		}
	}
}

// smName is a Secrets Manager ARN whose secret name is n characters long.
func smName(n int) string {
	return "arn:aws:secretsmanager:us-east-1:123456789012:secret:" + strings.Repeat("n", n)
}

func TestValidateSecrets(t *testing.T) {
	file := func(name, path string) SecretRef { return SecretRef{Name: name, From: testSM, Path: path} }
	env := func(name string) SecretRef { return SecretRef{Name: name, From: "/p/x", As: SecretAsEnv} }
	many := make([]SecretRef, MaxSecrets+1)
	for i := range many {
		many[i] = file(fmt.Sprintf("s%d", i), "")
	}
	tests := []struct {
		name    string
		secrets []SecretRef
		noRole  bool
		env     map[string]string
		fields  []string
	}{
		{name: "file and env", secrets: []SecretRef{file("db", ""), file("tls", "certs/tls.key"), env("DB_PASSWORD")}},
		{name: "needs a role", secrets: []SecretRef{file("db", "")}, noRole: true, fields: []string{"secrets"}},
		{name: "too many", secrets: many, fields: []string{"secrets"}},
		{name: "no name", secrets: []SecretRef{file("", "x")}, fields: []string{"secrets[0].name"}},
		{name: "no from", secrets: []SecretRef{{Name: "x"}}, fields: []string{"secrets[0].from"}},
		{name: "bad from", secrets: []SecretRef{{Name: "x", From: "s3://bucket/key"}}, fields: []string{"secrets[0].from"}},
		{name: "bad as", secrets: []SecretRef{{Name: "x", From: testSM, As: "stdin"}}, fields: []string{"secrets[0].as"}},
		{name: "same name", secrets: []SecretRef{file("x", "a"), file("x", "b")}, fields: []string{"secrets[1].name"}},
		{name: "same path", secrets: []SecretRef{file("x", "a"), file("y", "a")}, fields: []string{"secrets[1].path"}},
		{name: "file is a dir of another", secrets: []SecretRef{file("x", "a"), file("y", "a/b")}, fields: []string{"secrets"}},
		{name: "dotdot", secrets: []SecretRef{file("x", "../../etc/passwd")}, fields: []string{"secrets[0].path"}},
		{name: "dotdot inside", secrets: []SecretRef{file("x", "a/../../b")}, fields: []string{"secrets[0].path"}},
		{name: "absolute", secrets: []SecretRef{file("x", "/etc/passwd")}, fields: []string{"secrets[0].path"}},
		{name: "absolute below the mount", secrets: []SecretRef{file("x", "/run/secrets/x")}, fields: []string{"secrets[0].path"}},
		{name: "dot", secrets: []SecretRef{file("x", ".")}, fields: []string{"secrets[0].path"}},
		{name: "trailing slash", secrets: []SecretRef{file("x", "a/")}, fields: []string{"secrets[0].path"}},
		{name: "hidden", secrets: []SecretRef{file("x", ".ssh")}, fields: []string{"secrets[0].path"}},
		{name: "NUL", secrets: []SecretRef{file("x", "a\x00b")}, fields: []string{"secrets[0].path"}},
		{name: "too deep", secrets: []SecretRef{file("x", strings.Repeat("a/", MaxSecretPathDepth)+"b")}, fields: []string{"secrets[0].path"}},
		{name: "too long", secrets: []SecretRef{file("x", strings.Repeat("a", MaxSecretPathLen+1))}, fields: []string{"secrets[0].path"}},
		{name: "file name as path", secrets: []SecretRef{file("../x", "")}, fields: []string{"secrets[0].name", "secrets[0].path"}},
		{name: "env name", secrets: []SecretRef{env("1BAD")}, fields: []string{"secrets[0].name"}},
		{name: "env reserved", secrets: []SecretRef{env("TITUS_TASK_ID")}, fields: []string{"secrets[0].name"}},
		{name: "env shadows env", secrets: []SecretRef{env("DB")}, env: map[string]string{"DB": "x"}, fields: []string{"secrets[0].name"}},
		{name: "env with path", secrets: []SecretRef{{Name: "DB", From: testSM, As: SecretAsEnv, Path: "x"}}, fields: []string{"secrets[0].path"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := validSpec()
			s.IAMRoleARN = testRole
			if tt.noRole {
				s.IAMRoleARN = ""
			}
			s.Env = tt.env
			s.Secrets = tt.secrets
			err := s.Validate()
			var got []string
			var ve *ValidationError
			if errors.As(err, &ve) {
				for _, f := range ve.Fields {
					got = append(got, f.Field)
				}
			} else if err != nil {
				t.Fatalf("Validate: %v", err)
			}
			if diff := cmp.Diff(tt.fields, got); diff != "" {
				t.Errorf("fields (-want +got):\n%s\nerr: %v", diff, err)
			}
		})
	}
}

// The spec's secrets survive the wire.
func TestSecretsProtoRoundTrip(t *testing.T) {
	s := validSpec()
	s.Secrets = []SecretRef{{Name: "db", From: testSM + ":password", Path: "db/pw"}, {Name: "TOKEN", From: "/p/token", As: SecretAsEnv}}
	got := FromProto(ToProto(&s))
	if diff := cmp.Diff(s.Secrets, got.Secrets); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}
