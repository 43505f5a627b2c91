package agent

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/titus-agent/titus-agent/pkg/agent/taskrunner"
	"github.com/titus-agent/titus-agent/pkg/metadataproxy"
	"github.com/titus-agent/titus-agent/pkg/metrics"
	"github.com/titus-agent/titus-agent/pkg/secrets"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// wireSecrets adds the secrets hook to stage 1, beside the image pull and
// the network (it needs neither): it takes the task's role credentials
// from the metadata service's session of the task, which it so starts
// early and the metadata listener of stage 2 then finds fetched, or, where
// no listener runs (network provider none, metadata disabled), from a
// service of its own that only assumes roles.
func wireSecrets(ctx context.Context, cfg Config, log *slog.Logger, w *wiring, first *[]taskrunner.PrestartHook, m *metrics.Agent) error {
	svc, _ := w.metadata.(*metadataproxy.Service)
	if svc == nil {
		mc := cfg.Metadata
		dur, err := optionalDuration(mc.CredentialDuration)
		if err != nil {
			return fmt.Errorf("metadata.credentialDuration: %w", err)
		}
		svc, err = metadataproxy.New(ctx, metadataproxy.Config{
			KeyPath:     filepath.Join(cfg.StateDir, "metadata-key.pem"),
			STSEndpoint: mc.STSEndpoint, Region: mc.Region,
			AccessKeyID: mc.AccessKeyID, SecretKey: mc.SecretAccessKey,
			CredentialDuration: dur, Logger: log, Metrics: m,
		})
		if err != nil {
			return err
		}
		w.closers = append(w.closers, svc.Close)
	}
	sc := cfg.Secrets
	files := &secrets.Files{Root: sc.Dir, Mounter: secrets.Tmpfs{}}
	*first = append(*first, &taskrunner.SecretsHook{
		Creds: roleCreds{svc},
		API:   secrets.NewAWS(secrets.AWSConfig{Region: firstNonEmpty(sc.Region, cfg.Metadata.Region), Endpoint: sc.Endpoint, APIOptions: m.AWSAPIOptions()}),
		Files: files,
	})
	w.reconcilers = append(w.reconcilers, reconcileFunc(func(ctx context.Context, keep map[string]bool) error {
		reaped, err := files.Reap(keep)
		if len(reaped) > 0 {
			log.Warn("unmounted secrets of unknown tasks", "tasks", reaped)
		}
		return err
	}))
	return nil
}

// roleCreds adapts the metadata service's role sessions to the hook.
type roleCreds struct{ svc *metadataproxy.Service }

func (r roleCreds) RoleCredentials(ctx context.Context, spec *task.Spec) (aws.Credentials, error) {
	c, err := r.svc.RoleCredentials(ctx, spec)
	if err != nil {
		return aws.Credentials{}, err
	}
	return aws.Credentials{AccessKeyID: c.AccessKeyID, SecretAccessKey: c.SecretAccessKey, SessionToken: c.SessionToken,
		CanExpire: true, Expires: c.Expiration, Source: "titus-task-role"}, nil
}

func (r roleCreds) ReleaseCredentials(taskID string) { r.svc.ReleaseCredentials(taskID) }
