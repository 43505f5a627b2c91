package taskrunner

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/smithy-go"
	"github.com/google/go-cmp/cmp"

	"github.com/titus-agent/titus-agent/pkg/runtime"
	"github.com/titus-agent/titus-agent/pkg/secrets"
	"github.com/titus-agent/titus-agent/pkg/task"
)

const (
	secretARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf"
	deniedARN = "arn:aws:secretsmanager:us-east-1:111111111111:secret:tenant-a-Zz"
)

type fakeRoleCreds struct {
	rec  *recorder
	fail error
}

func (f *fakeRoleCreds) RoleCredentials(_ context.Context, spec *task.Spec) (aws.Credentials, error) {
	f.rec.add("creds " + spec.ID + " " + spec.IAMRoleARN)
	if f.fail != nil {
		return aws.Credentials{}, f.fail
	}
	return aws.Credentials{AccessKeyID: "ASIA-" + spec.ID}, nil
}

func (f *fakeRoleCreds) ReleaseCredentials(id string) { f.rec.add("release " + id) }

// fakeSecretsAPI records each call with the key it was signed with.
type fakeSecretsAPI struct{ rec *recorder }

func (f *fakeSecretsAPI) GetSecretValue(_ context.Context, c aws.Credentials, arn string) ([]byte, error) {
	f.rec.add("GetSecretValue " + arn + " " + c.AccessKeyID)
	if arn == deniedARN {
		return nil, &smithy.GenericAPIError{Code: "AccessDeniedException"}
	}
	return []byte(`{"password":"s3cr3t"}`), nil
}

func (f *fakeSecretsAPI) GetParameter(_ context.Context, c aws.Credentials, name string) ([]byte, error) {
	f.rec.add("GetParameter " + name + " " + c.AccessKeyID)
	return []byte("tok-" + name), nil
}

type fakeSecretFiles struct {
	rec  *recorder
	fail bool
}

func (f *fakeSecretFiles) Write(id string, vals []secrets.Value) (string, error) {
	var names []string
	for _, v := range vals {
		if v.Ref.SecretAsOrDefault() == task.SecretAsFile {
			names = append(names, v.Ref.SecretPath()+"="+string(v.Data))
		}
	}
	f.rec.add("write " + id + " " + strings.Join(names, ","))
	if f.fail {
		return "", errors.New("tmpfs: no space")
	}
	return "/run/titus-agent/secrets/" + id, nil
}

func (f *fakeSecretFiles) Remove(id string) error { f.rec.add("remove " + id); return nil }

func TestSecretsHook(t *testing.T) {
	spec := func(refs ...task.SecretRef) *task.Spec {
		return &task.Spec{ID: "t1", IAMRoleARN: "arn:aws:iam::123456789012:role/b", Secrets: refs}
	}
	mount := []Mount{{Destination: "/run/secrets", Type: "bind", Source: "/run/titus-agent/secrets/t1", Options: []string{"rbind", "ro", "nosuid", "nodev", "noexec"}}}
	tests := []struct {
		name       string
		spec       *task.Spec
		credsFail  error
		filesFail  bool
		wantOps    []string
		wantResp   PrestartResponse
		wantReason task.Reason
		wantMsg    string
	}{
		{name: "no secrets", spec: spec(), wantOps: nil},
		{name: "file and env", spec: spec(
			task.SecretRef{Name: "db", From: secretARN + ":password"},
			task.SecretRef{Name: "TOKEN", From: "/app/token", As: task.SecretAsEnv}),
			wantOps:  []string{"creds t1 arn:aws:iam::123456789012:role/b", "GetParameter /app/token ASIA-t1", "GetSecretValue " + secretARN + " ASIA-t1", "write t1 db=s3cr3t"},
			wantResp: PrestartResponse{Mounts: mount, SecretsDir: "/run/titus-agent/secrets/t1", SecretEnv: map[string]string{"TOKEN": "tok-/app/token"}}},
		{name: "env only: no tmpfs", spec: spec(task.SecretRef{Name: "TOKEN", From: "/app/token", As: task.SecretAsEnv}),
			wantOps:  []string{"creds t1 arn:aws:iam::123456789012:role/b", "GetParameter /app/token ASIA-t1"},
			wantResp: PrestartResponse{SecretEnv: map[string]string{"TOKEN": "tok-/app/token"}}},
		{name: "denied: nothing written", spec: spec(task.SecretRef{Name: "db", From: secretARN}, task.SecretRef{Name: "a", From: deniedARN}),
			wantOps:    []string{"creds t1 arn:aws:iam::123456789012:role/b", "GetSecretValue " + deniedARN + " ASIA-t1", "GetSecretValue " + secretARN + " ASIA-t1"},
			wantReason: task.ReasonSecretUnavailable, wantMsg: "secrets: AccessDenied for " + deniedARN},
		{name: "no role credentials", spec: spec(task.SecretRef{Name: "db", From: secretARN}), credsFail: errors.New("sts: AccessDenied"),
			wantOps:    []string{"creds t1 arn:aws:iam::123456789012:role/b"},
			wantReason: task.ReasonSecretUnavailable, wantMsg: "secrets: NoCredentials for arn:aws:iam::123456789012:role/b"},
		{name: "tmpfs fails", spec: spec(task.SecretRef{Name: "db", From: secretARN}), filesFail: true,
			wantOps:    []string{"creds t1 arn:aws:iam::123456789012:role/b", "GetSecretValue " + secretARN + " ASIA-t1", "write t1 db={\"password\":\"s3cr3t\"}"},
			wantReason: task.ReasonStartFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{}
			h := &SecretsHook{Creds: &fakeRoleCreds{rec: rec, fail: tt.credsFail}, API: &fakeSecretsAPI{rec: rec}, Files: &fakeSecretFiles{rec: rec, fail: tt.filesFail}}
			var resp PrestartResponse
			err := h.Prestart(context.Background(), &PrestartRequest{Spec: tt.spec, Resources: &Resources{}}, &resp)
			var he *HookError
			switch {
			case tt.wantReason == "" && err != nil:
				t.Fatalf("Prestart: %v", err)
			case tt.wantReason != "" && (!errors.As(err, &he) || he.Reason != tt.wantReason):
				t.Fatalf("err = %v, want reason %s", err, tt.wantReason)
			case tt.wantMsg != "" && err.Error() != tt.wantMsg:
				t.Errorf("message %q, want %q", err.Error(), tt.wantMsg)
			}
			got := rec.get()
			// Fetches run in parallel: compare them in order.
			if len(got) > 2 {
				slices.Sort(got[1 : len(got)-countWrites(got)])
			}
			if diff := cmp.Diff(tt.wantOps, got); diff != "" {
				t.Errorf("ops (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantResp, resp); diff != "" {
				t.Errorf("response (-want +got):\n%s", diff)
			}
			if err != nil && (resp.SecretsDir != "" || len(resp.SecretEnv) > 0) {
				t.Error("a failed hook handed something over")
			}
			// Stop, twice: the tmpfs and the role session go.
			rec.mu.Lock()
			rec.ops = nil
			rec.mu.Unlock()
			for range 2 {
				if err := h.Stop(context.Background(), &StopRequest{Spec: tt.spec, Resources: &Resources{}}); err != nil {
					t.Fatal(err)
				}
			}
			want := []string{"release t1", "release t1"}
			if len(tt.spec.Secrets) > 0 {
				want = []string{"release t1", "remove t1", "release t1", "remove t1"}
			}
			if diff := cmp.Diff(want, rec.get()); diff != "" {
				t.Errorf("stop ops (-want +got):\n%s", diff)
			}
		})
	}
}

