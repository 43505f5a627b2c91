package taskrunner

import (
	"context"
	"errors"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/titus-agent/titus-agent/pkg/secrets"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// roleCredentials gives a task's own role credentials (the metadata
// service's session of the task: STS AssumeRole with its session tags).
type roleCredentials interface {
	RoleCredentials(ctx context.Context, spec *task.Spec) (aws.Credentials, error)
	ReleaseCredentials(taskID string)
}

// secretFiles keeps a task's file secrets (secrets.Files).
type secretFiles interface {
	Write(taskID string, values []secrets.Value) (dir string, err error)
	Remove(taskID string) error
}

// SecretsHook fetches the task's secrets with the task's own role and
// hands them over: files in a tmpfs of the task's, bound read-only at
// task.SecretsMountPath (given to the task's user at create), env values
// in memory to the container hook. A secret that cannot be had fails the
// launch (SecretUnavailable) and leaves nothing. Its stop step unmounts
// the tmpfs and ends a role session no metadata listener serves.
type SecretsHook struct {
	Creds roleCredentials
	API   secrets.API
	Files secretFiles
}

func (h *SecretsHook) Name() string { return "secrets" }

func (h *SecretsHook) Prestart(ctx context.Context, req *PrestartRequest, resp *PrestartResponse) error {
	spec := req.Spec
	if len(spec.Secrets) == 0 {
		return nil
	}
	unavailable := func(err error) error {
		return &HookError{Hook: h.Name(), Reason: task.ReasonSecretUnavailable, Err: err}
	}
	creds, err := h.Creds.RoleCredentials(ctx, spec)
	if err != nil {
		return unavailable(&secrets.UnavailableError{Code: secrets.CodeNoCredentials, From: spec.IAMRoleARN, Err: err})
	}
	values, err := secrets.Fetch(ctx, h.API, creds, spec.Secrets)
	if err != nil {
		var ue *secrets.UnavailableError
		if errors.As(err, &ue) {
			return unavailable(err)
		}
		return unavailable(fmt.Errorf("fetch: %w", err))
	}
	env := map[string]string{}
	files := false
	for _, v := range values {
		switch v.Ref.SecretAsOrDefault() {
		case task.SecretAsEnv:
			env[v.Ref.Name] = string(v.Data)
		case task.SecretAsFile:
			files = true
		}
	}
	if files {
		dir, err := h.Files.Write(spec.ID, values)
		if err != nil {
			return &HookError{Hook: h.Name(), Reason: task.ReasonStartFailed, Err: err}
		}
		resp.SecretsDir = dir
		resp.Mounts = append(resp.Mounts, Mount{Destination: task.SecretsMountPath, Type: "bind", Source: dir,
			Options: []string{"rbind", "ro", "nosuid", "nodev", "noexec"}})
	}
	if len(env) > 0 {
		resp.SecretEnv = env
	}
	return nil
}

// Stop unmounts the task's secrets (the values go with the tmpfs) and
// ends its role session unless its metadata listener serves it.
// Idempotent; it does not need the spec's secrets (an agent restart
// finds only the record).
func (h *SecretsHook) Stop(_ context.Context, req *StopRequest) error {
	h.Creds.ReleaseCredentials(req.Spec.ID)
	if len(req.Spec.Secrets) == 0 && req.Resources.SecretsDir == "" {
		return nil
	}
	return h.Files.Remove(req.Spec.ID)
}
