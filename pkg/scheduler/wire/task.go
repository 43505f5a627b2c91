package wire

import (
	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// TaskFromProto converts a task record.
func TaskFromProto(p *schedv1.Task) *model.Task {
	return &model.Task{
		ID: p.GetId(), JobID: p.GetJobId(), Index: p.GetIndex(), Attempt: p.GetAttempt(), AgentID: p.GetAgentId(), AZ: p.GetAz(),
		State: task.StateFromProto(p.GetState()), Reason: p.GetReason(), Message: p.GetMessage(), ExitCode: p.GetExitCode(),
		Failures: p.GetFailures(), Placed: timeFromProto(p.GetPlaced()), Started: timeFromProto(p.GetStarted()), Ended: timeFromProto(p.GetEnded()),
		Revision: p.GetRevision(), Health: task.HealthFromProto(p.GetHealth()),
		IP: p.GetIp(), Targets: targetsFromProto(p.GetTargets()),
	}
}

// TaskToProto converts a task.
func TaskToProto(t *model.Task) *schedv1.Task {
	return &schedv1.Task{
		Id: t.ID, JobId: t.JobID, Index: t.Index, Attempt: t.Attempt, AgentId: t.AgentID, Az: t.AZ,
		State: task.StateToProto(t.State), Reason: t.Reason, Message: t.Message, ExitCode: t.ExitCode,
		Failures: t.Failures, Placed: timeToProto(t.Placed), Started: timeToProto(t.Started), Ended: timeToProto(t.Ended),
		Revision: t.Revision, Health: task.HealthToProto(t.Health),
		Ip: t.IP, Targets: targetsToProto(t.Targets),
	}
}

func targetsFromProto(ps []*schedv1.TargetRegistration) []model.TargetRegistration {
	var out []model.TargetRegistration
	for _, p := range ps {
		out = append(out, model.TargetRegistration{ARN: p.GetArn(), Port: p.GetPort(), State: model.TargetState(p.GetState()),
			Error: p.GetError(), Registered: timeFromProto(p.GetRegistered()), Deregistered: timeFromProto(p.GetDeregistered()),
			LBHealth: p.GetLbHealth(), LBHealthReason: p.GetLbHealthReason()})
	}
	return out
}

func targetsToProto(rs []model.TargetRegistration) []*schedv1.TargetRegistration {
	var out []*schedv1.TargetRegistration
	for _, r := range rs {
		out = append(out, &schedv1.TargetRegistration{Arn: r.ARN, Port: r.Port, State: string(r.State),
			Error: r.Error, Registered: timeToProto(r.Registered), Deregistered: timeToProto(r.Deregistered),
			LbHealth: r.LBHealth, LbHealthReason: r.LBHealthReason})
	}
	return out
}

// TaskStatusesFromProto converts what an agent reports.
func TaskStatusesFromProto(ps []*schedv1.TaskStatus) []model.TaskStatus {
	out := make([]model.TaskStatus, len(ps))
	for i, p := range ps {
		out[i] = model.TaskStatus{TaskID: p.GetTaskId(), State: task.StateFromProto(p.GetState()), Reason: p.GetReason(),
			Message: p.GetMessage(), ExitCode: p.GetExitCode(), Health: task.HealthFromProto(p.GetHealth()), IP: p.GetIp()}
	}
	return out
}
