package secrets

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	smithyhttp "github.com/aws/smithy-go/transport/http"
	"github.com/google/go-cmp/cmp"

	"github.com/titus-agent/titus-agent/pkg/task"
)

const (
	arnDB  = "arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf"
	arnKey = "arn:aws:secretsmanager:us-east-1:123456789012:secret:other-tenant-Zz"
)

func TestFetch(t *testing.T) {
	creds := aws.Credentials{AccessKeyID: "ASIATASKROLE"}
	big := strings.Repeat("x", task.MaxSecretBytes+1)
	api := &fakeAPI{
		values: map[string]string{arnDB: `{"user":"app","password":"s3cr3t","port":5432}`, "/app/token": "tok", "/app/big": big,
			"/app/envbig": strings.Repeat("y", task.MaxEnvValueLen+1), "/app/nul": "a\x00b", "/app/plain": "not json"},
		deny: map[string]bool{arnKey: true},
	}
	tests := []struct {
		name     string
		refs     []task.SecretRef
		want     map[string]string
		wantCode string
		wantMsg  string
	}{
		{name: "sm, json key, ssm", refs: []task.SecretRef{
			{Name: "db", From: arnDB},
			{Name: "pw", From: arnDB + ":password"},
			{Name: "PORT", From: arnDB + ":port", As: task.SecretAsEnv},
			{Name: "TOKEN", From: "/app/token", As: task.SecretAsEnv},
		}, want: map[string]string{"db": `{"user":"app","password":"s3cr3t","port":5432}`, "pw": "s3cr3t", "PORT": "5432", "TOKEN": "tok"}},
		{name: "denied", refs: []task.SecretRef{{Name: "db", From: arnDB}, {Name: "k", From: arnKey}},
			wantCode: "AccessDenied", wantMsg: "AccessDenied for " + arnKey},
		{name: "missing secret", refs: []task.SecretRef{{Name: "x", From: arnDB + "x"}}, wantCode: "ResourceNotFound"},
		{name: "missing parameter", refs: []task.SecretRef{{Name: "x", From: "/nope"}}, wantCode: "ParameterNotFound"},
		{name: "missing json key", refs: []task.SecretRef{{Name: "x", From: arnDB + ":nokey"}}, wantCode: CodeNoSuchJSONKey, wantMsg: CodeNoSuchJSONKey + " for " + arnDB + ":nokey"},
		{name: "not json", refs: []task.SecretRef{{Name: "x", From: "/app/plain"}}, want: map[string]string{"x": "not json"}},
		{name: "too large", refs: []task.SecretRef{{Name: "x", From: "/app/big"}}, wantCode: CodeTooLarge},
		{name: "env too large", refs: []task.SecretRef{{Name: "X", From: "/app/envbig", As: task.SecretAsEnv}}, wantCode: CodeTooLarge},
		{name: "env NUL", refs: []task.SecretRef{{Name: "X", From: "/app/nul", As: task.SecretAsEnv}}, wantCode: CodeInvalidValue},
		{name: "file NUL is fine", refs: []task.SecretRef{{Name: "x", From: "/app/nul"}}, want: map[string]string{"x": "a\x00b"}},
		{name: "bad source", refs: []task.SecretRef{{Name: "x", From: "s3://x"}}, wantCode: CodeInvalidSource},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Fetch(context.Background(), api, creds, tt.refs)
			if tt.wantCode != "" {
				var ue *UnavailableError
				if !errors.As(err, &ue) || ue.Code != tt.wantCode {
					t.Fatalf("err = %v, want code %s", err, tt.wantCode)
				}
				if tt.wantMsg != "" && err.Error() != tt.wantMsg {
					t.Errorf("message %q, want %q", err.Error(), tt.wantMsg)
				}
				if got != nil {
					t.Errorf("values returned with an error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			m := map[string]string{}
			for _, v := range got {
				m[v.Ref.Name] = string(v.Data)
			}
			if diff := cmp.Diff(tt.want, m); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
	// Every call was signed with the task's key, never another.
	for _, c := range api.calls {
		if !strings.HasSuffix(c, " ASIATASKROLE") {
			t.Errorf("call %q not signed with the task's credentials", c)
		}
	}
}

// Together more than MaxSecretsTotalBytes fails, though each fits.
func TestFetchTotal(t *testing.T) {
	api := &fakeAPI{values: map[string]string{}}
	var refs []task.SecretRef
	for i := range task.MaxSecretsTotalBytes/task.MaxSecretBytes + 1 {
		name := "/p/" + string(rune('a'+i))
		api.values[name] = strings.Repeat("z", task.MaxSecretBytes)
		refs = append(refs, task.SecretRef{Name: string(rune('a' + i)), From: name})
	}
	_, err := Fetch(context.Background(), api, aws.Credentials{}, refs)
	var ue *UnavailableError
	if !errors.As(err, &ue) || ue.Code != CodeTooLarge || ue.From != "all secrets" {
		t.Fatalf("err = %v, want TooLarge for all secrets", err)
	}
}

// A value never appears in an error's message (the JSON parser's errors
// quote their input).
func TestFetchErrorsHoldNoValue(t *testing.T) {
	api := &fakeAPI{values: map[string]string{arnDB: "hunter2-not-json"}}
	_, err := Fetch(context.Background(), api, aws.Credentials{}, []task.SecretRef{{Name: "x", From: arnDB + ":k"}})
	if err == nil || strings.Contains(err.Error(), "hunter2") || strings.Contains(errors.Unwrap(err).Error(), "hunter2") {
		t.Fatalf("err = %v", err)
	}
}

func TestArnRegion(t *testing.T) {
	for in, want := range map[string]string{arnDB: "us-east-1", "arn:aws:ssm:eu-west-1:123456789012:parameter/x": "eu-west-1", "/x": ""} {
		if got := arnRegion(in); got != want {
			t.Errorf("arnRegion(%q) = %q, want %q", in, got, want)
		}
	}
}

// An answer the SDK found no code in is named by its HTTP status.
func TestErrorCodeFromStatus(t *testing.T) {
	for status, want := range map[int]string{403: "AccessDenied", 404: "ResourceNotFound", 500: "HTTP500"} {
		err := &smithyhttp.ResponseError{Response: &smithyhttp.Response{Response: &http.Response{StatusCode: status}}, Err: errors.New("deserialize")}
		if got := errorCode(fmt.Errorf("op: %w", err)); got != want {
			t.Errorf("status %d: code %q, want %q", status, got, want)
		}
	}
}