// A secret's value is never in the persisted record; it reaches the
// container's env and is dropped after the launch.
func TestSecretEnvIsNeverPersisted(t *testing.T) {
	res := Resources{}
	res.merge(&PrestartResponse{SecretEnv: map[string]string{"TOKEN": "hunter2"}, SecretsDir: "/run/s/t1"})
	b, err := json.Marshal(&Record{Resources: res})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "hunter2") || strings.Contains(string(b), "TOKEN") {
		t.Errorf("record holds the secret: %s", b)
	}
	cs := ContainerSpec(&task.Spec{ID: "t1"}, &res, nil)
	if !slices.Contains(cs.Env, "TOKEN=hunter2") {
		t.Errorf("env %v lacks the secret", cs.Env)
	}
	if n := len(cs.SpecOpts); n != 1 {
		t.Errorf("spec opts = %d, want the owner option", n)
	}
}

func countWrites(ops []string) int {
	n := 0
	for _, o := range ops {
		if strings.HasPrefix(o, "write ") {
			n++
		}
	}
	return n
}

// secretEnvHook hands over an env secret, as the secrets hook does.
type secretEnvHook struct{}

func (secretEnvHook) Name() string { return "secrets" }
func (secretEnvHook) Prestart(_ context.Context, _ *PrestartRequest, resp *PrestartResponse) error {
	resp.SecretEnv = map[string]string{"TOKEN": "hunter2"}
	resp.SecretsDir = "/run/s/t1"
	return nil
}

// envSeer is a container hook that records the env the container gets.
type envSeer struct{ env []string }

func (h *envSeer) Name() string { return "container" }
func (h *envSeer) Prestart(_ context.Context, req *PrestartRequest, resp *PrestartResponse) error {
	h.env = ContainerSpec(req.Spec, req.Resources, nil).Env
	resp.Pid, resp.Container = 42, true
	return nil
}

// jsonStore keeps every record as it was saved.
type jsonStore struct{ saved []string }

func (s *jsonStore) Save(rec *Record) error {
	b, err := json.Marshal(rec)
	s.saved = append(s.saved, string(b))
	return err
}

// Through a whole launch: the container gets the value, no saved record
// holds it, and the runner forgets it once the container exists.
func TestRunnerNeverSavesSecretEnv(t *testing.T) {
	seer := &envSeer{}
	st := &jsonStore{}
	w := &fakeWaiter{rec: &recorder{}, exit: make(chan runtime.ExitStatus, 1)}
	spec := task.Spec{ID: "t1"}
	spec.Normalize()
	r := New(Config{Stages: [][]PrestartHook{{secretEnvHook{}}, {seer}}, Runtime: w, Store: st, Logger: quiet}, &Record{Spec: spec})
	go r.Run(context.Background())
	deadline := time.Now().Add(5 * time.Second)
	for r.View().Status.State != task.Running && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if !slices.Contains(seer.env, "TOKEN=hunter2") {
		t.Errorf("container env %v lacks the secret", seer.env)
	}
	r.mu.Lock()
	held := r.rec.Resources.SecretEnv
	r.mu.Unlock()
	if held != nil {
		t.Errorf("the runner still holds %v after the launch", held)
	}
	w.exit <- runtime.ExitStatus{Code: 0}
	waitDone(t, r)
	if len(st.saved) < 3 {
		t.Fatalf("only %d saves", len(st.saved))
	}
	for i, s := range st.saved {
		if strings.Contains(s, "hunter2") {
			t.Errorf("save %d holds the value: %s", i, s)
		}
	}
}
