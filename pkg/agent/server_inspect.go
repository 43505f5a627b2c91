package agent

import (
	"context"
	"encoding/json"
	"maps"
	"regexp"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/pkg/runtime"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// LabelSecretEnv lists, comma-separated, the environment variables of a
// task whose values task inspect never shows (besides those whose names
// look secret, secretEnvName).
const LabelSecretEnv = "titus.task/secret-env"

// secretEnvName matches names whose values are redacted whatever the label says.
var secretEnvName = regexp.MustCompile(`(?i)(PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL|PRIVATE|API_?KEY|ACCESS_?KEY|_KEY$)`)

// Redacted replaces a secret value.
const Redacted = "<redacted>"

// redactEnv replaces the values of secret variables in a process env list.
func redactEnv(env []string, labels map[string]string) []string {
	marked := map[string]bool{}
	for _, n := range strings.Split(labels[LabelSecretEnv], ",") {
		if n = strings.TrimSpace(n); n != "" {
			marked[n] = true
		}
	}
	out := make([]string, len(env))
	for i, kv := range env {
		k, _, ok := strings.Cut(kv, "=")
		if ok && (marked[k] || secretEnvName.MatchString(k)) {
			kv = k + "=" + Redacted
		}
		out[i] = kv
	}
	return out
}

// inspector reads what the runtime applied (runtime.Runtime).
type inspector interface {
	Inspect(ctx context.Context, id string) (runtime.Inspection, error)
	Top(ctx context.Context, id string) (string, []runtime.Process, error)
}

// InspectTask shows the task's record and what the runtime applied.
func (s *Server) InspectTask(ctx context.Context, req *agentv1.InspectTaskRequest) (*agentv1.InspectTaskResponse, error) {
	v, err := s.Manager.Get(req.GetId())
	if err != nil {
		return nil, toStatus(err)
	}
	pv := task.ViewToProto(&v)
	labels := withSecretEnv(v.Spec)
	pv.Spec.Env = redactMap(pv.GetSpec().GetEnv(), labels)
	out := &agentv1.InspectTaskResponse{Task: pv}
	in, ok := s.Runtime.(inspector)
	if !ok {
		return out, nil
	}
	got, err := in.Inspect(ctx, req.GetId())
	if err != nil {
		if v.Status.State.Terminal() {
			return out, nil // the container is gone: the record is all there is
		}
		return nil, toStatus(err)
	}
	out.Pid, out.Cgroup, out.Limits = got.Pid, got.Cgroup, got.Limits
	readBack(out, got, v.Spec.Resources.DiskMiB)
	if got.Spec != nil {
		sp := *got.Spec
		if sp.Process != nil {
			p := *sp.Process
			p.Env = redactEnv(p.Env, labels)
			sp.Process = &p
		}
		out.OciSpecJson = specJSON(&sp)
	}
	return out, nil
}

// withSecretEnv is the task's labels with its env secrets (their values
// are in the container's env, never in the spec) marked secret.
func withSecretEnv(spec task.Spec) map[string]string {
	var names []string
	for _, r := range spec.Secrets {
		if r.SecretAsOrDefault() == task.SecretAsEnv {
			names = append(names, r.Name)
		}
	}
	if len(names) == 0 {
		return spec.Labels
	}
	out := maps.Clone(spec.Labels)
	if out == nil {
		out = map[string]string{}
	}
	if l := out[LabelSecretEnv]; l != "" {
		names = append(names, l)
	}
	out[LabelSecretEnv] = strings.Join(names, ",")
	return out
}

// metadataListeners are the addresses the agent's metadata service
// listens on inside every task's netns (pkg/metadataproxy).
var metadataListeners = map[string]bool{"169.254.169.254:80": true, "[fd00:ec2::254]:80": true}

// readBack puts what was read inside the task into the response: its
// interfaces and routes, the metadata listeners found listening, and its
// root filesystem's size and use against the quota it asked for.
func readBack(out *agentv1.InspectTaskResponse, in runtime.Inspection, quotaMiB int64) {
	if n := in.Net; n != nil {
		for _, i := range n.Interfaces {
			st := "down"
			if i.Up {
				st = "up"
			}
			out.Interfaces = append(out.Interfaces, &agentv1.NetInterface{Name: i.Name, Mac: i.MAC, Mtu: uint32(i.MTU), State: st, Addresses: i.Addrs})
		}
		out.Routes = n.Routes
		for _, l := range n.Listening {
			if metadataListeners[l] {
				out.MetadataListeners = append(out.MetadataListeners, l)
			}
		}
	}
	if d := in.Disk; d != nil {
		out.Disk = &agentv1.DiskUsage{SizeBytes: d.SizeBytes, UsedBytes: d.UsedBytes, AvailableBytes: d.AvailableBytes, QuotaMib: quotaMiB}
	}
}

func specJSON(s *specs.Spec) string {
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false) // for people: <redacted>, not \u003credacted\u003e
	enc.SetIndent("", "  ")
	if err := enc.Encode(s); err != nil {
		return ""
	}
	return strings.TrimSuffix(b.String(), "\n")
}

func redactMap(env map[string]string, labels map[string]string) map[string]string {
	if len(env) == 0 {
		return env
	}
	list := make([]string, 0, len(env))
	for k, v := range env {
		list = append(list, k+"="+v)
	}
	out := map[string]string{}
	for _, kv := range redactEnv(list, labels) {
		k, v, _ := strings.Cut(kv, "=")
		out[k] = v
	}
	return out
}

// TopTask lists the processes of the task's cgroup.
func (s *Server) TopTask(ctx context.Context, req *agentv1.TopTaskRequest) (*agentv1.TopTaskResponse, error) {
	v, err := s.Manager.Get(req.GetId())
	if err != nil {
		return nil, toStatus(err)
	}
	if v.Status.State != task.Running {
		return nil, toStatus(ErrTaskNotActive)
	}
	in, ok := s.Runtime.(inspector)
	if !ok {
		return nil, toStatus(ErrTaskNotActive)
	}
	dir, procs, err := in.Top(ctx, req.GetId())
	if err != nil {
		return nil, toStatus(err)
	}
	out := &agentv1.TopTaskResponse{Cgroup: dir}
	for _, p := range procs {
		out.Processes = append(out.Processes, &agentv1.TaskProcess{HostPid: int32(p.HostPID), Pid: int32(p.PID), Ppid: int32(p.PPID), Uid: int32(p.UID),
			CpuSeconds: p.CPUSeconds, RssBytes: p.RSSBytes, Command: p.Command})
	}
	return out, nil
}
