package task

import (
	"math"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
)

// FromProto converts a wire spec to a Spec. It does not validate; call
// Normalize and Validate.
func FromProto(p *agentv1.TaskSpec) *Spec {
	if p == nil {
		return &Spec{}
	}
	s := &Spec{
		ID:                p.GetId(),
		OwnerEmail:        p.GetOwnerEmail(),
		Image:             p.GetImage(),
		Entrypoint:        p.GetEntrypoint(),
		Command:           p.GetCommand(),
		Env:               p.GetEnv(),
		KillGracePeriod:   seconds(p.GetKillGracePeriodSeconds()),
		MaxRuntime:        seconds(p.GetMaxRuntimeSeconds()),
		Labels:            p.GetLabels(),
		IAMRoleARN:        p.GetIamRoleArn(),
		MetadataRequireV2: p.GetMetadataRequireV2(),
	}
	if r := p.GetResources(); r != nil {
		s.Resources = Resources{
			CPUMillicores:      r.GetCpuMillicores(),
			MemoryMiB:          r.GetMemoryMib(),
			DiskMiB:            r.GetDiskMib(),
			NetworkMbps:        r.GetNetworkMbps(),
			GPUs:               r.GetGpus(),
			Pids:               r.GetPids(),
			CPUBurst:           r.GetCpuBurst(),
			CPUBurstMillicores: r.GetCpuBurstMillicores(),
		}
	}
	if n := p.GetNetwork(); n != nil {
		s.Network = NetworkRequest{SecurityGroupIDs: n.GetSecurityGroupIds(), SubnetIDs: n.GetSubnetIds(), IPv6: n.GetIpv6()}
	}
	s.HealthCheck = HealthCheckFromProto(p.GetHealthCheck())
	for _, r := range p.GetSecrets() {
		s.Secrets = append(s.Secrets, SecretRef{Name: r.GetName(), From: r.GetFrom(), As: SecretAs(r.GetAs()), Path: r.GetPath()})
	}
	return s
}

// HealthCheckFromProto converts a wire health check (nil for nil).
func HealthCheckFromProto(h *agentv1.HealthCheckSpec) *HealthCheck {
	if h == nil {
		return nil
	}
	dur := func(d *durationpb.Duration) time.Duration {
		if d == nil {
			return 0
		}
		return d.AsDuration() // saturates
	}
	return &HealthCheck{
		Kind: HealthKind(h.GetKind()), Command: h.GetCommand(), Path: h.GetPath(), Port: h.GetPort(),
		ExpectedStatus: h.GetExpectedStatus(), Interval: dur(h.GetInterval()), Timeout: dur(h.GetTimeout()),
		HealthyThreshold: h.GetHealthyThreshold(), UnhealthyThreshold: h.GetUnhealthyThreshold(), StartPeriod: dur(h.GetStartPeriod()),
	}
}

// HealthCheckToProto converts a health check (nil for nil).
func HealthCheckToProto(h *HealthCheck) *agentv1.HealthCheckSpec {
	if h == nil {
		return nil
	}
	out := &agentv1.HealthCheckSpec{
		Kind: string(h.Kind), Command: h.Command, Path: h.Path, Port: h.Port, ExpectedStatus: h.ExpectedStatus,
		Interval: durationpb.New(h.Interval), Timeout: durationpb.New(h.Timeout),
		HealthyThreshold: h.HealthyThreshold, UnhealthyThreshold: h.UnhealthyThreshold,
	}
	if h.StartPeriod != 0 {
		out.StartPeriod = durationpb.New(h.StartPeriod)
	}
	return out
}

// HealthToProto converts a task's health (nil for nil).
func HealthToProto(h *Health) *agentv1.TaskHealth {
	if h == nil {
		return nil
	}
	out := &agentv1.TaskHealth{Status: agentv1.HealthStatus(h.Status), Since: timestamppb.New(h.Since), Ok: h.OK, Output: h.Output}
	if !h.Checked.IsZero() {
		out.Checked = timestamppb.New(h.Checked)
	}
	return out
}

// HealthFromProto converts a wire health (nil for nil).
func HealthFromProto(p *agentv1.TaskHealth) *Health {
	if p == nil {
		return nil
	}
	h := &Health{Status: HealthStatus(p.GetStatus()), Since: p.GetSince().AsTime(), OK: p.GetOk(), Output: p.GetOutput()}
	if p.GetChecked() != nil {
		h.Checked = p.GetChecked().AsTime()
	}
	return h
}

// seconds converts wire seconds to a Duration, saturating where a
// Duration would overflow: a value past what a Duration holds stays past
// every limit (and a negative one negative), so Validate reports the
// field as it was sent.
func seconds(s int64) time.Duration {
	const most = math.MaxInt64 / int64(time.Second)
	switch {
	case s > most:
		return math.MaxInt64
	case s < -most:
		return math.MinInt64
	}
	return time.Duration(s) * time.Second
}

// ToProto converts a Spec to its wire form.
func ToProto(s *Spec) *agentv1.TaskSpec {
	var secrets []*agentv1.SecretRef
	for _, r := range s.Secrets {
		secrets = append(secrets, &agentv1.SecretRef{Name: r.Name, From: r.From, As: string(r.As), Path: r.Path})
	}
	return &agentv1.TaskSpec{
		Secrets:                secrets,
		Id:                     s.ID,
		OwnerEmail:             s.OwnerEmail,
		Image:                  s.Image,
		Entrypoint:             s.Entrypoint,
		Command:                s.Command,
		Env:                    s.Env,
		KillGracePeriodSeconds: int64(s.KillGracePeriod / time.Second),
		MaxRuntimeSeconds:      int64(s.MaxRuntime / time.Second),
		Labels:                 s.Labels,
		IamRoleArn:             s.IAMRoleARN,
		MetadataRequireV2:      s.MetadataRequireV2,
		HealthCheck:            HealthCheckToProto(s.HealthCheck),
		Resources: &agentv1.Resources{
			CpuMillicores:      s.Resources.CPUMillicores,
			MemoryMib:          s.Resources.MemoryMiB,
			DiskMib:            s.Resources.DiskMiB,
			NetworkMbps:        s.Resources.NetworkMbps,
			Gpus:               s.Resources.GPUs,
			Pids:               s.Resources.Pids,
			CpuBurst:           s.Resources.CPUBurst,
			CpuBurstMillicores: s.Resources.CPUBurstMillicores,
		},
		Network: &agentv1.NetworkRequest{
			SecurityGroupIds: s.Network.SecurityGroupIDs,
			SubnetIds:        s.Network.SubnetIDs,
			Ipv6:             s.Network.IPv6,
		},
	}
}

// StateToProto maps a State to the wire enum (same order by construction).
func StateToProto(s State) agentv1.TaskState { return agentv1.TaskState(s) }

// StateFromProto maps the wire enum to a State.
func StateFromProto(s agentv1.TaskState) State { return State(s) }

// TransitionToProto converts one transition.
func TransitionToProto(t Transition) *agentv1.Transition {
	out := &agentv1.Transition{State: StateToProto(t.State), Reason: string(t.Reason), Message: t.Message, Time: timestamppb.New(t.Time)}
	for _, s := range t.Steps {
		out.Steps = append(out.Steps, &agentv1.LaunchStep{Name: s.Name, Start: timestamppb.New(s.Start), Took: durationpb.New(s.Took), Failed: s.Failed})
	}
	return out
}

// TransitionFromProto converts one wire transition back.
func TransitionFromProto(p *agentv1.Transition) Transition {
	t := Transition{State: StateFromProto(p.GetState()), Reason: Reason(p.GetReason()), Message: p.GetMessage(), Time: p.GetTime().AsTime()}
	for _, s := range p.GetSteps() {
		t.Steps = append(t.Steps, Step{Name: s.GetName(), Start: s.GetStart().AsTime(), Took: s.GetTook().AsDuration(), Failed: s.GetFailed()})
	}
	return t
}

// ViewToProto converts a task view to the wire Task.
func ViewToProto(v *View) *agentv1.Task {
	out := &agentv1.Task{
		Spec:     ToProto(&v.Spec),
		State:    StateToProto(v.Status.State),
		Reason:   string(v.Status.Reason),
		Message:  v.Status.Message,
		ExitCode: v.Status.ExitCode,
		Pid:      v.Status.Pid,
		Health:   HealthToProto(v.Status.Health),
	}
	for _, t := range v.Status.Transitions {
		out.Transitions = append(out.Transitions, TransitionToProto(t))
	}
	if n := v.Network; n != nil {
		out.Network = &agentv1.NetworkStatus{Ipv4: n.IPv4, Ipv6: n.IPv6, Mac: n.MAC, EniId: n.ENIID, Netns: n.NetNSPath, SecurityGroupIds: n.SecurityGroupIDs, SubnetId: n.SubnetID}
	}
	return out
}

// ViewFromProto converts a wire Task back to a View (for clients).
func ViewFromProto(p *agentv1.Task) *View {
	v := &View{Spec: *FromProto(p.GetSpec())}
	v.Status = Status{State: StateFromProto(p.GetState()), Reason: Reason(p.GetReason()), Message: p.GetMessage(), ExitCode: p.GetExitCode(), Pid: p.GetPid(),
		Health: HealthFromProto(p.GetHealth())}
	for _, t := range p.GetTransitions() {
		v.Status.Transitions = append(v.Status.Transitions, TransitionFromProto(t))
	}
	if n := p.GetNetwork(); n != nil {
		v.Network = &NetworkAttachment{IPv4: n.GetIpv4(), IPv6: n.GetIpv6(), MAC: n.GetMac(), ENIID: n.GetEniId(), NetNSPath: n.GetNetns(), SecurityGroupIDs: n.GetSecurityGroupIds(), SubnetID: n.GetSubnetId()}
	}
	return v
}
